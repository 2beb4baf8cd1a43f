"""Ray Tune sweeps: ``mnist-addition tune``. The only module that imports Ray (lazily).

Each trial runs the core ``fit`` with a sampled config and reports every epoch (validation
metrics only; the test set is never looked at during a sweep) together with that epoch's
checkpoint, so that ASHA can stop bad trials early, a crashed trial is retried from its last
checkpoint, and an interrupted sweep can be restored. A trial with several workers (GPUs, or CPU
processes) runs the same ``fit`` under Ray Train's ``TorchTrainer``, whose ``fit()`` is called from
inside the Tune trial (Ray 2.5x/2.6x: Train V2); Accelerate picks up the process group Ray Train
made.

Layout of a sweep, ``STORAGE/NAME/``: Ray's experiment state and one folder per trial (with the
trial's run folder ``run/``), plus ours: ``sweep.json`` (what was asked, for ``--resume``),
``trials.csv``, ``best_config.json`` (feed it to ``mnist-addition train --config``),
``sweep.png`` and ``summary.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .checkpoint import STATE_FILE, checkpoint_dir, list_checkpoints
from .config import SMOKE_OVERRIDES, ConfigError, TrainConfig, flag
from .spaces import Space, load_space, parse_space

METRICS = {"val_both_acc": "max", "val_digit_acc": "max", "val_sum_acc": "max", "val_loss": "min"}
SCHEDULERS = ("asha", "fifo")
SEARCHERS = ("random", "optuna")
# What --smoke does to every trial (the space's own searched keys still win): little data, 2 epochs
# so that ASHA has something to decide.
TUNE_SMOKE = {**SMOKE_OVERRIDES, "epochs": 2}
SWEEP_FILE, CSV_FILE, BEST_FILE, PLOT_FILE, SUMMARY_FILE = (
    "sweep.json", "trials.csv", "best_config.json", "sweep.png", "summary.json")
# Set only by tests: the first trial to finish epoch 1 creates this file and then crashes, once.
FAULT_ENV = "MNIST_ADDITION_INJECT_FAILURE"
DRIVER_CPUS = 0.1  # a multi-worker trial's own process only waits on its TorchTrainer


class SweepError(ConfigError):
    """A sweep cannot start or resume; the message says why and what to do."""


@dataclass
class SweepOptions:
    """What ``mnist-addition tune`` was asked to do (saved as ``sweep.json`` for --resume)."""

    space: str = "tune/default.yaml"
    num_samples: int = 8
    data_dir: str | None = None
    storage_path: str = "runs/sweeps"
    name: str | None = None
    address: str | None = None
    resume: bool = False
    cpus_per_trial: float = 2.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 0  # 0 = one per GPU when gpus_per_trial > 1, else 1
    max_concurrent: int = 0  # 0 = as many as the cluster's resources allow
    scheduler: str = "asha"
    search: str = "random"
    metric: str = "val_both_acc"
    mode: str | None = None
    seed: int = 0
    max_failures: int = 2
    smoke: bool = False
    download: bool = True
    dashboard: bool = False
    top: int = 10

    # Fixed by the first run of a sweep; --resume takes them from sweep.json.
    SWEEP_DEFINING = ("space", "num_samples", "cpus_per_trial", "gpus_per_trial", "workers_per_trial",
                      "max_concurrent", "scheduler", "search", "metric", "mode", "seed", "smoke")

    def workers(self) -> int:
        if self.workers_per_trial:
            return self.workers_per_trial
        return int(self.gpus_per_trial) if self.gpus_per_trial > 1 else 1

    def check(self) -> None:
        """Reject bad numbers and combinations before anything starts."""
        def need(ok: bool, option: str, message: str) -> None:
            if not ok:
                raise SweepError(f"{flag(option)} {message}")

        need(self.num_samples >= 1, "num_samples", f"must be at least 1 (got {self.num_samples})")
        need(self.cpus_per_trial > 0, "cpus_per_trial", f"must be > 0 (got {self.cpus_per_trial}); e.g. 2")
        need(self.gpus_per_trial >= 0, "gpus_per_trial", f"must be >= 0 (got {self.gpus_per_trial})")
        need(self.workers_per_trial >= 0, "workers_per_trial", f"must be >= 0 (got {self.workers_per_trial})")
        need(self.gpus_per_trial <= 1 or float(self.gpus_per_trial).is_integer(), "gpus_per_trial",
             f"above 1 must be a whole number of GPUs (got {self.gpus_per_trial})")
        need(self.max_concurrent >= 0, "max_concurrent", f"must be >= 0 (got {self.max_concurrent}); 0 = no limit")
        need(self.max_failures >= 0, "max_failures", f"must be >= 0 (got {self.max_failures})")
        need(self.top >= 1, "top", f"must be at least 1 (got {self.top})")
        need(self.scheduler in SCHEDULERS, "scheduler", f"must be one of {', '.join(SCHEDULERS)}")
        need(self.search in SEARCHERS, "search", f"must be one of {', '.join(SEARCHERS)}")
        need(self.metric in METRICS, "metric", f"must be one of {', '.join(METRICS)} (got {self.metric!r})")
        need(self.mode in (None, "max", "min"), "mode", f"must be max or min (got {self.mode!r})")
        if self.mode is not None and self.mode != METRICS[self.metric]:
            raise SweepError(f"--mode {self.mode} with --metric {self.metric} would pick the worst trial: "
                             f"use --mode {METRICS[self.metric]} (or leave --mode out)")
        workers = self.workers()
        need(self.gpus_per_trial <= 1 or self.workers_per_trial in (0, int(self.gpus_per_trial)), "workers_per_trial",
             f"must equal --gpus-per-trial {self.gpus_per_trial:g} (one worker per GPU) or be left out")
        need(self.cpus_per_trial / workers >= 0.1 or workers == 1, "cpus_per_trial",
             f"{self.cpus_per_trial:g} is too few for {workers} workers: give each at least 0.1 CPU")

    def resolved_mode(self) -> str:
        return self.mode or METRICS[self.metric]


@dataclass
class TrialSettings:
    """What every trial needs besides its sampled hyperparameters (passed with tune.with_parameters)."""

    base: dict[str, Any]
    data_dir: str
    download: bool
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    max_failures: int
    storage_path: str
    fault_marker: str | None = None


# ---------------------------------------------------------------------------------------------
# Inside a trial (a Ray actor; for multi-worker trials, each Ray Train worker)
# ---------------------------------------------------------------------------------------------

def _train_and_report(params: dict[str, Any], settings: TrialSettings, run_dir: Path,
                      report: Callable[..., None], checkpoint_class: type, restored: Any) -> None:
    """Prepare the run folder (restoring a reported checkpoint), then run the one ``fit``.

    ``report``/``checkpoint_class`` are Tune's for a single-process trial and Ray Train's on the
    workers of a multi-worker trial.
    """
    import logging

    import ray

    for name in ("ray", "ray.train", "ray.tune", "accelerate"):  # not several lines per saved checkpoint
        logging.getLogger(name).setLevel(logging.WARNING)

    from .data import load_mnist, make_splits
    from .train import fit, process_state

    state = process_state()  # under Ray Train: joins the process group Ray Train set up
    config = TrainConfig.from_dict({**settings.base, **params, "data_dir": settings.data_dir,
                                    "output_dir": str(run_dir)}, source="the sweep")
    resumed_from = 0
    with restored.as_directory() if restored is not None else contextlib.nullcontext() as src:
        saved = json.loads((Path(src) / STATE_FILE).read_text()) if src else None
        if saved:
            resumed_from = saved["epoch"]
        if state.is_local_main_process:  # one copy per node
            shutil.rmtree(run_dir, ignore_errors=True)  # a previous attempt's leftovers: the reported checkpoint rules
            run_dir.mkdir(parents=True)
            if saved:
                shutil.copytree(src, checkpoint_dir(run_dir, saved["global_step"]))
        state.wait_for_everyone()
    data = make_splits(load_mnist(settings.data_dir, download=settings.download), config.val_size)
    node_id = ray.get_runtime_context().get_node_id()

    def on_epoch(row: dict[str, Any]) -> None:
        metrics = {**row, "processes": state.num_processes, "resumed_from_epoch": resumed_from,
                   "node_id": node_id}
        # fit saved this epoch's checkpoint just before calling us; Ray copies it to storage
        checkpoint = checkpoint_class.from_directory(str(list_checkpoints(run_dir)[-1])) if state.is_main_process else None
        report(metrics, checkpoint=checkpoint)
        if settings.fault_marker and row["epoch"] == 1 and state.is_main_process:
            try:
                os.close(os.open(settings.fault_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            raise RuntimeError(f"injected failure ({FAULT_ENV}): this trial crashes once after epoch 1")

    fit(config, report=on_epoch, data=data, progress=False, resume=restored is not None, score_test=False,
        warn=lambda line: print(line, flush=True))


def _single_process_trial(params: dict[str, Any], settings: TrialSettings) -> None:
    import ray.tune

    run_dir = Path(ray.tune.get_context().get_trial_dir()) / "run"
    _train_and_report(params, settings, run_dir, ray.tune.report, ray.tune.Checkpoint, ray.tune.get_checkpoint())


def _worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker of a multi-worker trial."""
    import ray.train

    _train_and_report(loop_config["params"], loop_config["settings"], Path(loop_config["run_dir"]),
                      ray.train.report, ray.train.Checkpoint, ray.train.get_checkpoint())


