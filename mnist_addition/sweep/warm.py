"""``tune --warm-start OLD``: the trials of earlier sweeps as Optuna's prior observations.

A new sweep's Optuna searcher is told, before it samples anything, what the earlier sweeps'
trials scored (``optuna.trial.create_trial`` + ``Study.add_trial``, what Optuna's own
``add_trial`` offers), so TPE starts from their results instead of from random samples. Only what
a sweep writes as text is read (``sweep.json`` and ``trials.csv``; nothing is unpickled), and a
trial is taken only when the new sweep could have trained the same thing:

* it ended with a usable value of every new ``--metric`` (finished or stopped early, as ranking
  wants it, with the metric's column present: a one-seed sweep has no ``val_both_acc_min``);
* each searched value of the new space is in the trial's row and inside the new distribution;
* its whole config (the old sweep's fixed values with its sampled ones) is the config the new
  sweep would train for those values (the same epochs, width, data...).

The rest are skipped and counted by reason. Ray's own ``evaluated_rewards`` is not used: it
accepts one metric only. The searcher that adds them is ``warm_search.WarmOptunaSearch`` (it
imports Ray; this module does not).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import ConfigError, TrainConfig, smoke_overrides
from ..rundir.names import CSV_FILE, SWEEP_FILE
from .options import SweepError
from .results import FINISHED, STOPPED
from .spaces import Param, Space, SpaceError, parse_space
from .storage import Store, absolute, experiment_uri

IGNORED = ("data_dir", "output_dir")  # where, not what, a trial trains


@dataclass
class Prior:
    """The observations a sweep starts from: each (params, values of the metrics), and what was skipped."""

    points: list[dict[str, Any]] = field(default_factory=list)
    values: list[list[float]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def line(self, sources: tuple[str, ...]) -> str:
        skipped = "; ".join(f"{n} {why}" for why, n in self.skipped.items())
        return (f"warm start: {len(self.points)} trial(s) of {', '.join(sources)} given to Optuna as prior "
                f"observations{f'; skipped {sum(self.skipped.values())}: {skipped}' if skipped else ''}")


def resolve(source: str, storage_path: str) -> str:
    """Where ``--warm-start SOURCE`` is: a URI, a sweep folder, else a sweep's name in ``storage_path``;
    one line if no sweep is there."""
    uri = source if "://" in source else absolute(source) if Path(source).is_dir() else \
        experiment_uri(storage_path, source)
    if not Store(uri).exists(SWEEP_FILE):
        raise SweepError(f"--warm-start {source}: no sweep at {uri} (no {SWEEP_FILE}): give the folder or URI of an "
                         "earlier sweep, or its --name in --storage-path")
    return uri


def load_prior(sources: tuple[str, ...], space: Space, base: dict[str, Any], metrics: tuple[str, ...]) -> Prior:
    """The trials of the sweeps at ``sources`` (``resolve``d) that the new sweep (``space``,
    ``base``) could have trained, with their ``metrics``; one line if there is none."""
    prior = Prior()
    new_base = _comparable(base, {})
    for source in sources:
        old_space, old_base, rows = _read_sweep(Store(source), source)
        for row in rows:
            _take(row, prior, space, old_space, old_base, new_base, metrics)
    if not prior.points:
        raise SweepError(f"--warm-start: not one trial of {', '.join(sources)} is one this sweep could train "
                         f"({'; '.join(f'{n} {why}' for why, n in prior.skipped.items()) or 'no trials'}): drop "
                         "--warm-start, or give a sweep over the same fixed config and metrics")
    return prior


def _read_sweep(store: Store, source: str) -> tuple[Space, dict[str, Any], list[dict[str, str]]]:
    """An earlier sweep's space, base config and trials.csv rows; one line if they cannot be read."""
    try:
        saved = json.loads(store.read_small(SWEEP_FILE))
        old_space = parse_space(saved["space"], str(saved["options"]["space"]))
        old_base = old_space.base(smoke_overrides(sweep=True) if saved["options"].get("smoke") else None)
        rows = list(csv.DictReader(io.StringIO(store.read_small(CSV_FILE).decode())))
    except (OSError, ValueError, KeyError, TypeError, SpaceError, UnicodeDecodeError) as e:
        raise SweepError(f"--warm-start {source}: not a sweep whose results can be read ({type(e).__name__}: "
                         f"{str(e)[:120]}): give the folder (or URI) of a sweep that wrote {CSV_FILE}") from None
    return old_space, old_base, rows


def _take(row: dict[str, str], prior: Prior, space: Space, old_space: Space, old_base: dict[str, Any],
          new_base: dict[str, Any], metrics: tuple[str, ...]) -> None:
    """Add ``row`` to ``prior``, or count why it is skipped."""
    if row.get("status") not in (FINISHED, STOPPED):
        return prior.skip("did not finish")
    values = [_finite(row.get(metric)) for metric in metrics]
    if any(v is None for v in values):
        return prior.skip(f"without {' and '.join(metrics)}")
    params = {key: value_in(param, row.get(key)) for key, param in space.search.items()}
    if any(v is None for v in params.values()):
        return prior.skip("outside the space")
    old_params = {key: _number(row.get(key)) for key in old_space.search}
    try:
        same = _comparable(old_base, {**old_params, **params}) == _comparable(new_base, params)
    except ConfigError:
        same = False
    if not same:
        return prior.skip("trained another fixed config")
    prior.points.append(params)
    prior.values.append(values)


def _comparable(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    config = TrainConfig.from_dict({**base, **params}, source="a warm-start trial").to_dict()
    return {k: v for k, v in config.items() if k not in IGNORED}


def value_in(param: Param, text: str | None) -> Any:
    """The value a trials.csv cell holds for ``param``, or None if it is not one the param can take."""
    if text is None or text == "":
        return None
    if param.kind == "choice":
        return next((c for c in param.values if str(c) == text), None)
    number = _finite(text)
    if number is None or not param.values[0] <= number <= param.values[1]:
        return None
    if param.kind == "randint":
        return int(number) if number.is_integer() else None
    return number


def _finite(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _number(text: str | None) -> Any:
    """An old searched value as TrainConfig reads it (an int stays an int)."""
    if text is None:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
