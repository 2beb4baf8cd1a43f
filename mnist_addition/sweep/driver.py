"""The sweep driver: ``mnist-addition tune``. Checks everything it can before Ray starts, then runs
Ray Tune (scheduler, search, resources, resume) over ``trial.run_trial`` and hands the ResultGrid to
``results``. Ray is imported lazily, inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Any, Iterator

from ..core.config import ConfigError, TrainConfig, check_batch, smoke_overrides
from ..core.errors import first_line
from ..core.hparams import SCHEDULED
from ..rundir.names import SWEEP_FILE, TUNER_FILE, UNVERIFIED
from . import pbt, rebuild, trackers, trial
from .folder import Sweep, open_sweep, write_sweep_json
from .grow import growing
from .interrupts import Interrupts
from .options import DRIVER_CPUS, SweepError, SweepOptions, gpu_share
from .results import FINISHED, ended_status, score_metric, trial_rows, write_results
from .spaces import Space
from .storage import Store
from .trust import Signer
from .warm import Prior, load_prior
from .watchdog import hang_of


def require_ray() -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.tune") is None:
        raise SweepError('Ray Tune is not installed: pip install -e ".[tune]" (or pip install "ray[tune]")')


def check_against_data(space: Space, base: dict[str, Any], train_file_images: int, workers: int) -> None:
    """Refuse, before Ray starts, a space whose trials ``fit`` would refuse once it sees the data
    (a batch larger than the training split, or one the workers cannot split evenly)."""
    for values, config in space.extreme_configs(base):
        n_train = train_file_images - config.val_size
        if config.train_limit:
            n_train = min(n_train, config.train_limit)
        try:
            if config.val_size == 0:
                raise ConfigError("val_size 0 leaves no validation split, and a sweep ranks its trials on "
                                  "validation: sweep with one (e.g. 5000), then refit the winner with "
                                  "train --config best_config.json --val-size 0")
            if n_train < 1:
                raise ConfigError(f"--val-size {config.val_size} leaves no training images (the training file has "
                                  f"{train_file_images}): use a smaller value")
            check_batch(config, n_train, workers)
        except ConfigError as e:
            where = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise SweepError(f"search space {space.path}: a trial with {where} would fail: {e}") from None


def run_sweep(options: SweepOptions, console: Any) -> dict[str, Any]:
    """Run (or resume) a sweep; write the results files; return the summary. Stopped by Ctrl-C or
    SIGTERM, it writes what the trials did so far and raises ``SweepStopped`` naming the command
    that continues it (``interrupts``)."""
    require_ray()
    sweep = open_sweep(options)
    try:
        with Interrupts(sweep.resume_command()) as interrupts:
            return _run(sweep, console, interrupts)
    finally:
        sweep.close()


def _trials_base(options: SweepOptions, space: Space) -> tuple[dict[str, Any], int, int]:
    """Every trial's config but its sampled keys, its own epochs and the most epochs a trial can get,
    checked against the scheduler and the data: all before Ray starts."""
    # --smoke (TrainConfig's sweep_smoke values: little data, 2 epochs so that ASHA has something to
    # decide); the space's own searched keys still win
    base = space.base(smoke_overrides(sweep=True) if options.smoke else None)
    if options.scheduler == "pbt":
        pbt.check(options, space, base, TrainConfig.from_dict(base).epochs)
        base = {**base, "schedule": "constant"}  # the lr PBT perturbs is the one training uses (pbt.py)
    _load_and_check_data(options, space, base)
    base_epochs = TrainConfig.from_dict(base).epochs
    max_epochs = space.largest("epochs", base_epochs)
    if options.scheduler == "asha" and options.grace_epochs > max_epochs:
        raise SweepError(f"--grace-epochs {options.grace_epochs} is more than the {max_epochs} epochs a trial can get: "
                         "lower it, or use --scheduler fifo")
    return base, base_epochs, max_epochs


def _run(sweep: Sweep, console: Any, interrupts: Interrupts) -> dict[str, Any]:
    options, space = sweep.options, sweep.space
    base, base_epochs, max_epochs = _trials_base(options, space)
    prior = load_prior(options.warm_start, space, base, options.metric) if options.warm_start else None
    if prior is not None:
        console.print(prior.line(options.warm_start))

    import ray

    from .signing import Saves, activate

    # Tiny trials checkpoint often; Ray would warn about its experiment snapshots each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Our callback prints a line per trial epoch; with the legacy engine, verbose=0 means silent
    # (the new one still prints a banner and a TensorBoard hint).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # A failed trial is one line of ours naming its error.txt (the traceback is there), not Tune's
    # traceback on the console, nor Ray's again for a trial that failed as the sweep stopped.
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(
        lambda record: not record.getMessage().startswith("Trial task failed for trial"))
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    # a trial stopped before its first report has no results yet: normal after a stop, not Ray's warning
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    started = _init_ray(options)
    interrupts.reinstall()
    saves = Saves(sweep.signer)
    activate(saves)
    try:
        if options.gpus_per_trial is None:  # fill the cluster's GPUs, if it has any
            total = ray.cluster_resources()
            options.gpus_per_trial = gpu_share(total.get("CPU", 0), total.get("GPU", 0), options.cpus_per_trial)
        fits = _check_resources(options)
        concurrent = min(options.max_concurrent or fits, fits)
        tuner = _tuner(sweep, base, max_epochs, concurrent, console, prior)
        console.print(_banner(options, max_epochs, concurrent, sweep.store.uri))
        start = time.perf_counter()
        with _storage_failures(sweep):
            interrupts.in_tune = True
            interrupts.start_budget(options.time_budget)
            try:
                with growing(options.num_samples) if sweep.grown_from else contextlib.nullcontext():
                    grid = tuner.fit()
            finally:
                interrupts.in_tune = False
            rows = _rows(sweep, grid, saves.statuses if interrupts.stopped or interrupts.budget_spent else None,
                         base_epochs)
            summary = write_results(rows, options, list(space.search), base, max_epochs, sweep.store,
                                    time.perf_counter() - start, console, interrupted=interrupts.name() or None)
        return _closing(sweep, summary, interrupts, console)
    finally:
        activate(None)
        if started or ray.is_initialized():
            ray.shutdown()  # stops a Ray we started; only disconnects from an existing cluster


def _closing(sweep: Sweep, summary: dict[str, Any], interrupts: Interrupts, console: Any) -> dict[str, Any]:
    """The sweep's last line when trials are left: stopped by a signal (``SweepStopped``), by the
    time budget (exit 0) or interrupted otherwise, each with the command that continues."""
    options = sweep.options
    if interrupts.stopped:
        raise interrupts.stop(f"{summary['unfinished']} of {options.num_samples} trials unfinished, each "
                              "continues from its last checkpoint (no best_config.json until the sweep ends)")
    if summary["unfinished"]:
        spent = f"the time budget of {options.time_budget:g} s is spent" if interrupts.budget_spent else \
            "[red]interrupted[/]"
        summary["time_budget_spent"] = interrupts.budget_spent  # ended as asked: exit 0
        console.print(f"{spent}: {summary['unfinished']} of {options.num_samples} trials unfinished (each continues "
                      f"from its last checkpoint); continue with  {sweep.resume_command()}")
    return summary


def _rows(sweep: Sweep, grid: Any, saved: dict[str, str] | None, base_epochs: int) -> list[dict[str, Any]]:
    """The trials of Tune's ResultGrid as rows (``results.trial_rows``). ``saved``: their statuses
    in Tune's state as last saved, for a sweep that was stopped (Tune marks the trials it stops
    TERMINATED: that state says otherwise)."""
    options = sweep.options
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    statuses = saved if saved is not None else {t.trial_id: t.status for t in trials}
    hangs = {t.trial_id: hang_of(sweep.store, trial.trial_dirname(t.trial_id)) for t in trials} \
        if options.trial_timeout else None
    return trial_rows(grid, score_metric(options.metric), list(sweep.space.search), base_epochs, statuses,
                      {t.trial_id: t.config for t in trials}, hangs)


def _banner(options: SweepOptions, max_epochs: int, concurrent: int, uri: str) -> str:
    """The sweep's first line: what runs, how it searches, how many at a time, where to."""
    gpus = f", {options.gpus_per_trial:g} GPU" if options.gpus_per_trial else ""
    prunes = f" ({options.scheduler} prunes on {options.primary})" if len(options.metric) > 1 and \
        options.scheduler == "asha" else ""
    return (f"[bold]sweep[/] {options.num_samples} trials x up to {max_epochs} epochs, {options.scheduler} + "
            f"{options.search} search on {' and '.join(options.metric)}{prunes} ({concurrent} at a time, "
            f"{options.workers()} worker(s) and {options.cpus_per_trial:g} CPU{gpus} each) -> {uri}")