def _multi_worker_trial(params: dict[str, Any], settings: TrialSettings) -> None:
    """A Tune trial that drives a data-parallel TorchTrainer (Ray's Train-inside-Tune pattern)."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    context = ray.tune.get_context()
    resources = {"CPU": settings.cpus_per_worker}
    if settings.gpus_per_worker:
        resources["GPU"] = settings.gpus_per_worker
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"params": params, "settings": settings,
                           "run_dir": str(Path(context.get_trial_dir()) / "run")},
        scaling_config=ray.train.ScalingConfig(num_workers=settings.workers, use_gpu=settings.gpus_per_worker > 0,
                                               resources_per_worker=resources),
        # The same name on a retry: Ray Train then resumes from this run's latest checkpoint.
        run_config=ray.train.RunConfig(
            name=f"train-{context.get_trial_id()}", storage_path=settings.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


# ---------------------------------------------------------------------------------------------
# The driver: mnist-addition tune
# ---------------------------------------------------------------------------------------------

def require_ray() -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.tune") is None:
        raise SweepError('Ray Tune is not installed: pip install -e ".[tune]" (or pip install "ray[tune]")')


def find_space(space: str) -> Path:
    """A path as given, or a name ('default', 'smoke') from the repository's tune/ folder."""
    path = Path(space)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in space:
        return path
    shipped = Path(__file__).resolve().parents[1] / "tune" / f"{space}.yaml"
    if shipped.exists():
        return shipped
    names = sorted(p.stem for p in shipped.parent.glob("*.yaml"))
    raise SweepError(f"--space {space}: no such file, and not a shipped space name"
                     f"{' (' + ', '.join(names) + ')' if names else ''}: pass a .yaml path")


