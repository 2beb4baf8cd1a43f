"""What runs on a Ray worker: one trial of a sweep.

A trial builds its ``TrainConfig`` from the sampled values, trains it with ``training.run.train``
(the one way into a run, as ``mnist-addition train``) and, after each epoch, reports the validation
metrics together with the checkpoint it has just written, so that ASHA can stop it, a crash is retried from that checkpoint, and an
interrupted sweep can be restored.

The trial writes its run folder locally (Ray's working directory for the trial) and uploads it,
checkpoints left out (Ray stores the reported ones itself), to ``STORAGE/NAME/trial-ID/run`` after
every epoch and at the end: on a cluster whose storage is a bucket, the run folders arrive there
whichever node trained them.

GPUs: Ray makes only the GPUs it assigned to a trial visible to it (``CUDA_VISIBLE_DEVICES``), so
the run trains on that GPU (or that share of one); a trial assigned none is kept off every GPU.
A trial with several workers runs the same ``train`` under Ray Train's ``TorchTrainer`` started from
inside the Tune trial (Ray 2.5x/2.6x: Train V2); Accelerate joins the process group Ray Train made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.config import TrainConfig
from ..rundir.checkpoint import CheckpointError, latest_valid, read_state
from ..rundir.names import CHECKPOINTS, CONTINUED_FROM, SEEDS_STAGED, TRIAL_HUNG, TRIAL_RUN
from ..rundir.seeds import combine, epoch_of, histories, parts, problem, restore_each
from .fencing import Lease, Superseded
from .options import trial_threads
from .storage import Store
from .watchdog import Watchdog, mark_hung


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
    experiment_uri: str  # STORAGE/NAME: run folders, and a multi-worker trial's Ray Train run, go below it
    continues: bool = False  # PBT: a restored checkpoint is continued (maybe another trial's, with new values)
    earlier: tuple = ()  # rebuild.Earlier: the trials of a sweep resumed without Ray's state, to continue
    seeds: int = 1  # the seeds the trial trains its config with (training/seeds.py)
    trial_timeout: float = 0  # seconds without a step or a report before the trial is stopped as hung (watchdog.py)


def trial_dirname(trial_id: str) -> str:
    """A trial's folder in ``STORAGE/NAME`` (Ray's ``trial_dirname_creator`` uses it too)."""
    return f"trial-{trial_id}"


def train_and_report(params: dict[str, Any], settings: TrialSettings, run_dir: Path, upload_as: str,
                     report: Callable[..., None], checkpoint_class: type, restored: Any) -> None:
    """Prepare the run folder (restoring a reported checkpoint), train (``training.run.train``, the
    one way into a run; with ``settings.seeds`` above 1 ``training.seeds.train_seeds``, each seed in
    ``run/seed-<s>``), report each epoch (the mean over the seeds, their spread and worst beside it),
    upload the run.

    ``report``/``checkpoint_class`` are Tune's for a single-process trial and Ray Train's on the
    workers of a multi-worker trial. Where it starts: ``_starting_point``.
    """
    torch = _worker_set_up(settings)
    from ..core.data import load_mnist, make_splits
    from ..training.group import process_state
    from ..training.seeds import over_seeds, train_seeds

    config = TrainConfig.from_dict({**settings.base, **params, "data_dir": settings.data_dir,
                                    "output_dir": str(run_dir)}, source="the sweep")
    process = process_state(config.cpu)  # under Ray Train: joins the process group Ray Train set up
    trial_dir = upload_as.split("/")[0]
    restored, earlier, replay_after = _starting_point(settings, trial_dir, params, checkpoint_class, restored)
    configs, starts, resumed_from = _starts(settings, run_dir, restored, trial_dir, config, earlier, process)
    data = make_splits(load_mnist(settings.data_dir, download=settings.download), config.val_size)
    store = Store(settings.experiment_uri) if process.is_main_process else None
    lease = _lease(store, trial_dir)
    facts = _attempt_facts(process.num_processes, resumed_from, config.epochs, torch.get_num_threads(), earlier)
    newest = _Newest(run_dir, configs, starts)
    watchdog = Watchdog(settings.trial_timeout, _on_hung(settings.trial_timeout, store, lease, trial_dir))

    def send(row: dict[str, Any], upload: bool = True) -> None:
        checkpoint = None
        if store is not None:
            lease.check(f"epoch {row['epoch']}'s run folder and checkpoint")  # a cut-off copy writes nothing
            if upload:
                store.upload(run_dir, upload_as, skip=(CHECKPOINTS,))
            checkpoint = checkpoint_class.from_directory(str(newest()))  # Ray copies it to storage
        with watchdog.paused():  # a report waits for the driver to take it
            report({**row, **facts}, checkpoint=checkpoint)

    def on_epoch(rows: list[dict[str, Any]]) -> None:
        if rows[0]["epoch"] < config.epochs:
            send(over_seeds(rows))

    with watchdog:
        if replay_after is not None:  # epochs Ray's state does not hold, as the scheduler and the searcher saw them
            history = [{**over_seeds(list(rows)), "replayed": True} for rows in zip(*histories(newest()))
                       if rows[0]["epoch"] > replay_after]
            _replay(history, config.epochs, lambda row: report({**row, **facts}), send)
        outcomes = train_seeds(configs, on_epoch, starts=starts, data=data, test="never", progress=False,
                               warn=lambda line: print(line, flush=True), on_checkpoint=newest.written,
                               on_step=watchdog.beat)
        # The last epoch is reported once the run folder is complete (weights, metrics.json, curves):
        # the scheduler ends a trial at its last report, before any code after it runs.
        last = over_seeds([outcome.final["history"][-1] for outcome in outcomes])
        send({**last, "replayed": True} if last["epoch"] <= resumed_from else last)  # (trained before a stop)


def _on_hung(seconds: float, store: Store | None, lease: Lease | None, trial_dir: str) -> Callable[[float, str], None]:
    """What the watchdog does once this attempt hung: say so, with where it was, and (the main
    process, while the lease is its own) write ``hung.json``; the watchdog then ends the process."""
    def on_hung(idle: float, stack: str) -> None:
        print(f"{trial_dir}: no training step and no report for {idle:.0f} s (--trial-timeout {seconds:g}): "
              f"stopping it as hung; it was at\n{stack}", flush=True)
        if store is not None and lease is not None:
            try:
                lease.check(TRIAL_HUNG)
                mark_hung(store, trial_dir, lease.attempt, idle, stack)
            except (Superseded, OSError) as e:
                print(f"{trial_dir}: not marked hung: {e}", flush=True)
    return on_hung


class _Newest:
    """The trial's newest checkpoint: the one its run wrote last (or, none yet, the one it starts
    from); of K seeds, theirs as one folder (``rundir.seeds.combine``) beside the run folder."""

    def __init__(self, run_dir: Path, configs: list[TrainConfig], starts: list[Any]) -> None:
        self.run_dir, self.configs, self.starts = run_dir, configs, starts
        self.paths: list[Path | None] = [None] * len(configs)

    def written(self, index: int, path: Path) -> None:
        self.paths[index] = path

    def _of(self, index: int) -> Path:
        start = self.starts[index]
        return self.paths[index] or (start.checkpoint if not isinstance(start, str) else
                                     latest_valid(Path(self.configs[index].output_dir))[0])

    def __call__(self) -> Path:
        if len(self.configs) == 1:
            return self._of(0)
        return combine({c.seed: self._of(i) for i, c in enumerate(self.configs)}, self.run_dir.parent / SEEDS_STAGED)


def _starts(settings: TrialSettings, run_dir: Path, restored: Any, trial_dir: str, config: TrainConfig,
            earlier: str | None, process: Any) -> tuple[list[TrainConfig], list[Any], int]:
    """Each seed's config and ``start``, and the epoch the trial resumes after (0: a fresh start)."""
    from ..training.seeds import seed_configs

    configs = seed_configs(config, settings.seeds, str(run_dir)) if settings.seeds > 1 else [config]
    if settings.continues and restored is not None:
        configs, starts = _prepare_continuation(run_dir, restored, trial_dir, configs, own=earlier is not None)
        return configs, starts, epoch_of(starts[0].checkpoint)
    resumed_from = _prepare_run_dir(run_dir, restored, process)
    return configs, ["resume" if restored is not None else "new"] * len(configs), resumed_from