@contextlib.contextmanager
def _storage_failures(sweep: Sweep) -> Iterator[None]:
    """The sweep folder that cannot be written (a full disk, a read-only mount), whether we or Ray
    found out: one line, and the command that continues once there is room."""
    try:
        yield
    except (OSError, EOFError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e, 100)
        raise SweepError(f"cannot write the sweep folder {sweep.store.uri} ({why}): free some space (or choose another "
                         f"--storage-path for a new sweep), then continue with  {sweep.resume_command()}") from None


def _load_and_check_data(options: SweepOptions, space: Space, base: dict[str, Any]) -> None:
    """Data before Ray: a missing dataset is a one-line error, the head node downloads it once,
    and the space is checked against the training split's size."""
    from ..core.data import load_mnist, resolve_data_dir

    options.data_dir = os.path.abspath(resolve_data_dir(options.data_dir))
    mnist = load_mnist(options.data_dir, download=options.download)
    check_against_data(space, base, len(mnist.train_labels), options.workers())


def _tuner(sweep: Sweep, base: dict[str, Any], max_epochs: int, concurrent: int, console: Any,
           prior: Prior | None = None) -> Any:
    """A new Tuner (saving and signing sweep.json and Ray's tuner.pkl first), the interrupted one
    restored from storage (whose files ``Signer.verified`` checked), or, when that state cannot be
    trusted or is not all there, a new one that continues the earlier trials (``rebuild``)."""
    from ray import tune

    options, space, store, signer = sweep.options, sweep.space, sweep.store, sweep.signer
    earlier: list[rebuild.Earlier] = []
    if sweep.grown_from:
        console.print(f"[bold]growing[/] {store.uri} from {sweep.grown_from} to {options.num_samples} trials: the "
                      f"{options.search} searcher goes on from the trials so far, ranked with the new ones")
    if options.resume:
        if _restorable(store, signer):
            console.print(f"[bold]resuming[/] {store.uri}: finished trials are kept, unfinished ones continue "
                          "from their last checkpoint")
            # the restored run config (tuner.pkl) holds the SignState callback: it signs with the active signer
            return tune.Tuner.restore(store.uri, _trainable(options, base, store), resume_unfinished=True,
                                      resume_errored=True)
        why = (f"{signer.unverified[0]}{f' and {len(signer.unverified) - 1} more' if len(signer.unverified) > 1 else ''}"
               " not signed by your key (written as the sweep was stopped, or changed since)") if signer.unverified \
            else "incomplete (the sweep was stopped before Ray saved it)"
        moved = rebuild.set_aside(store, signer)
        earlier = rebuild.earlier_trials(store, list(space.search))
        console.print(f"[yellow]resuming without Ray's saved state[/]: it is {why}; it is never loaded "
                      f"({len(moved)} file(s) moved to {store.where(UNVERIFIED)}); the sweep starts again from "
                      f"{SWEEP_FILE}, and {len(earlier)} earlier trial(s) continue from their checkpoints")
    else:
        write_sweep_json(store, signer, {"options": dataclasses.asdict(options), "space": space.to_dict()})
    tuner = tune.Tuner(_trainable(options, base, store, tuple(earlier)), param_space=_param_space(space),
                       tune_config=_tune_config(options, space, max_epochs, concurrent, prior),
                       run_config=_run_config(options, store.uri, max_epochs))
    signer.sign_stored(TUNER_FILE)  # tuner.pkl, which Ray wrote straight into the storage
    signer.save()
    return tuner


