"""What ``mnist-addition tune`` was asked to do, checked before Ray starts; shipped search spaces.

No Ray here: every mistake a flag can make is a one-line error in a second, not after a cluster
start-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.config import MAX_SEEDS, ConfigError, flag
from ..core.errors import EXIT_FAILED

# What a sweep can select on, and which way is better. train_seconds: a trial's training time (its
# cost); with an accuracy, a multi-objective sweep finds the accuracy each cost buys (pareto.csv).
METRICS = {"val_both_acc": "max", "val_digit_acc": "max", "val_sum_acc": "max", "val_loss": "min",
           "train_seconds": "min"}
# With --seeds K above 1 a trial's metrics are means over its seeds; these name its worst seed.
WORST_METRICS = {"val_both_acc_min": "max", "val_digit_acc_min": "max", "val_sum_acc_min": "max",
                 "val_loss_max": "min", "train_seconds_max": "min"}
ALL_METRICS = {**METRICS, **WORST_METRICS}
PICK_OPERATORS = (">=", "<=")
SCHEDULERS = ("asha", "fifo", "pbt")
SEARCHERS = ("random", "optuna")
DRIVER_CPUS = 0.1  # a multi-worker trial's own process only waits on its TorchTrainer
# Ray schedules fractional GPUs in steps of 1/10,000; a share is rounded down to that.
GPU_GRAIN = 10_000
SMOKE_SAMPLES = 4  # trials of `tune --smoke` unless --num-samples
DEFAULT_SAMPLES = 8  # trials of `tune` unless --num-samples


class SweepError(ConfigError):
    """A sweep cannot start or resume; the message says why and what to do."""


class NoUsableTrial(SweepError):
    """The sweep ran, but no trial produced a metric that can be ranked (exit 1, not a usage error)."""

    exit_code = EXIT_FAILED


def _o(default: Any, help: str, group: str = "", choices: tuple | None = None, repeat: bool = False,
       shown: str | None = None) -> Any:
    """A SweepOptions field and its ``tune`` flag: the help, the help group ("" for the first, "where
    it runs", "how it searches"), ``repeat``: the flag may be given several times (a tuple of its
    values), and ``shown``: what ``--help`` says the default is, where the value alone would not
    tell (None or 0 meaning "decided at run time")."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "repeat": repeat,
                                            "shown": shown})


WHERE, HOW = "where it runs", "how it searches"


