"""K seeds of one config, trained in lockstep: ``train_seeds``, and what they add up to: ``over_seeds``.

Why in lockstep: a sweep trial scored over K seeds reports, after every epoch, the mean over the
seeds (and their spread), so that ASHA, PBT and Optuna act on the config, not on one seed's luck,
while early stopping, retries and resume keep working as for one seed. So all K must have trained
epoch ``e`` before epoch ``e`` is reported.

How: each seed's ``run.train`` (the one way into a run) runs in a thread of its own, but only one
thread computes at a time: a seed hands over at the end of each epoch (in its ``report``), and the
next seed trains its epoch. Each seed keeps its own random state across the hand-overs (torch's,
Python's, NumPy's and CUDA's are swapped in and out), so seed ``s`` of a K-seed run trains
bit-identically to ``train --seed s`` alone (tested). One after another in one process is the
fastest way on a CPU: the seeds share the imported libraries and the data in memory, and each uses
all of the process's threads (``benchmarks/seeds.py`` measures it against K processes and against
one ``torch.func.vmap``-ed model; docs/sweeps.md has the figures).

Not here: several processes of one seed (``--workers-per-trial``, ``accelerate launch``) with
``--seeds``; SIGTERM in a K-seed run (the seeds' threads cannot take signals; Ctrl-C stops all of
them, each at its last checkpoint).
"""

from __future__ import annotations

import math
import random
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.config import TrainConfig, read_json_file
from ..rundir.names import FINISHED
from ..rundir.seeds import seed_dir, seeds_of
from .run import Outcome, train

# the metrics that also get a standard deviation (_std) and their worst seed (_min or _max)
WORST = {"val_digit_acc": "min", "val_sum_acc": "min", "val_both_acc": "min", "val_loss": "max",
         "train_seconds": "max", "test_digit_acc": "min", "test_sum_acc": "min", "test_both_acc": "min",
         "test_loss": "max"}


class SeedStopped(BaseException):
    """Raised inside a seed's thread to unwind it when another seed (or the caller) stopped the run."""


def seed_configs(config: TrainConfig, count: int, parent: str | None) -> list[TrainConfig]:
    """The configs of a K-seed run: seeds ``config.seed`` .. ``+K-1``, each in ``parent/seed-<s>``."""
    return [config.replace(seed=s, output_dir=str(seed_dir(parent, s)) if parent else None)
            for s in seeds_of(config.seed, count)]


def over_seeds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for K seeds' rows of one epoch: the mean of every number (the first seed's value for
    anything else), and for ``WORST``'s metrics their standard deviation (``_std``, over the
    seeds: ddof 0) and the worst seed's value (``_min`` of accuracies, ``_max`` of loss and time).
    One row is returned as it is: one seed reports what it always did."""
    if len(rows) == 1:
        return dict(rows[0])
    out: dict[str, Any] = {}
    for key, first in rows[0].items():
        values = [row.get(key) for row in rows]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        same = all(v == first for v in values)  # a number all seeds share stays exactly itself
        out[key] = sum(values) / len(values) if numbers and not same else first
        if numbers and key in WORST:
            mean = out[key]
            out[f"{key}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            out[f"{key}_{WORST[key]}"] = min(values) if WORST[key] == "min" else max(values)
    out["seeds"] = len(rows)
    return out


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    """What ``seeds.json`` holds: each seed's final validation and test metrics and training time,
    and over the seeds their mean, standard deviation and worst seed (``over_seeds``)."""
    rows = []
    for outcome in outcomes:  # a seed that had finished before (--auto-resume): its metrics.json
        final = outcome.final or read_json_file(Path(outcome.config.output_dir) / FINISHED, "a seed's final metrics",
                                                "train that seed again with --overwrite")
        row = {"seed": outcome.config.seed, "run_dir": str(outcome.config.output_dir),
               "train_seconds": final.get("train_seconds")}
        for split in ("val", "test"):
            row.update({f"{split}_{k}": v for k, v in (final.get(split) or {}).items()
                        if k in ("digit_acc", "sum_acc", "both_acc", "loss")})
        rows.append(row)
    over = over_seeds([{k: v for k, v in row.items() if k != "run_dir"} for row in rows]) if len(rows) > 1 else {}
    return {"seeds": [row["seed"] for row in rows], "runs": rows,
            "mean": {k: v for k, v in over.items() if k in rows[0] and k not in ("seed", "run_dir")},
            "std": {k.removesuffix("_std"): v for k, v in over.items() if k.endswith("_std")},
            "worst": {k.rsplit("_", 1)[0]: v for k, v in over.items() if k.endswith(("_min", "_max"))}}


def train_seeds(configs: list[TrainConfig], report: Callable[[list[dict[str, Any]]], None] | None = None, *,
                starts: list[Any], **kwargs: Any) -> list[Outcome]:
    """Train each config (one per seed) with ``run.train``, in lockstep: ``report(rows)`` after every
    epoch with the K seeds' rows of that epoch. ``starts``: each seed's ``start``; ``kwargs``: the
    rest of ``train``'s, the same for every seed (``on_checkpoint`` is called as
    ``on_checkpoint(index, path)``). The first seed's error stops the others and is raised."""
    if len(configs) == 1:
        one = kwargs.pop("on_checkpoint", None)
        return [train(configs[0], None if report is None else lambda row: report([row]), start=starts[0],
                      on_checkpoint=None if one is None else lambda path: one(0, path), **kwargs)]
    lockstep = _Lockstep(len(configs))
    on_checkpoint = kwargs.pop("on_checkpoint", None)
    for i, (config, start) in enumerate(zip(configs, starts)):
        lockstep.add(i, lambda i=i, config=config, start=start: train(
            config, lambda row: lockstep.hand_over(i, row), start=start,
            on_checkpoint=None if on_checkpoint is None else lambda path: on_checkpoint(i, path), **kwargs))
    return lockstep.run(report)