def _restorable(store: Store, signer: Signer) -> bool:
    """Ray's state is all there (its Tuner and an experiment state) and all signed by this user."""
    top = {relpath for relpath, _ in store.walk() if "/" not in relpath}
    return not signer.unverified and TUNER_FILE in top and any(
        p.startswith("experiment_state-") and p.endswith(".json") for p in top)


def _init_ray(options: SweepOptions) -> bool:
    """Connect to --address/RAY_ADDRESS, or start a small local Ray. Returns True if we started it."""

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
            if _refused_token(e):
                raise SweepError(f"the Ray cluster at {address} uses token authentication and refused this client's "
                                 "token (or none was given): set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH to the "
                                 "file holding the cluster's token (docs/sweeps.md, 'A cluster of machines')") from None
            raise SweepError(f"cannot connect to a Ray cluster at {address} ({first_line(e)}): "
                             "start one with 'ray start --head', or drop --address to run locally") from None
        return False
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=options.dashboard,
             dashboard_host="127.0.0.1", object_store_memory=200 * 1024**2, **quiet)
    return True


def _refused_token(error: BaseException | None) -> bool:
    """Whether Ray's connection error (or one it was raised from) is the cluster refusing the token."""
    while error is not None:
        if "InvalidAuthToken" in str(error) or "Unauthenticated" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


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
    gpus = options.gpus_per_trial or 0.0
    cpu_each, gpu_each = options.cpus_per_trial / workers, gpus / workers
    if workers == 1 and not any(n.get("CPU", 0) >= cpu_each and n.get("GPU", 0) >= gpu_each for n in nodes):
        biggest = max((n.get("CPU", 0), n.get("GPU", 0)) for n in nodes)
        raise SweepError(f"no Ray node has {cpu_each:g} CPUs and {gpu_each:g} GPUs for one trial (the largest has "
                         f"{biggest[0]:g} CPUs, {biggest[1]:g} GPUs): lower --cpus-per-trial/--gpus-per-trial")
    total = ray.cluster_resources()
    trial_cpus = options.cpus_per_trial + (DRIVER_CPUS if workers > 1 else 0)
    if total.get("CPU", 0) < trial_cpus or total.get("GPU", 0) < gpus:
        raise SweepError(f"the Ray cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs, "
                         f"too few for one trial ({options.cpus_per_trial:g} CPUs, {gpus:g} GPUs): "
                         "lower --cpus-per-trial/--gpus-per-trial or add nodes")
    fits = int(total.get("CPU", 0) // trial_cpus)
    if gpus:  # 1e-9: 4 x 0.25 GPUs fit on one GPU whatever the float rounding
        fits = min(fits, int(total.get("GPU", 0) / gpus + 1e-9))
    return max(1, fits)


def _param_space(space: Space) -> dict[str, Any]:
    from ray import tune

    make = {"uniform": tune.uniform, "loguniform": tune.loguniform,
            "randint": lambda low, high: tune.randint(low, high + 1),  # ours is inclusive, Ray's is not
            "choice": lambda *values: tune.choice(list(values))}
    return {key: make[p.kind](*p.values) for key, p in space.search.items()}


def _trainable(options: SweepOptions, base: dict[str, Any], store: Store, earlier: tuple = ()) -> Any:
    from ray import tune

    workers = options.workers()
    gpus = options.gpus_per_trial or 0.0
    settings = trial.TrialSettings(
        base=base, data_dir=options.data_dir, download=options.download, workers=workers,
        cpus_per_worker=options.cpus_per_trial / workers, gpus_per_worker=gpus / workers,
        max_failures=options.max_failures, experiment_uri=store.uri, continues=options.scheduler == "pbt",
        earlier=earlier, seeds=options.seeds or 1, trial_timeout=options.trial_timeout)
    if workers == 1:
        resources = {"cpu": options.cpus_per_trial, "gpu": gpus}
    else:
        resources = {"cpu": DRIVER_CPUS}  # the workers ask for their own resources
    # trial.run_trial is looked up now, not bound at import: a test may wrap it (fault injection)
    return tune.with_resources(tune.with_parameters(trial.run_trial, settings=settings), resources)


def _printer(trials: int, store_uri: str) -> Any:
    """A Tune callback printing one line per trial event instead of Ray's status tables."""
    from ray.tune import Callback

    class Printer(Callback):
        # Tune pickles its callbacks with the experiment state: the console is made on first use.
        def __getstate__(self) -> dict[str, Any]:
            return {"trials": self.trials, "uri": self.uri}

        def __init__(self) -> None:
            self.trials, self.uri = trials, store_uri

        def _hung(self, trial: Any) -> str:
            """ hung: ... when --trial-timeout stopped the trial's latest attempt, else "" """
            if not getattr(self, "uri", None) or not hang_of(Store(self.uri), _trial_dir(trial))[1]:
                return ""
            return (" hung: no training step and no report within --trial-timeout; where it was: "
                    f"{_trial_dir(trial)}/hung.json")

        def on_trial_recover(self, iteration, trials, trial, **info):
            self._print(f"[yellow]{trial.trial_id} failed{self._hung(trial)}[/] (retrying it from its last checkpoint)")

        def _print(self, text: str) -> None:
            from rich.console import Console

            Console(stderr=True, soft_wrap=True).print(text)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            total = max(self.trials, len(trials))  # a grown sweep has more than it was made with
            # epochs reported again from a checkpoint Ray's state did not know (trial.py's _starting_point)
            earlier = result.get("continued_from")
            replayed = (f" (trained by {earlier})" if earlier else " (trained before the stop)") \
                if result.get("replayed") else ""
            self._print(f"[dim]{trial.trial_id}[/] epoch {result.get('epoch')}/{result.get('budget_epochs')}  "
                        f"val digit {100 * result['val_digit_acc']:.2f}%  sum {100 * result['val_sum_acc']:.2f}%  "
                        f"both {100 * result['val_both_acc']:.2f}%{_spread(result)}  {result['images_per_s']:,.0f} "
                        f"img/s{replayed}  "
                        f"[dim]({done}/{total} trials done)[/]")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._print(f"[red]{trial.trial_id} failed{self._hung(trial)}[/] (no --max-failures retries left; "
                        f"details: {trial.local_path}/error.txt)")

        def on_trial_complete(self, iteration, trials, trial, **info):
            ended = ended_status(trial.last_result)
            verb = "finished" if ended["status"] == FINISHED else \
                f"stopped early by the scheduler at epoch {ended['epochs_run']} of {ended['budget_epochs']}"
            self._print(f"{trial.trial_id} {verb}: {_short(trial.config)}")

    return Printer()


def _spread(result: dict[str, Any]) -> str:
    """A K-seed trial's epoch: the spread of its seeds and the worst one (nothing for one seed)."""
    if "val_both_acc_std" not in result:
        return ""
    return (f" ± {100 * result['val_both_acc_std']:.2f} (worst of {result['seeds']} seeds "
            f"{100 * result['val_both_acc_min']:.2f}%)")


def _short(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _tune_config(options: SweepOptions, space: Space, max_epochs: int, concurrent: int,
                 prior: Prior | None = None) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    single = len(options.metric) == 1
    if options.scheduler == "asha":
        # Rungs at g, 2g, 4g, ... epochs (g = --grace-epochs); the best half of each rung goes on.
        # max_t is the most epochs any trial can be given: one whose own (searched) epochs are
        # fewer ends by itself.
        # Several metrics: ASHA compares trials on one number, the first --metric (it is told it
        # itself; Tune's own metric stays unset, as a multi-objective searcher needs).
        scheduler = ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=options.grace_epochs,
                                  reduction_factor=2, **({} if single else {"metric": options.primary,
                                                                            "mode": options.resolved_mode()}))
    elif options.scheduler == "pbt":
        scheduler = pbt.scheduler(options, space, {k: v for k, v in _param_space(space).items() if k in SCHEDULED})
    else:
        scheduler = FIFOScheduler()
    if options.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch

            # several metrics: Optuna's multi-objective sampling (metric and mode lists)
            kwargs = {} if single else {"metric": list(options.metric), "mode": list(options.modes())}
            if prior is not None:
                from .warm_search import WarmOptunaSearch

                searcher = WarmOptunaSearch(prior, seed=options.seed, **kwargs)
            else:
                searcher = OptunaSearch(seed=options.seed, **kwargs)
        except (ImportError, AssertionError):
            raise SweepError('--search optuna needs optuna: pip install -e ".[tune]"') from None
        limit = concurrent  # Tune wraps a Searcher in a ConcurrencyLimiter
    else:
        # PBT: the whole population exists from the start (a paused member must not keep the next one
        # from being sampled); the resources decide how many train at once
        searcher = BasicVariantGenerator(random_state=options.seed,
                                         max_concurrent=0 if options.scheduler == "pbt" else concurrent)
        limit = None
    metric, mode = (options.primary, options.resolved_mode()) if single else (None, None)
    # A trial's actor is reused by the next trial (one process started per slot, not per trial, and
    # none per PBT pause): a 1-process trial sets everything it uses at its start (trial.py).
    return tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler,
                           search_alg=searcher, num_samples=options.num_samples, max_concurrent_trials=limit,
                           trial_name_creator=_trial_dir, trial_dirname_creator=_trial_dir,
                           reuse_actors=options.workers() == 1)


def _trial_dir(t: Any) -> str:
    return trial.trial_dirname(t.trial_id)


def _run_config(options: SweepOptions, store_uri: str, max_epochs: int) -> Any:
    from ray import tune

    from .signing import SignState

    return tune.RunConfig(
        name=options.name, storage_path=options.storage_path, verbose=0,
        # PBT: a trial ends at its last epoch's report, before the scheduler could perturb it there
        # (a copy with nothing left to train would only duplicate its donor)
        stop={"epoch": max_epochs} if options.scheduler == "pbt" else None,
        failure_config=tune.FailureConfig(max_failures=options.max_failures),
        # PBT: a trial may copy any member's checkpoint at a perturbation, even after that member
        # trained on (a synchronous population takes turns on a small machine): keep them all
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None if options.scheduler == "pbt" else 1),
        callbacks=[_printer(options.num_samples, store_uri), SignState(), *trackers.callbacks(options.log_with, options.name, store_uri)])