@dataclass
class SweepOptions:
    """What ``mnist-addition tune`` was asked to do (saved as ``sweep.json`` for --resume); each field
    is a ``tune`` flag (``flags.add_tune_flags``)."""

    space: str = _o("default", "YAML search space, or the name of a shipped one (tune/)",
                    shown="default; smoke with --smoke")  # --help adds the shipped names (flags.py)
    num_samples: int | None = _o(None, "trials to sample; with --resume, more than the sweep has grows it (the "
                                       "searcher goes on from what it learned)", shown=f"{DEFAULT_SAMPLES}; {SMOKE_SAMPLES} with --smoke")
    data_dir: str | None = _o(None, "folder with MNIST/raw/*-ubyte, the same path on every node",
                              shown="$MNIST_ADDITION_DATA or ~/.cache/mnist-addition")
    smoke: bool = _o(False, "tiny trials: 10,000 training images, 2 epochs")
    download: bool = _o(True, "never try to download MNIST")  # the flag is --no-download
    address: str | None = _o(None, "an existing Ray cluster, e.g. 127.0.0.1:6379", WHERE,
                             shown="$RAY_ADDRESS, else start a local Ray on this machine's CPUs")
    storage_path: str = _o("runs/sweeps", "folder or s3://... URI for sweeps", WHERE)
    name: str | None = _o(None, "sweep name: a folder in --storage-path", WHERE, shown="tune-<timestamp>")
    resume: bool = _o(False, "continue the interrupted sweep --name; finished trials are kept, unfinished ones "
                             "resume from checkpoints", WHERE)
    # 1: two 1-thread trials at once did 1.44x the epochs per hour of one 2-thread trial (docs/sweeps.md)
    cpus_per_trial: float = _o(1.0, "CPUs per trial; a trial computes with as many threads (whole CPUs, at "
                                     "least 1)", WHERE)
    # None: fill the cluster's GPUs (none: CPU trials); see gpu_share
    gpus_per_trial: float | None = _o(None, "GPUs per trial: a fraction shares a GPU (0.25: 4 trials per GPU); above "
                                            "1 the trial is data-parallel with one Ray Train worker per GPU", WHERE,
                                      shown="the cluster's GPUs shared evenly by as many trials as the CPUs fit; 0 "
                                            "without GPUs")
    workers_per_trial: int = _o(0, "data-parallel workers per trial (Ray Train + Accelerate); CPUs and GPUs are split "
                                   "between them", WHERE, shown="one per GPU above 1 GPU, else 1")
    max_concurrent: int = _o(0, "trials at once", WHERE, shown="as many as resources allow")
    max_failures: int = _o(2, "retries of a crashed trial, each from its last checkpoint", WHERE)
    trial_timeout: float = _o(0.0, "seconds a trial may go without a training step or an epoch's report before it "
                                   "is stopped, marked hung and retried from its last checkpoint (within "
                                   "--max-failures)", WHERE, shown="0: never")
    time_budget: float = _o(0.0, "seconds this run of the sweep may take: then running trials are stopped (resumable), "
                                 "results and best_config.json are written from the trials that ended, and "
                                 "tune --resume goes on", WHERE, shown="0: no limit")
    dashboard: bool = _o(False, "start the Ray dashboard on 127.0.0.1 (local Ray only)", WHERE)
    log_with: str = _o("none", "trackers that log each trial as a run of one experiment named --name, comma-separated: "
                               "mlflow, tensorboard, wandb, aim, comet_ml; logged by this machine (the driver), "
                               "so only it needs the tracking store (see docs/tracking.md)", WHERE)
    scheduler: str = _o("asha", "asha stops bad trials early; fifo trains every trial to its end; pbt: "
                                "population-based training, in which the worst trials copy the best ones' weights "
                                "and go on with their lr, weight_decay, sum_weight, label_smoothing perturbed "
                                "(docs/sweeps.md)", HOW, SCHEDULERS)
    grace_epochs: int = _o(1, "asha: epochs every trial trains before it may be stopped; its rungs are at 1, 2, "
                              "4... times this", HOW)
    perturbation_epochs: int = _o(2, "pbt: epochs between two perturbations of the population", HOW)
    search: str = _o("random", "random sampling or Optuna's TPE", HOW, SEARCHERS)
    metric: tuple[str, ...] = _o(("val_both_acc",), "what to select on; repeat it for a multi-objective sweep, e.g. "
                                                    "--metric val_both_acc --metric train_seconds (Pareto front; "
                                                    "ASHA prunes on the first)", HOW,
                                 tuple(ALL_METRICS), repeat=True, shown="val_both_acc")
    mode: tuple[str, ...] | None = _o(None, "max or min, once per --metric", HOW, ("max", "min"), repeat=True,
                                      shown="max for accuracies, min for val_loss and train_seconds")
    pick: str | None = _o(None, "which trial best_config.json is, as a rule on one metric, e.g. "
                                "\"val_both_acc>=0.993\": the best on the other --metric among the trials that meet "
                                "it (the cheapest accurate-enough one)", HOW, shown="the best on the first --metric")
    seeds: int | None = _o(None, "seeds each trial trains its config with (the space's seed and the ones after it, one "
                                 "after another); every metric is then their mean, with _std and the worst seed "
                                 "(e.g. val_both_acc_min) beside it", HOW, shown="the space's seeds:, else 1")
    warm_start: tuple[str, ...] = _o((), "an earlier sweep (a folder, URI, or name in --storage-path) whose trials "
                                         "Optuna starts from as prior observations (those the new sweep could have "
                                         "trained; the rest are skipped and counted); repeat it for several; needs "
                                         "--search optuna", HOW, repeat=True, shown="none")
    seed: int = _o(0, "seed of the sampler (every trial trains with the space's seed, 0 unless it sets one, so "
                      "configs are compared on equal terms)", HOW)
    top: int = _o(10, "rows in the results table", HOW)

    def __post_init__(self) -> None:
        # one metric may be given as a string (the Python API)
        if isinstance(self.metric, str):
            self.metric = (self.metric,)
        if isinstance(self.mode, str):
            self.mode = (self.mode,)
        self.metric = tuple(self.metric)
        self.mode = None if self.mode is None else tuple(self.mode)
        self.warm_start = (self.warm_start,) if isinstance(self.warm_start, str) else tuple(self.warm_start)
        if self.num_samples is None and not self.resume:  # resumed: sweep.json's, unless given to grow it
            self.num_samples = DEFAULT_SAMPLES

    # Fixed by the first run of a sweep; --resume takes them from sweep.json.
    SWEEP_DEFINING = ("space", "num_samples", "cpus_per_trial", "gpus_per_trial", "workers_per_trial",
                      "max_concurrent", "scheduler", "grace_epochs", "search", "metric", "mode", "seed", "smoke",
                      "log_with", "perturbation_epochs", "seeds", "warm_start")  # the trackers' callbacks are restored with the sweep's state

    GROWS = ("num_samples",)  # sweep-defining, but --resume may raise it (grow.py)

    @classmethod
    def from_flags(cls, given: dict[str, Any]) -> "SweepOptions":
        """The options of ``tune`` from the flags typed (``given``: only those). A new sweep gets its
        space (``--space``, else ``smoke`` with --smoke, else ``default``) and, with --smoke, 4
        trials; ``--resume`` refuses every sweep-defining flag (sweep.json fixes them)."""
        given = dict(given)
        if given.get("resume"):
            changed = [k for k in cls.SWEEP_DEFINING if k in given and k not in cls.GROWS]
            if changed:
                raise SweepError(f"{flag(changed[0])} cannot change when resuming (the sweep's sweep.json fixes it): "
                                 "drop the flag, or start a new sweep under another --name, with --warm-start "
                                 f"{given.get('name') or 'NAME'} to begin from this one's trials")
            options = cls(**given)
            options.check_limits()  # the rest is checked once sweep.json is read (folder.py)
            return options
        given["space"] = str(find_space(given.get("space") or ("smoke" if given.get("smoke") else "default")))
        if given.get("smoke"):
            given.setdefault("num_samples", SMOKE_SAMPLES)
        return cls(**given)

    def workers(self) -> int:
        if self.workers_per_trial:
            return self.workers_per_trial
        return int(self.gpus_per_trial) if self.gpus_per_trial and self.gpus_per_trial > 1 else 1

    def check_limits(self) -> None:
        """The time limits (which --resume may change): seconds, finite, 0 for none."""
        for option in ("trial_timeout", "time_budget"):
            value = getattr(self, option)
            if not (math.isfinite(value) and value >= 0):
                raise SweepError(f"{flag(option)} must be a number of seconds >= 0 (got {value:g}); 0 = no limit")

    def check(self) -> None:
        """Reject bad numbers and combinations before anything starts."""
        def need(ok: bool, option: str, message: str) -> None:
            if not ok:
                raise SweepError(f"{flag(option)} {message}")

        gpus = self.gpus_per_trial
        shown = "the default" if gpus is None else f"{gpus:g}"  # the messages are built before need() looks
        need(self.num_samples >= 1, "num_samples", f"must be at least 1 (got {self.num_samples})")
        need(math.isfinite(self.cpus_per_trial) and self.cpus_per_trial > 0, "cpus_per_trial",
             f"must be > 0 (got {self.cpus_per_trial:g}); e.g. 2")
        need(self.cpus_per_trial >= 1 / GPU_GRAIN, "cpus_per_trial",
             f"is below Ray's smallest share of a CPU, 1/{GPU_GRAIN} (got {self.cpus_per_trial:g}): use e.g. 0.5")
        need(0 <= self.seed <= 2**32 - 1, "seed", f"must be in 0..{2**32 - 1} (got {self.seed}); e.g. 0")
        need(gpus is None or (math.isfinite(gpus) and gpus >= 0), "gpus_per_trial",
             f"must be >= 0 (got {shown})")
        need(gpus is None or gpus <= 1 or float(gpus).is_integer(), "gpus_per_trial",
             f"above 1 must be a whole number of GPUs (got {shown})")
        need(gpus is None or gpus == 0 or gpus >= 1 / GPU_GRAIN, "gpus_per_trial",
             f"is below Ray's smallest GPU share, 1/{GPU_GRAIN} (got {shown}): use e.g. 0.25 for 4 trials per GPU")
        need(self.workers_per_trial >= 0, "workers_per_trial", f"must be >= 0 (got {self.workers_per_trial})")
        need(self.max_concurrent >= 0, "max_concurrent", f"must be >= 0 (got {self.max_concurrent}); 0 = no limit")
        need(self.seeds is None or 1 <= self.seeds <= MAX_SEEDS, "seeds",
             f"must be a whole number in 1..{MAX_SEEDS} (got {self.seeds})")
        need(self.max_failures >= 0, "max_failures", f"must be >= 0 (got {self.max_failures})")
        self.check_limits()
        need(self.top >= 1, "top", f"must be at least 1 (got {self.top})")
        need(self.grace_epochs >= 1, "grace_epochs", f"must be at least 1 (got {self.grace_epochs})")
        need(self.perturbation_epochs >= 1, "perturbation_epochs", f"must be at least 1 (got {self.perturbation_epochs})")
        need(self.scheduler in SCHEDULERS, "scheduler", f"must be one of {', '.join(SCHEDULERS)}")
        need(self.search in SEARCHERS, "search", f"must be one of {', '.join(SEARCHERS)}")
        self._check_metrics()
        need(not self.warm_start or self.search == "optuna", "warm_start",
             "gives earlier trials to Optuna, which random search would ignore: add --search optuna")
        from .trackers import check

        check(self.log_with)
        need(not gpus or gpus <= 1 or self.workers_per_trial in (0, int(gpus)), "workers_per_trial",
             f"must equal --gpus-per-trial {shown} (one worker per GPU) or be left out")
        need(not gpus or gpus >= 1 or self.workers_per_trial <= 1, "workers_per_trial",
             f"cannot split a fraction of a GPU ({shown}) between {self.workers_per_trial} workers: "
             "use one worker, or whole GPUs")
        workers = self.workers()
        need(self.cpus_per_trial / workers >= 0.1 or workers == 1, "cpus_per_trial",
             f"{self.cpus_per_trial:g} is too few for {workers} workers: give each at least 0.1 CPU")
        if self.scheduler == "pbt":  # one number to rank the population by, new members only by perturbation
            need(len(self.metric) == 1, "scheduler", "pbt ranks its population on one --metric: give one (a Pareto "
                                                     "search is --scheduler asha or fifo)")
            need(self.search == "random", "scheduler", "pbt samples its first population at random and then perturbs "
                                                       "it: drop --search optuna")
            need(not self.max_concurrent, "max_concurrent", "cannot limit a pbt population: all of its trials take "
                                                            "turns (give fewer --num-samples instead)")
        need(workers == 1 or (self.seeds or 1) == 1, "seeds", f"trains its seeds in one process: drop "
                                                            f"--workers-per-trial {workers} (or --seeds)")
        if self.scheduler == "pbt":
            need(workers == 1, "scheduler", f"pbt trials train in one process each (a copied trial continues the "
                                            f"weights itself): drop --workers-per-trial {workers} or use asha")

    def _check_metrics(self) -> None:
        unknown = next((m for m in self.metric if m not in ALL_METRICS), None)
        if unknown is not None or not self.metric:
            raise SweepError(f"--metric must be one of {', '.join(METRICS)}, or with --seeds 2 or more "
                             f"{', '.join(WORST_METRICS)} (got {unknown!r})")
        self._worst_needs_seeds(self.metric, "--metric")
        if len(set(self.metric)) != len(self.metric):
            raise SweepError(f"--metric {next(m for m in self.metric if self.metric.count(m) > 1)} is given twice: "
                             "give each metric once")
        if self.mode is not None:
            if len(self.mode) != len(self.metric) or any(m not in ("max", "min") for m in self.mode):
                raise SweepError(f"--mode must be max or min, once per --metric ({len(self.metric)} of them; got "
                                 f"{' '.join(self.mode)}); or leave --mode out")
            for metric, mode in zip(self.metric, self.mode):
                if mode != ALL_METRICS[metric]:
                    raise SweepError(f"--mode {mode} with --metric {metric} would pick the worst trial: "
                                     f"use --mode {ALL_METRICS[metric]} (or leave --mode out)")
        if self.pick is not None:
            self._worst_needs_seeds((self.pick_rule()[0],), "--pick")

    def _worst_needs_seeds(self, metrics: tuple[str, ...], option: str) -> None:
        worst = next((m for m in metrics if m in WORST_METRICS), None)
        if worst is not None and (self.seeds or 1) < 2:
            raise SweepError(f"{option} {worst} is the worst of a trial's seeds, and a trial has one: add --seeds 3 "
                             "(or seeds: in the space), or name the mean, " + worst.rsplit("_", 1)[0])

    @property
    def primary(self) -> str:
        """The metric ASHA prunes on and trials are ranked by (the first --metric)."""
        return self.metric[0]

    def modes(self) -> tuple[str, ...]:
        return self.mode or tuple(ALL_METRICS[m] for m in self.metric)

    def resolved_mode(self) -> str:
        return self.modes()[0]

    def pick_rule(self) -> tuple[str, str, float, str]:
        """``--pick`` as (metric, operator, threshold, the metric to pick the best by); SweepError if bad."""
        rule = (self.pick or "").replace(" ", "")
        op = next((o for o in PICK_OPERATORS if o in rule), None)
        metric, _, text = rule.partition(op) if op else (rule, "", "")
        try:
            threshold = float(text)
        except ValueError:
            threshold = math.nan
        if op is None or metric not in ALL_METRICS or not math.isfinite(threshold):
            raise SweepError(f"--pick {self.pick!r} is not a rule: write METRIC>=VALUE or METRIC<=VALUE with a metric "
                             f"of {', '.join(METRICS)} (with --seeds: also {', '.join(WORST_METRICS)}), e.g. --pick "
                             "\"val_both_acc>=0.993\"")
        mean = metric.rsplit("_", 1)[0] if metric in WORST_METRICS else metric  # the worst seed's: not by its mean
        by = next((m for m in self.metric if m not in (metric, mean)), None)
        if by is None:
            raise SweepError(f"--pick on {metric} needs another --metric to pick the best by: add e.g. "
                             f"--metric train_seconds")
        return metric, op, threshold, by