def experiment_dir(options: SweepOptions) -> str:
    return f"{options.storage_path.rstrip('/')}/{options.name}"


class _Store:
    """Small files in the experiment folder, local or remote (pyarrow.fs, as Ray itself uses)."""

    def __init__(self, uri: str) -> None:
        import pyarrow.fs

        self.fs, self.root = pyarrow.fs.FileSystem.from_uri(uri)  # an absolute path (see resolve) or a URI
        self.uri = uri

    def exists(self, name: str = "") -> bool:
        import pyarrow.fs

        path = f"{self.root}/{name}" if name else self.root
        return self.fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound

    def read(self, name: str) -> bytes:
        with self.fs.open_input_stream(f"{self.root}/{name}") as f:
            return f.read()

    def write(self, name: str, data: bytes) -> None:
        self.fs.create_dir(self.root, recursive=True)
        with self.fs.open_output_stream(f"{self.root}/{name}") as f:
            f.write(data)

    def where(self, name: str) -> str:
        return f"{self.uri}/{name}"


def resolve(options: SweepOptions) -> tuple[SweepOptions, Space, _Store]:
    """Fill in defaults, load and check the space (or the saved sweep on --resume). No Ray yet."""
    options = dataclasses.replace(options)
    if "://" not in options.storage_path:
        options.storage_path = os.path.abspath(os.path.expanduser(options.storage_path))
    if options.resume:
        if not options.name:
            raise SweepError("--resume needs --name: the sweep to continue (a folder in --storage-path)")
        store = _Store(experiment_dir(options))
        if not store.exists(SWEEP_FILE):
            raise SweepError(f"--resume: {store.uri} is not a sweep started by mnist-addition tune (no {SWEEP_FILE}): "
                             "check --storage-path and --name")
        saved = json.loads(store.read(SWEEP_FILE))
        for key in SweepOptions.SWEEP_DEFINING:
            setattr(options, key, saved["options"][key])
        space = parse_space(saved["space"], saved["options"]["space"])
        if options.data_dir is None:
            options.data_dir = saved["options"]["data_dir"]
    else:
        options.check()
        space = load_space(options.space)
        options.name = options.name or time.strftime("tune-%Y%m%d-%H%M%S")
        store = _Store(experiment_dir(options))
        if store.exists():
            raise SweepError(f"{store.uri} already exists: pass --resume to continue that sweep, or choose "
                             "another --name")
    return options, space, store