def _attempt_facts(processes: int, resumed_from: int, epochs: int, threads: int, earlier: str | None) -> dict[str, Any]:
    """What each report of this attempt carries beside its metrics (columns of trials.csv)."""
    import ray

    return {"processes": processes, "resumed_from_epoch": resumed_from, "budget_epochs": epochs, "threads": threads,
            "node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": ",".join(map(str, ray.get_gpu_ids())),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "continued_from": earlier}


def _lease(store: Store | None, trial_dir: str) -> Lease | None:
    """This attempt's claim on the trial's folder, taken now (the main process's: it alone writes)."""
    import ray

    if store is None:
        return None
    context = ray.get_runtime_context()
    lease = Lease(store, trial_dir, context.gcs_address, ray.util.get_node_ip_address())
    lease.take()
    return lease


def _starting_point(settings: TrialSettings, trial_dir: str, params: dict[str, Any], checkpoint_class: type,
                    restored: Any) -> tuple[Any, str | None, int | None]:
    """The checkpoint a trial starts from, the earlier trial it continues (or None), and after which
    epoch it reports again the epochs that checkpoint holds (None: none to report).

    * A trial Ray restored may have reported a newer checkpoint than Ray's saved state knows (the
      driver killed between the report and Ray's save), or one where Ray's state knows none: it
      starts from that one, and reports the epochs in between, so that no trained epoch is lost.
    * In a sweep resumed without Ray's state, a trial with no checkpoint continues the earlier trial
      with its values (``rebuild``): all of that trial's epochs are reported again.
    """
    if settings.workers > 1:
        return restored, None, None  # Ray Train keeps its own checkpoints and state
    if restored is None:
        own = _newest_valid(settings, trial_dir, checkpoint_class, after="")
        if own is not None:
            print(f"{own[0].path}: a checkpoint of this trial that Ray's state does not name: continuing from it",
                  flush=True)
            return own[0], None, 0
        if not settings.earlier:
            return None, None, None
        adopted, earlier = _earlier_checkpoint(settings, trial_dir, params, checkpoint_class)
        return adopted, earlier, 0 if adopted is not None else None
    if settings.continues:
        return restored, None, None  # PBT's may be another trial's checkpoint: Ray's choice stands
    with restored.as_directory() as folder:
        epoch = epoch_of(folder)
    newer = _newest_valid(settings, trial_dir, checkpoint_class, after=Path(restored.path).name)
    if newer is None or newer[1] <= epoch:
        return restored, None, None
    print(f"{newer[0].path} is newer than the checkpoint Ray's state names (epoch {newer[1]}, not {epoch}): "
          "continuing from it", flush=True)
    return newer[0], None, epoch


