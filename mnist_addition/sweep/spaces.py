"""Search spaces for sweeps: small YAML files keyed by TrainConfig field names.

No Ray here: a space is read and checked before Ray starts, so a typo costs a second, not a
cluster start-up. ``driver.py`` turns a checked ``Space`` into Ray Tune's sampling objects. The
fields the sweep sets itself (declared ``sweep=`` on TrainConfig: the data and run folders) are
refused in a space.

    fixed:                 # the same for every trial (any TrainConfig field)
      epochs: 6
    search:                # one distribution per field
      lr: {loguniform: [0.002, 0.02]}
      width: {choice: [8, 16, 24]}
      sum_weight: {uniform: [0.2, 0.8]}
      epochs: {randint: [2, 6]}        # inclusive bounds

Every bound and every choice is checked by building a TrainConfig with it, alone and in every
combination with the other keys' bounds and choices (``preset: seed`` with a searched ``width``,
accumulation steps against batch sizes), so a space can never sample a config ``mnist-addition
train`` would refuse; the error names the file and the values.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..core.config import (
    MAX_SEEDS,
    ConfigError,
    TrainConfig,
    did_you_mean,
    field_kinds,
    field_names,
    read_small_file,
    sweep_owned,
)
from ..core.errors import shown

KINDS = ("uniform", "loguniform", "randint", "choice")
# Above this many combinations of extremes, every pair of keys is checked instead: each cross-field
# check of TrainConfig involves two fields.
MAX_COMBINATIONS = 4096
# Bounds on what a space may ask to be checked (each check builds a TrainConfig, ~50 us): a space
# is a page of YAML, and one that would take minutes to check is refused in a second.
MAX_CHOICES = 100
MAX_CHECKS = 20_000
MAX_SPACE_BYTES = 64 * 1024
SECTIONS = ("fixed", "search", "seeds")  # seeds: K, the seeds each trial trains (tune --seeds)


class SpaceError(ConfigError):
    """A search-space file is unreadable or asks for something TrainConfig refuses."""


@dataclass(frozen=True)
class Param:
    kind: str  # one of KINDS
    values: tuple  # (low, high) for ranges, the options for choice



@dataclass(frozen=True)
class Space:
    path: str
    fixed: dict[str, Any]
    search: dict[str, Param]
    seeds: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The YAML document again (``parse_space`` reads it back): what a sweep saves for --resume."""
        return {"fixed": self.fixed, "search": {k: {p.kind: list(p.values)} for k, p in self.search.items()},
                **({"seeds": self.seeds} if self.seeds is not None else {})}

    def base(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The fixed values, then ``overrides`` (e.g. ``--smoke``); keys being searched keep their space."""
        return {**self.fixed, **{k: v for k, v in (overrides or {}).items() if k not in self.search}}

    def largest(self, key: str, default: Any) -> Any:
        """The largest value ``key`` can take in a trial (``default``, the base config's, if not searched)."""
        return max(self.search[key].values) if key in self.search else default

    def checks(self) -> int:
        """How many configs ``extremes`` yields."""
        sizes = [len(p.values) for p in self.search.values()]
        if math.prod(sizes) <= MAX_COMBINATIONS:
            return math.prod(sizes)
        return sum(a * b for a, b in itertools.combinations(sizes, 2))

    def extremes(self) -> Iterator[dict[str, Any]]:
        """Every combination of the searched keys' bounds and choices: TrainConfig's checks are ranges,
        choices and pairs of fields, so if these all make valid configs, every sample does."""
        keys = list(self.search)
        values = [self.search[k].values for k in keys]
        if math.prod(len(v) for v in values) <= MAX_COMBINATIONS:
            for combination in itertools.product(*values):
                yield dict(zip(keys, combination))
            return
        for (i, a), (j, b) in itertools.combinations(enumerate(keys), 2):
            for x, y in itertools.product(values[i], values[j]):
                yield {a: x, b: y}

    def extreme_configs(self, base: dict[str, Any]) -> Iterator[tuple[dict[str, Any], TrainConfig]]:
        """``(values, TrainConfig(base + values))`` for every combination of extremes."""
        for values in self.extremes():
            yield values, _check_config({**base, **values}, f"search space {self.path}", _describe(values))


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-5`` (no dot) as a string: accept what a person would call a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_space(data: Any, path: str) -> Space:
    """Check a loaded YAML document and return a Space; raises SpaceError naming the key."""
    where = f"search space {path}"
    if not isinstance(data, dict):
        raise SpaceError(f"{where} must be a mapping with 'search:' (and optionally 'fixed:') sections")
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise SpaceError(f"{where}: unknown section {unknown[0]!r}: use only {', '.join(SECTIONS)}")
    seeds = data.get("seeds")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS):
        raise SpaceError(f"{where}: 'seeds:' must be a whole number in 1..{MAX_SEEDS} (got {shown(seeds)})")
    fixed = data.get("fixed") or {}
    search_raw = data.get("search") or {}
    for name, section in (("fixed", fixed), ("search", search_raw)):
        if not isinstance(section, dict):
            raise SpaceError(f"{where}: '{name}:' must be a mapping of TrainConfig fields")
    if not search_raw:
        raise SpaceError(f"{where} searches nothing: add at least one key under 'search:' (e.g. lr)")
    known, owned = set(field_names()), sweep_owned()
    for key in [*fixed, *search_raw]:
        if key in owned:
            raise SpaceError(f"{where}: {key!r} is set by the sweep, not the space: remove it and use "
                             f"{owned[key]}")
        if key not in known:
            raise SpaceError(f"{where}: unknown key {key!r}{did_you_mean(key)}: keys are TrainConfig fields "
                             "(see mnist-addition train --help)")
    both = sorted(set(fixed) & set(search_raw))
    if both:
        raise SpaceError(f"{where}: {both[0]!r} is both fixed and searched: keep it in one section")
    fixed = {k: _number(v) for k, v in fixed.items()}
    _check_config(fixed, where, "the fixed values")

    search: dict[str, Param] = {}
    for key, spec in search_raw.items():
        search[key] = param = _parse_param(key, spec, where)
        for value in param.values:  # each key alone first: the error names one value
            _check_config({**fixed, key: value}, where, f"{key}={value!r}")
    space = Space(path=path, fixed=fixed, search=search, seeds=seeds)
    if space.checks() > MAX_CHECKS:
        raise SpaceError(f"{where} has too many combinations of choices to check ({space.checks():,} configs, at most "
                         f"{MAX_CHECKS:,}): search fewer choices per key, or a range instead of a long choice list")
    for values in space.extremes():  # then together: checks that involve two fields
        _check_config({**fixed, **values}, where, _describe(values))
    return space


def _parse_param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise SpaceError(f"{where}: {key!r} needs exactly one distribution, e.g. "
                         f"{{loguniform: [0.001, 0.01]}}; kinds: {', '.join(KINDS)}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise SpaceError(f"{where}: {key}: {kind} needs a list, e.g. {kind}: [low, high]")
    if len(values) > MAX_CHOICES:
        raise SpaceError(f"{where}: {key}: {kind} lists {len(values):,} values, at most {MAX_CHOICES}: search a range, "
                         "or fewer choices")
    values = [_number(v) for v in values]
    field_kind = field_kinds()[key][0]
    if kind == "choice":
        if len(set(map(repr, values))) != len(values):
            raise SpaceError(f"{where}: {key}: choice lists a value twice: list each option once")
        return Param(kind, tuple(values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise SpaceError(f"{where}: {key}: {kind} needs two numbers [low, high], got {shown(values)}")
    low, high = values
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise SpaceError(f"{where}: {key}: {kind} needs low < high, got [{low}, {high}]: swap or widen the bounds")
    if kind == "randint":
        if field_kind is not int:
            raise SpaceError(f"{where}: {key} is a {field_kind.__name__}: use uniform or loguniform, not randint")
        if not (float(low).is_integer() and float(high).is_integer()):
            raise SpaceError(f"{where}: {key}: randint bounds must be whole numbers, got [{low}, {high}]")
        return Param(kind, (int(low), int(high)))
    if field_kind is not float:
        raise SpaceError(f"{where}: {key} is a {field_kind.__name__}: use randint or choice, not {kind}")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{where}: {key}: loguniform needs low > 0, got {low}: use e.g. {high / 100:g}")
    return Param(kind, (float(low), float(high)))


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def _check_config(values: dict[str, Any], where: str, what: str) -> TrainConfig:
    try:
        return TrainConfig.from_dict(values, source=where)
    except SpaceError:
        raise
    except ConfigError as e:
        raise SpaceError(f"{where}: {what} is not a valid training config: {e}") from None


def load_space(path: str | Path) -> Space:
    """Read and check a YAML search space."""
    import yaml

    path = Path(path)
    text = read_small_file(path, "search space", MAX_SPACE_BYTES, "pass e.g. --space tune/default.yaml",
                           SpaceError)
    try:
        data = yaml.load(text, Loader=_plain_loader())  # noqa: S506 (a SafeLoader without aliases)
        return parse_space(data, str(path))
    except RecursionError:  # a space nested thousands of levels deep
        raise SpaceError(f"search space {path} is nested too deeply to be a search space: keep to one mapping of "
                         "field: value or field: {kind: ...} (see tune/default.yaml)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        if getattr(e, "problem", "") == ALIAS_REFUSED:
            raise SpaceError(f"search space {path} uses a YAML alias{at}: {ALIAS_REFUSED}; write the values out") from None
        if str(getattr(e, "problem", "")).startswith(DUPLICATE_KEY):
            raise SpaceError(f"search space {path}: {e.problem}{at}: YAML would keep only the last; keep one") from None
        raise SpaceError(f"search space {path} is not valid YAML{at}: fix the file "
                         "(see tune/default.yaml for the format)") from None


ALIAS_REFUSED = "aliases (*name) are not allowed in a search space"
DUPLICATE_KEY = "a key is given twice"


@functools.cache
def _plain_loader() -> type:
    """YAML's safe loader without anchors and aliases: a search space never needs them, and a few
    hundred bytes of nested aliases expand into gigabytes (the "billion laughs")."""
    import yaml

    class PlainLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, ALIAS_REFUSED, event.start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            # YAML takes the last of a key given twice, silently: in a search space that is a typo
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)):
                    continue  # not a key a space has: parse_space says so
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"{DUPLICATE_KEY} ({key!r})",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return PlainLoader


__all__ = ["KINDS", "Param", "Space", "SpaceError", "load_space", "parse_space"]