def _init_ray(options: SweepOptions) -> bool:
    """Connect to --address/RAY_ADDRESS, or start a small local Ray. Returns True if we started it."""
    import logging

    import ray

    address = options.address or os.environ.get("RAY_ADDRESS")
    quiet = dict(logging_level=logging.WARNING, log_to_driver=True)
    if ray.is_initialized():
        return False
    if address:
        _probe(address)  # Ray itself retries an unreachable address for minutes
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise SweepError(f"cannot connect to a Ray cluster at {address} ({str(e).splitlines()[0]}): "
                             "start one with 'ray start --head', or drop --address to run locally") from None
        return False
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=options.dashboard,
             dashboard_host="127.0.0.1", object_store_memory=200 * 1024**2, **quiet)
    return True


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with a fix, when nothing listens at a host:port address."""
    import socket

    if address in ("auto", "local") or "://" in address or ":" not in address:
        return  # Ray resolves these itself, and fails fast
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as e:
        raise SweepError(f"no Ray cluster at --address {address} ({e.__class__.__name__}: {e}): start one with "
                         "'ray start --head --port 6379', or leave --address (and RAY_ADDRESS) out to run "
                         "locally") from None


def _check_resources(options: SweepOptions) -> int:
    """Fail early if no node can ever run a trial; return how many trials fit at once."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    workers = options.workers()
    cpu_each, gpu_each = options.cpus_per_trial / workers, options.gpus_per_trial / workers
    if workers == 1 and not any(n.get("CPU", 0) >= cpu_each and n.get("GPU", 0) >= gpu_each for n in nodes):
        biggest = max((n.get("CPU", 0), n.get("GPU", 0)) for n in nodes)
        raise SweepError(f"no Ray node has {cpu_each:g} CPUs and {gpu_each:g} GPUs for one trial (the largest has "
                         f"{biggest[0]:g} CPUs, {biggest[1]:g} GPUs): lower --cpus-per-trial/--gpus-per-trial")
    total = ray.cluster_resources()
    trial_cpus = options.cpus_per_trial + (DRIVER_CPUS if workers > 1 else 0)
    if total.get("CPU", 0) < trial_cpus or total.get("GPU", 0) < options.gpus_per_trial:
        raise SweepError(f"the Ray cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs, "
                         f"too few for one trial ({options.cpus_per_trial:g} CPUs, {options.gpus_per_trial:g} GPUs): "
                         "lower --cpus-per-trial/--gpus-per-trial or add nodes")
    fits = int(total.get("CPU", 0) // trial_cpus)
    if options.gpus_per_trial:
        fits = min(fits, int(total.get("GPU", 0) // options.gpus_per_trial))
    return max(1, fits)


def _param_space(space: Space) -> dict[str, Any]:
    from ray import tune

    make = {"uniform": tune.uniform, "loguniform": tune.loguniform,
            "randint": lambda low, high: tune.randint(low, high + 1),  # ours is inclusive, Ray's is not
            "choice": lambda *values: tune.choice(list(values))}
    return {key: make[p.kind](*p.values) for key, p in space.search.items()}


def _trainable(options: SweepOptions, base: dict[str, Any], store: _Store) -> Any:
    from ray import tune

    workers = options.workers()
    settings = TrialSettings(
        base=base, data_dir=options.data_dir, download=options.download, workers=workers,
        cpus_per_worker=options.cpus_per_trial / workers, gpus_per_worker=options.gpus_per_trial / workers,
        max_failures=options.max_failures, storage_path=store.uri, fault_marker=os.environ.get(FAULT_ENV))
    if workers == 1:
        resources = {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}
        fn = _single_process_trial
    else:
        resources = {"cpu": DRIVER_CPUS}  # the workers ask for their own resources
        fn = _multi_worker_trial
    return tune.with_resources(tune.with_parameters(fn, settings=settings), resources)


def _printer(epochs: int, trials: int) -> Any:
    """A Tune callback printing one line per trial event instead of Ray's status tables."""
    from ray.tune import Callback

    class Printer(Callback):
        # Tune pickles its callbacks with the experiment state: the console is made on first use.
        def __getstate__(self) -> dict[str, Any]:
            return {"epochs": self.epochs, "trials": self.trials}

        def __init__(self) -> None:
            self.epochs, self.trials = epochs, trials

        def _print(self, text: str) -> None:
            from rich.console import Console

            Console(stderr=True, soft_wrap=True).print(text)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            self._print(f"[dim]{trial.trial_id}[/] epoch {result.get('epoch')}/{self.epochs}  "
                        f"val digit {100 * result['val_digit_acc']:.2f}%  sum {100 * result['val_sum_acc']:.2f}%  "
                        f"both {100 * result['val_both_acc']:.2f}%  {result['images_per_s']:,.0f} img/s  "
                        f"[dim]({done}/{self.trials} trials done)[/]")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._print(f"[red]{trial.trial_id} failed[/] (retried from its last checkpoint while --max-failures "
                        f"allows; details: {trial.local_path}/error.txt)")

        def on_trial_complete(self, iteration, trials, trial, **info):
            epoch = (trial.last_result or {}).get("epoch", 0)
            verb = "finished" if epoch >= self.epochs else f"stopped early by the scheduler at epoch {epoch}"
            self._print(f"{trial.trial_id} {verb}: {_short(trial.config)}")

    return Printer()


def _short(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def run_sweep(options: SweepOptions, console: Any) -> dict[str, Any]:
    """Run (or resume) a sweep; write the results files; return the summary."""
    require_ray()
    options, space, store = resolve(options)
    from .data import load_mnist, resolve_data_dir

    # Data before Ray: a missing dataset is a one-line error, and the head node downloads it once.
    options.data_dir = os.path.abspath(resolve_data_dir(options.data_dir))
    load_mnist(options.data_dir, download=options.download)

    import ray
    from ray import tune

    # Tiny trials checkpoint often; Ray would warn about its experiment snapshots each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Our callback prints a line per trial epoch; with the legacy engine, verbose=0 means silent
    # (the new one still prints a banner and a TensorBoard hint).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started = _init_ray(options)
    try:
        fits = _check_resources(options)
        concurrent = min(options.max_concurrent or fits, fits)
        base = space.base(TUNE_SMOKE if options.smoke else None)  # every trial's config but the sampled keys
        epochs = TrainConfig.from_dict(base).epochs
        trainable = _trainable(options, base, store)
        if options.resume:
            if not tune.Tuner.can_restore(store.uri):
                raise SweepError(f"--resume: {store.uri} has no Ray experiment state (it stopped before any "
                                 "trial started): start it again under another --name")
            console.print(f"[bold]resuming[/] {store.uri}: finished trials are kept, unfinished ones continue "
                          "from their last checkpoint")
            tuner = tune.Tuner.restore(store.uri, trainable, resume_unfinished=True, resume_errored=True)
        else:
            store.write(SWEEP_FILE, json.dumps({"options": dataclasses.asdict(options), "space": space.to_dict()},
                                               indent=2).encode())
            tuner = tune.Tuner(trainable, param_space=_param_space(space),
                               tune_config=_tune_config(options, epochs, concurrent),
                               run_config=_run_config(options, epochs))
        console.print(f"[bold]sweep[/] {options.num_samples} trials x up to {epochs} epochs, "
                      f"{options.scheduler} + {options.search} search on {options.metric} "
                      f"({concurrent} at a time, {options.workers()} worker(s) each) -> {store.uri}")
        start = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - start
        # Tune returns normally after Ctrl-C; its trial states say whether everything ran.
        statuses = {t.trial_id: t.status for t in getattr(getattr(grid, "_experiment_analysis", None), "trials", [])}
        summary = _write_results(grid, options, list(space.search), base, epochs, store, wall, console, statuses)
        unfinished = summary["unfinished"]
        if unfinished:
            console.print(f"[red]interrupted[/]: {unfinished} of {options.num_samples} trials unfinished; continue with  "
                          f"mnist-addition tune --resume --name {options.name} --storage-path {options.storage_path}")
        return summary
    finally:
        if started or ray.is_initialized():
            ray.shutdown()  # stops a Ray we started; only disconnects from an existing cluster


def _tune_config(options: SweepOptions, epochs: int, concurrent: int) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if options.scheduler == "asha":
        # rungs at 1, 2, 4, ... epochs; the best half of each rung goes on
        scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=1, reduction_factor=2)
    else:
        scheduler = FIFOScheduler()
    if options.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch

            searcher = OptunaSearch(seed=options.seed)
        except (ImportError, AssertionError):
            raise SweepError('--search optuna needs optuna: pip install -e ".[tune]"') from None
        limit = concurrent  # Tune wraps a Searcher in a ConcurrencyLimiter
    else:
        searcher, limit = BasicVariantGenerator(random_state=options.seed, max_concurrent=concurrent), None
    return tune.TuneConfig(metric=options.metric, mode=options.resolved_mode(), scheduler=scheduler,
                           search_alg=searcher, num_samples=options.num_samples, max_concurrent_trials=limit,
                           trial_name_creator=_trial_name, trial_dirname_creator=_trial_name)


def _trial_name(trial: Any) -> str:
    return f"trial-{trial.trial_id}"


def _run_config(options: SweepOptions, epochs: int) -> Any:
    from ray import tune

    return tune.RunConfig(
        name=options.name, storage_path=options.storage_path, verbose=0,
        failure_config=tune.FailureConfig(max_failures=options.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=[_printer(epochs, options.num_samples)])


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

def _write_results(grid: Any, options: SweepOptions, keys: list[str], base: dict[str, Any], epochs: int,
                   store: _Store, wall: float, console: Any, statuses: dict[str, str]) -> dict[str, Any]:
    import csv

    from rich.table import Table

    trials = []
    for result in grid:
        m = result.metrics or {}
        history = result.metrics_dataframe
        curve = [] if history is None or "epoch" not in history else \
            history[["epoch", options.metric]].dropna().to_dict("records")
        trial_id = m.get("trial_id") or Path(result.path).name.removeprefix("trial-")
        if result.error or statuses.get(trial_id) == "ERROR":
            status = "error"
        elif statuses.get(trial_id, "TERMINATED") != "TERMINATED":
            status = "unfinished"  # interrupted: --resume continues it
        else:
            status = "finished" if m.get("epoch", 0) >= epochs else "stopped early"
        trials.append({
            "trial_id": trial_id,
            **{k: result.config.get(k) for k in keys},
            "epochs_run": int(m.get("epoch", 0) or 0),
            "status": status,
            **{k: m.get(k) for k in ("val_digit_acc", "val_sum_acc", "val_both_acc", "val_loss", "images_per_s",
                                     "train_seconds", "processes", "resumed_from_epoch", "node_id")},
            "trial_seconds": m.get("time_total_s"),
            "curve": curve,
        })
    scored = [t for t in trials if t[options.metric] is not None]
    if not scored:
        raise SweepError(f"no trial reported any result (see the error.txt files under {store.uri}): "
                         "fix the cause and run again with --resume")
    reverse = options.resolved_mode() == "max"
    ranked = sorted(scored, key=lambda t: t[options.metric], reverse=reverse)
    best = ranked[0]
    best_config = TrainConfig.from_dict({**base, **{k: best[k] for k in keys}}, source="the best trial")
    best_config = best_config.replace(data_dir=None, output_dir=None)  # say where on the command line

    columns = ["trial_id", *keys, "status", "epochs_run", "val_digit_acc", "val_sum_acc", "val_both_acc",
               "val_loss", "images_per_s", "train_seconds", "trial_seconds", "processes", "resumed_from_epoch",
               "node_id"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(ranked + [t for t in trials if t not in scored])
    store.write(CSV_FILE, text.getvalue().encode())
    store.write(BEST_FILE, (best_config.to_json() + "\n").encode())
    store.write(PLOT_FILE, plot_sweep(trials, keys, options.metric, epochs))

    trained = sum(t["train_seconds"] or 0 for t in trials)
    in_trials = sum(t["trial_seconds"] or 0 for t in trials)
    summary = {"name": options.name, "uri": store.uri, "trials": len(trials), "metric": options.metric,
               "mode": options.resolved_mode(), "best_trial": best["trial_id"],
               "best": {k: best[k] for k in ("val_digit_acc", "val_sum_acc", "val_both_acc", "epochs_run")},
               "best_config": best_config.to_dict(), "wall_seconds": wall, "sum_trial_seconds": in_trials,
               "sum_train_seconds": trained, "epochs_run": sum(t["epochs_run"] for t in trials),
               "finished": sum(t["status"] == "finished" for t in trials),
               "stopped_early": sum(t["status"] == "stopped early" for t in trials),
               "errors": sum(t["status"] == "error" for t in trials)}
    # interrupted trials, and those not yet sampled when the sweep stopped (not in the grid at all)
    summary["unfinished"] = options.num_samples - summary["finished"] - summary["stopped_early"] - summary["errors"]
    store.write(SUMMARY_FILE, json.dumps(summary, indent=2).encode())

    table = Table(title=f"Top trials by {options.metric} (validation; the test set is not used)")
    for col in ("#", "trial", *keys, "epochs", "val digit", "val sum", "val both", "status"):
        table.add_column(col, justify="left" if col in ("trial", "status") else "right")
    for i, t in enumerate(ranked[:options.top], 1):
        table.add_row(str(i), t["trial_id"], *(f"{t[k]:.3g}" if isinstance(t[k], float) else str(t[k]) for k in keys),
                      f"{t['epochs_run']}/{epochs}", *(f"{100 * t[k]:.2f}%" for k in
                                                      ("val_digit_acc", "val_sum_acc", "val_both_acc")), t["status"])
    console.print(table)
    console.print(f"{len(trials)} trials ({summary['finished']} finished, {summary['stopped_early']} stopped early, "
                  f"{summary['errors']} failed), {summary['epochs_run']} epochs in {wall:.0f} s "
                  f"({trained:.0f} s of it training)")
    console.print(f"wrote {CSV_FILE}, {BEST_FILE}, {PLOT_FILE}, {SUMMARY_FILE} to {store.uri}")
    console.print(f"next: mnist-addition train --config {store.where(BEST_FILE)}"
                  f"{' --data-dir ' + options.data_dir if options.data_dir else ''}")
    return summary


def plot_sweep(trials: list[dict[str, Any]], keys: list[str], metric: str, epochs: int) -> bytes:
    """Left: each trial's final score against lr (or the first searched number), coloured by width
    (or the first choice); right: every trial's score per epoch, showing where ASHA stopped it."""
    from .plots import pyplot

    plt = pyplot()
    numeric = [k for k in keys if all(isinstance(t[k], (int, float)) for t in trials)]
    x_key = "lr" if "lr" in keys else (numeric[0] if numeric else None)
    colour_key = "width" if "width" in keys else next((k for k in keys if k != x_key), None)
    shown = [t for t in trials if t[metric] is not None]
    colours = sorted({t[colour_key] for t in shown}, key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0, str(v))) \
        if colour_key else [None]
    cmap = plt.get_cmap("viridis", max(len(colours), 2))
    fig, (ax, curves) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, c in enumerate(colours):
        group = [t for t in shown if colour_key is None or t[colour_key] == c]
        for finished, marker in ((True, "o"), (False, "x")):
            pts = [t for t in group if (t["status"] == "finished") == finished]
            if pts and x_key:
                ax.scatter([t[x_key] for t in pts], [100 * t[metric] for t in pts], color=cmap(i), marker=marker,
                           s=60, label=f"{colour_key}={c}" + ("" if finished else " (stopped)") if colour_key else None)
        for t in group:
            if t["curve"]:
                curves.plot([r["epoch"] for r in t["curve"]], [100 * r[metric] for r in t["curve"]],
                            color=cmap(i), marker="o", ms=3, alpha=0.8)
    if x_key == "lr" or (x_key and all(t[x_key] > 0 for t in shown) and
                         max(t[x_key] for t in shown) / max(min(t[x_key] for t in shown), 1e-12) > 20):
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")  # plain numbers at 1, 2 and 5 x 10^k
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.set_xlabel(x_key or "")
    ax.set_ylabel(f"{metric} at the last epoch run (%)")
    ax.set_title("final score per trial")
    if colour_key:
        ax.legend(fontsize=8)
    curves.set_xlabel("epoch")
    curves.set_ylabel(f"{metric} (%)")
    curves.set_xlim(0.8, epochs + 0.2)
    curves.set_title("per epoch (lines end where the scheduler stopped a trial)")
    values = [100 * t[metric] for t in shown]
    if values and metric != "val_loss":
        top = max(values)
        for axis in (ax, curves):
            axis.set_ylim(max(min(values) - 0.5, top - 10), min(top + 0.3, 100.05))
    for axis in (ax, curves):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


__all__ = ["SweepError", "SweepOptions", "run_sweep", "plot_sweep", "require_ray"]