def _newest_valid(settings: TrialSettings, trial_dir: str, checkpoint_class: type,
                  after: str) -> tuple[Any, int] | None:
    """The newest valid checkpoint Ray stored for this trial after the one named ``after``, and its epoch."""
    import pyarrow.fs

    store = Store(settings.experiment_uri)
    found = store.fs.get_file_info(pyarrow.fs.FileSelector(f"{store.root}/{trial_dir}", allow_not_found=True))
    names = sorted((Path(i.path).name for i in found if i.type == pyarrow.fs.FileType.Directory
                    and Path(i.path).name.startswith("checkpoint_") and Path(i.path).name > after), reverse=True)
    return _first_valid(settings, [f"{trial_dir}/{name}" for name in names], checkpoint_class)


def _first_valid(settings: TrialSettings, relpaths: list[str], checkpoint_class: type) -> tuple[Any, int] | None:
    """The first of these checkpoint folders of the sweep (newest first) whose files match their
    manifest and whose state reads, as Ray's Checkpoint, and its epoch; one damaged, half-written as
    the driver died, or gone is passed over."""
    for relpath in relpaths:
        candidate = checkpoint_class(path=f"{settings.experiment_uri}/{relpath}")
        try:
            with candidate.as_directory() as folder:
                if problem(Path(folder)) is None:  # each seed's, of a K-seed trial
                    return candidate, epoch_of(folder)
        except (OSError, CheckpointError):
            pass
        print(f"checkpoint {relpath} is not usable: trying the one before it", flush=True)
    return None


def _replay(history: list[dict[str, Any]], epochs: int, report: Callable[[dict[str, Any]], None],
            send: Callable[..., None]) -> None:
    """Report an earlier trial's epochs again, the last one with its checkpoint (unless it was the
    trial's last epoch: ``train_and_report`` reports that one once the run folder is complete)."""
    for row in history[:-1]:
        report(row)
    if history[-1]["epoch"] < epochs:
        send(history[-1], upload=False)


def _worker_set_up(settings: TrialSettings) -> Any:
    """Quiet Ray's and Accelerate's loggers, keep a trial without GPUs off them, and compute with the
    CPUs Ray reserved; returns torch (imported here, after CUDA_VISIBLE_DEVICES is set)."""
    import ray

    for name in ("ray", "ray.train", "ray.tune", "accelerate"):  # not several lines per saved checkpoint
        logging.getLogger(name).setLevel(logging.WARNING)
    if not ray.get_gpu_ids():  # Ray sets no CUDA_VISIBLE_DEVICES for a trial without GPUs: hide them all
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    # As many threads as CPUs reserved, whatever OMP_NUM_THREADS says (Ray sets it only when unset).
    torch.set_num_threads(trial_threads(settings.cpus_per_worker))
    return torch


def _earlier_checkpoint(settings: TrialSettings, trial_dir: str, params: dict[str, Any],
                        checkpoint_class: type) -> tuple[Any, str | None]:
    """The newest valid checkpoint of the earlier trial this one continues (``rebuild.match``) as
    Ray's Checkpoint, and that trial's folder; (None, None) if there is none."""
    from .rebuild import match

    earlier = match(list(settings.earlier), trial_dir.removeprefix("trial-"), params, by_index_only=settings.continues)
    found = _first_valid(settings, list(earlier.checkpoints), checkpoint_class) if earlier else None
    return (found[0], earlier.folder) if found else (None, None)