def gpu_share(cluster_cpus: float, cluster_gpus: float, cpus_per_trial: float) -> float:
    """The default --gpus-per-trial: spread the trials the CPUs allow evenly over the GPUs.

    No GPUs: 0 (CPU trials). Otherwise as many trials as the CPUs fit share each GPU equally, as
    1/k of a GPU (k trials per GPU), never more than one GPU per trial. A model this small keeps a
    GPU ~0.1% busy, so the trials' host-side work (one CPU each, at least) is what limits a GPU node.
    """
    if cluster_gpus < 1:
        return 0.0
    trials = max(1, int(cluster_cpus // cpus_per_trial))
    per_gpu = max(1, math.ceil(trials / int(cluster_gpus)))
    return math.floor(GPU_GRAIN / per_gpu) / GPU_GRAIN


def trial_threads(cpus: float) -> int:
    """The torch threads a trial (or each worker of a multi-worker trial) computes with: the whole
    CPUs Ray reserved for it, at least one. More threads than reserved CPUs would oversubscribe a
    node whose other CPUs run other trials; fewer would leave reserved CPUs idle."""
    return max(1, math.floor(cpus + 1e-9))


def shipped_spaces() -> dict[str, Path]:
    """The search spaces that ship with the package, by name (``tune/`` in a checkout links here)."""
    folder = resources.files(__package__) / "spaces"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def find_space(space: str) -> Path:
    """A path as given, or the name of a shipped space ('default', 'smoke', 'wide')."""
    path = Path(space)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in space:
        return path
    shipped = shipped_spaces()
    if space in shipped:
        return shipped[space]
    raise SweepError(f"--space {space}: no such file, and not a shipped space name ({', '.join(sorted(shipped))}): "
                     "pass a .yaml path")