class _Lockstep:
    """K threads, one computing at a time; each hands over at its epochs' ends (``hand_over``)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.turn: int | None = None  # whose thread may compute; None: the caller's
        self.changed = threading.Condition()
        self.stopping = False
        self.threads: list[threading.Thread] = []
        self.rows: list[list[dict[str, Any]]] = [[] for _ in range(count)]
        self.outcomes: list[Any] = [None] * count
        self.errors: list[BaseException | None] = [None] * count
        self.done = [False] * count
        self.random: list[Any] = [None] * count

    def add(self, i: int, body: Callable[[], Outcome]) -> None:
        def thread() -> None:
            try:
                self._wait_for_turn(i)
                self.outcomes[i] = body()
            except SeedStopped:
                pass
            except BaseException as e:  # said by the caller's thread
                self.errors[i] = e
            finally:
                with self.changed:
                    self.done[i], self.turn = True, None
                    self.changed.notify_all()

        self.threads.append(threading.Thread(target=thread, name=f"seed-{i}", daemon=True))

    def hand_over(self, i: int, row: dict[str, Any]) -> None:
        """In seed ``i``'s thread, at an epoch's end: keep its row and its random state, let the next seed train."""
        self.rows[i].append(row)
        self.random[i] = _random_state()
        with self.changed:
            self.turn = None
            self.changed.notify_all()
        self._wait_for_turn(i)
        _set_random_state(self.random[i])

    def _wait_for_turn(self, i: int) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.turn == i)
        if self.stopping:
            raise SeedStopped

    def _step(self, i: int) -> None:
        """Let seed ``i`` compute until it hands over or ends."""
        with self.changed:
            self.turn = i
            self.changed.notify_all()
            self.changed.wait_for(lambda: self.turn is None)

    def run(self, report: Callable[[list[dict[str, Any]]], None] | None) -> list[Outcome]:
        for thread in self.threads:
            thread.start()
        reported = 0
        try:
            while not all(self.done):
                for i in range(self.count):
                    if not self.done[i]:
                        self._step(i)
                    if self.errors[i] is not None:
                        raise self.errors[i]
                if all(len(rows) > reported for rows in self.rows):
                    if report is not None:
                        report([rows[reported] for rows in self.rows])
                    reported += 1
        finally:
            self._stop_the_rest()
        return self.outcomes

    def _stop_the_rest(self) -> None:
        """Unwind every seed still waiting for its turn (each closes its run folder on the way out)."""
        self.stopping = True
        while not all(self.done):  # a seed interrupted mid-epoch stops at that epoch's end
            for i in range(self.count):
                if not self.done[i]:
                    self._step(i)
        for thread in self.threads:
            thread.join()


def _random_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if "numpy" in sys.modules:
        state["numpy"] = sys.modules["numpy"].random.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "numpy" in state:
        sys.modules["numpy"].random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