def _prepare_run_dir(run_dir: Path, restored: Any, process: Any) -> int:
    """A fresh run folder holding the checkpoint Ray handed back, if any; returns its epoch (0: none)."""
    with restored.as_directory() if restored is not None else contextlib.nullcontext() as src:
        if process.is_local_main_process:  # one copy per node
            shutil.rmtree(run_dir, ignore_errors=True)  # a previous attempt's leftovers: the reported checkpoint rules
            run_dir.mkdir(parents=True)
            if src:
                restore_each(run_dir, src)  # each seed's into its run/seed-<s>, of a K-seed trial
        process.wait_for_everyone()
        return epoch_of(src) if src else 0


def _prepare_continuation(run_dir: Path, restored: Any, trial_dir: str, configs: list[TrainConfig],
                          own: bool = False) -> tuple[list[TrainConfig], list[Any]]:
    """PBT: a fresh run folder, the checkpoint Ray handed back copied beside it, and for each seed
    the config that continues its part (``hparams.continued``: the copied run's past, this trial's
    values from the next epoch on) and its ``Continuation``. The checkpoint is another trial's after
    an exploit (recorded as ``weights_from``), or this trial's own after a pause or a retry, or
    (``own``) its earlier self's in a rebuilt sweep (nothing to record)."""
    from ..core.hparams import continued
    from ..training.start import Continuation

    copy = run_dir.parent / CONTINUED_FROM
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(copy, ignore_errors=True)
    run_dir.mkdir(parents=True)
    with restored.as_directory() as src:
        shutil.copytree(src, copy, symlinks=True)
    source = Path(restored.path).parent.name
    copied = parts(copy)
    continued_configs, starts = [], []
    for config in configs:
        part = copied.get(config.seed if len(configs) > 1 else None)
        if part is None:
            raise CheckpointError(f"{restored.path} holds no checkpoint of seed {config.seed}")
        saved = read_state(part)
        continued_configs.append(continued(config, saved["schedule"], saved["epoch"]))
        starts.append(Continuation(part, None if own or source == trial_dir else source))
    return continued_configs, starts


def staging_dir(trial_dir: str) -> Path:
    """Where a trial writes its run folder before uploading it: Ray's working directory for the
    trial (Ray moves each trial there unless RAY_CHDIR_TO_TRIAL_DIR=0), else a temporary folder."""
    cwd = Path.cwd()
    return (cwd if cwd.name == trial_dir else Path(tempfile.gettempdir()) / "mnist-addition-trials" / trial_dir) / TRIAL_RUN


def run_trial(params: dict[str, Any], settings: TrialSettings) -> None:
    """The Tune function: one trial, trained here or by a data-parallel TorchTrainer."""
    import ray.tune

    context = ray.tune.get_context()
    trial_dir = trial_dirname(context.get_trial_id())
    if settings.workers > 1:
        return _run_multi_worker(params, settings, trial_dir)
    train_and_report(params, settings, staging_dir(trial_dir), f"{trial_dir}/{TRIAL_RUN}",
                     ray.tune.report, ray.tune.Checkpoint, ray.tune.get_checkpoint())


def worker_loop(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker of a multi-worker trial."""
    import ray.train

    train_and_report(loop_config["params"], loop_config["settings"], Path(loop_config["run_dir"]),
                     loop_config["upload_as"], ray.train.report, ray.train.Checkpoint, ray.train.get_checkpoint())


def _run_multi_worker(params: dict[str, Any], settings: TrialSettings, trial_dir: str) -> None:
    """A Tune trial that drives a data-parallel TorchTrainer (Ray's Train-inside-Tune pattern)."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    resources = {"CPU": settings.cpus_per_worker}
    if settings.gpus_per_worker:
        resources["GPU"] = settings.gpus_per_worker
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"params": params, "settings": settings, "run_dir": str(staging_dir(trial_dir)),
                           "upload_as": f"{trial_dir}/{TRIAL_RUN}"},
        scaling_config=ray.train.ScalingConfig(num_workers=settings.workers, use_gpu=settings.gpus_per_worker > 0,
                                               resources_per_worker=resources),
        # The same name on a retry: Ray Train then resumes from this run's latest checkpoint.
        run_config=ray.train.RunConfig(
            name=f"train-{ray.tune.get_context().get_trial_id()}", storage_path=settings.experiment_uri,
            # Bounded, unlike Ray's default (-1): a worker group that cannot start (its resources
            # never freed: seen once in CI after a crash) fails the trial after (K+1) x 60 s, and
            # Tune retries it, instead of the controller retrying forever.
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures,
                                                   controller_failure_limit=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=[TuneReportCallback()]),
    )
    trainer.fit()
