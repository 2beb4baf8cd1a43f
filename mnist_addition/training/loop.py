"""The training loop, ``fit``: the only core module that imports Accelerate.

``fit(config, report)`` trains, validates every epoch, tests once at the end and returns the final
metrics. The same code runs as one CPU process, on one GPU, or data-parallel under
``accelerate launch``: ``--batch-size`` is the global batch, and each process takes an equal
shard of every global batch, so the learning rate needs no rescaling.

``fit`` reads top to bottom: set-up (``setup``: accelerator, data on the device, model,
optimizer, the step; ``open_run_folder``; ``start_state``: fresh or from a checkpoint), then for
each epoch and step the optimizer step (``step.train_step``), the progress bar and the checkpoint
decision (``checkpointer.Checkpointer``), and at each epoch's end evaluation, the metrics row, the
epoch's checkpoint and ``report(row)``; then ``finish`` (test set, weights, pictures, metrics.json).
The hot loop never waits for the host: batches are slices of tensors already on the device, the
learning rate is a pure function of the step, and ``.item()`` runs only at log intervals.

Callbacks are the seams: ``report(row)`` after every epoch, ``on_checkpoint(path)`` after every
checkpoint. Tests that inject faults replace public functions that ``fit`` calls through their
modules (``step.train_step``, ``step.lr_schedule``, ``backends.free_memory``,
``pictures.write_pictures``, ``checkpoint.prune``), never names inside this one.
"""

from __future__ import annotations

import contextlib
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list, set_seed

from ..core import backends, hparams
from ..core.average import WeightAverage
from ..core.backends import is_out_of_memory, numerics, resolve_mixed_precision, synchronize, use_cpu
from ..core.config import ConfigError, TrainConfig, check_batch, check_model_fits
from ..core.data import PairedMnist, Split, load_mnist, make_splits, steps_per_epoch, train_batches
from ..core.errors import Interrupted, UserError
from ..core.evaluation import evaluate_counts
from ..core.metrics import summarize
from ..core.model import build_model, count_parameters, parameter_count
from ..rundir import checkpoint, pictures
from ..rundir import contents as runs
from ..rundir.folder import FINISHED, RunFolder, check_run_dir, describe
from ..rundir.names import STATUS
from . import step, stores
from . import trackers as tracking
from .checkpointer import Checkpointer, TrainingDiverged
from .faults import PeerLost, Preempted, StopSignal, join_restarted_group, peers_explained
from .progress import Progress
from .resume import auto_resume_mode, check_resume
from .state import Run, TrainState

__all__ = ["Continuation", "fit", "prepare", "process_state", "resolve_mixed_precision", "TrainingDiverged", "TrainState"]

Report = Callable[[dict[str, Any]], None]


# ------------------------------------------------------------------------------------------------
# Set-up
# ------------------------------------------------------------------------------------------------
def process_state(cpu: bool = False, timeout: int | None = None) -> PartialState:
    """This process's place in the launch (joins the process group under ``accelerate launch``).

    On the CPU (asked for, or no GPU) every process must say so before the group forms: otherwise
    several CPU processes would each train alone, or take the GPU path on a GPU machine. ``timeout``
    (seconds, ``--dist-timeout``) bounds every collective's wait; the first caller's group is kept.
    """
    join_restarted_group(use_cpu(cpu), timeout)
    group = InitProcessGroupKwargs(timeout=timedelta(seconds=timeout)).to_kwargs() if timeout else {}
    return PartialState(cpu=use_cpu(cpu), **group)


def prepare(config: TrainConfig, resume: bool = False, overwrite: bool = False, download: bool = True,
            auto_resume: bool = False) -> Prepared:
    """What ``train`` does before ``fit``: deterministic kernels asked for before CUDA starts, the
    process group joined, one run folder for every process (the main process names the default
    ``runs/<timestamp>``) checked before the data is read (``fit`` checks again under its lock),
    and the data read (a missing MNIST is said before anything else). ``auto_resume``: the main
    process decides whether the folder starts, continues or already finished this run
    (``resume.auto_resume_mode``) and tells the others."""
    if auto_resume and (resume or overwrite or not config.output_dir):
        raise ConfigError("--auto-resume needs --output-dir (the folder every restart continues) and neither "
                          "--resume nor --overwrite")
    tracking.check_trackers(config.trackers)  # a tracker not installed: said before anything starts
    stores.check(config.trackers)  # and its store, before the command's first line (fit checks it again)
    if config.deterministic:
        backends.set_deterministic_env()
    process = process_state(config.cpu, config.dist_timeout)
    with peers_explained(process.process_index, process.num_processes, config.dist_timeout):
        run_dir = broadcast_object_list([str(config.output_dir or runs.default_run_dir())])[0]
        config = config.replace(output_dir=run_dir)
        mode = "resume" if resume else "overwrite" if overwrite else "new"
        if auto_resume:
            mode = _main_decides(process, lambda: auto_resume_mode(run_dir, config))
        elif not resume:
            check_run_dir(run_dir, overwrite=overwrite)
        data = None if mode == "finished" else make_splits(load_mnist(config.data_dir, download=download),
                                                           config.val_size)
    return Prepared(config, process, data, mode)


class Prepared(NamedTuple):
    config: TrainConfig  # with its run folder
    process: PartialState
    data: PairedMnist | None  # None for a finished run
    mode: str  # "new", "overwrite" (replace the run there), "resume" or "finished" (nothing to do)


def _main_decides(process: PartialState, decide: Callable[[], str]) -> str:
    """``decide()`` on the main process, its answer (or its refusal) on every process."""
    answer: Any = None
    if process.is_main_process:
        try:
            answer = decide()
        except UserError as e:
            answer = e
    answer = broadcast_object_list([answer])[0] if process.num_processes > 1 else answer
    if isinstance(answer, UserError):
        raise answer
    return answer


def make_accelerator(config: TrainConfig) -> Accelerator:
    """A fresh Accelerator for one run (several runs may share a process: benchmarks, tests, sweeps)."""
    # Accelerate keeps mixed precision and accumulation in process-wide singletons and refuses a
    # second Accelerator with other settings. Reset them (not the distributed PartialState, which
    # owns the process group) so that each fit() gets exactly its config's settings.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    cpu = use_cpu(config.cpu)
    process = process_state(config.cpu, config.dist_timeout)  # the same process group whoever asks first
    if cpu and process.device.type != "cpu":
        raise ConfigError("--cpu was given after this process had already started on the GPU: "
                          "pass --cpu to every run of the process (or set ACCELERATE_USE_CPU=1)")
    if config.trackers and not config.output_dir:
        raise ConfigError(f"--log-with {config.log_with} needs a run folder: pass --output-dir")
    tracking.check_trackers(config.trackers)  # before the data goes to the device: a missing package is one line
    stores.check(config.trackers)  # every fit, the Python API's too (milliseconds for a store that works)
    cuda = process.device.type == "cuda"
    return Accelerator(cpu=cpu, mixed_precision=resolve_mixed_precision(config.mixed_precision, cuda),
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=config.dist_timeout))],
                       gradient_accumulation_steps=config.gradient_accumulation_steps)


def setup(config: TrainConfig, data: PairedMnist | None, precision: dict[str, str], download: bool = True) -> Run:
    """Accelerator, data on the device, model, optimizer and the step's loss function."""
    accelerator = make_accelerator(config)
    set_seed(config.seed)  # model initialisation; data order has its own (seed, epoch) generators
    if data is None:
        data = make_splits(load_mnist(config.data_dir, download=download), config.val_size)
    data = data.limited(config.train_limit, config.eval_limit)
    world = accelerator.num_processes
    check_batch(config, len(data.train), world)
    device = accelerator.device
    check_model_fits(config, parameter_count(**config.net), backends.free_memory(device), str(device))
    # on the device before the optimizer is built: fused kernels need their parameters there
    model = build_model(**config.net).to(device, memory_format=torch.channels_last)
    n_params = count_parameters(model)
    steps = steps_per_epoch(len(data.train), config.batch_size)
    optimizer = step.make_optimizer(model, config, device)
    model, optimizer = accelerator.prepare(model, optimizer)
    average = WeightAverage(accelerator.unwrap_model(model), config.ema) if config.ema else None
    held = hparams.values_at(config, 1)  # the loss reads them; step.hold sets each epoch's
    micro = config.gradient_accumulation_steps
    setup_info = {"num_processes": world, "distributed_type": str(accelerator.distributed_type.value),
                  "mixed_precision": accelerator.mixed_precision, "device": str(device),
                  "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  **precision, "deterministic": config.deterministic, "compile": config.compile,
                  "cuda_graphs": step.cuda_graphs(config, device, world),
                  "global_batch_size": config.batch_size, "per_process_batch_size": config.batch_size // world,
                  "micro_batch_size": config.batch_size // world // micro, "params": n_params}
    return Run(config=config, accelerator=accelerator, model=model, optimizer=optimizer,
               loss_of=step.make_loss_of(model, config, device, world, held), hparams=held,
               lr_at=step.lr_schedule(config, steps * config.epochs), train=data.train.to(device),
               val=data.val.to(device), test=data.test.to(device), steps=steps, setup=setup_info,
               run_dir=Path(config.output_dir) if config.output_dir else None, average=average)


def open_run_folder(run: Run, resume: bool, overwrite: bool) -> RunFolder | None:
    """The main process takes the run folder (checks, lock, old run set aside; on resume, the
    resume rules against its config.json); a refusal reaches every process, so that none waits
    for the others at a barrier."""
    if run.run_dir is None:
        if resume:
            raise ConfigError("resuming needs the run folder: pass --resume RUN_DIR")
        return None

    def also(path: Path) -> None:  # under the lock: the resume rules, and the tracker runs to continue
        check_resume(path, run.config)
        run.tracker_ids = tracking.resumed_ids(path, run.config)

    folder, refusal = RunFolder(run.run_dir, resume, overwrite, also=also if resume else None), None
    if run.main:
        try:
            folder.open()
        except UserError as e:
            refusal = e
    refusal = broadcast_object_list([refusal])[0] if run.world > 1 else refusal
    if refusal is not None:
        raise refusal
    return folder if run.main else None


# ------------------------------------------------------------------------------------------------
# Where training stands
# ------------------------------------------------------------------------------------------------
class Continuation(NamedTuple):
    """Where a run that continues another run starts (``fit(continue_from=...)``; what PBT's exploit is)."""

    checkpoint: Path  # an epoch-end checkpoint of the run continued: the same model, batch and data
    source: str | None  # whose weights they are, as the first row trained after them says (``weights_from``);
    # None: the run's own (a paused trial going on), nothing to record


def start_state(run: Run, resume: bool, warn: Callable[[str], None],
                continue_from: Continuation | None = None) -> TrainState:
    """From scratch, from the newest usable checkpoint (model and optimizer restored too), or from
    the checkpoint of another run this one continues."""
    say = warn if run.main else (lambda _: None)
    if continue_from is not None:
        return continued_state(run, continue_from, say)
    if not resume:
        return TrainState(run.steps)

    def accept(path: Path, saved: dict[str, Any]) -> None:  # raises CheckpointError: try the one before
        check_fits(run, path, saved)
        checkpoint.load_training_state(path, run.accelerator.unwrap_model(run.model), run.optimizer)
        if run.average is not None and not checkpoint.load_average(path, run.average):
            raise checkpoint.CheckpointError(f"checkpoint {path} has no {checkpoint.EMA_FILE}, the moving average "
                                             "of the weights that --ema keeps: it was written by another run")

    path, saved = checkpoint.latest_valid(run.run_dir, warn=say, accept=accept)
    if saved["world"] != run.world:
        say(f"note: resuming a {saved['world']}-process run on {run.world} processes; "
            "the global batch is unchanged, so the maths is the same")
    state = TrainState.from_saved(saved, run.steps, run.world)
    if state.step == run.steps:  # the checkpoint closed an epoch
        state.next_epoch()
    say(f"resuming from {path.name}: epoch {state.epoch}, step {state.step}/{run.steps}")
    return state


def continued_state(run: Run, start: Continuation, say: Callable[[str], None]) -> TrainState:
    """Continue another run from the end of one of its epochs with this config's later values.

    Not a resume (which refuses any change of the run's maths): the config may differ from the
    continued run's in its scheduled values from the next epoch on (``hparams``), and must agree
    with what that run held up to the checkpoint, so that the config replays the weights' whole
    history from scratch. The first row trained after it names ``start.source``.
    """
    path, error = Path(start.checkpoint), checkpoint.CheckpointError
    saved = checkpoint.read_state(path)
    check_fits(run, path, saved)
    if saved["step"] != run.steps:
        raise error(f"checkpoint {path} is in the middle of epoch {saved['epoch']}: a run continues another from "
                    "the end of an epoch; use that run's epoch-end checkpoint")
    if saved.get("schedule") is None:
        raise error(f"checkpoint {path} was written before checkpoints recorded their hyperparameters: it can be "
                    "resumed, not continued with other values")
    problem = hparams.disagreement(run.config, saved["schedule"], saved["epoch"])
    if problem:
        raise ConfigError(f"cannot continue from {path}: {problem}; a continued run's config keeps the past of the "
                          "run it continues (hparams.continued builds it)")
    checkpoint.load_training_state(path, run.accelerator.unwrap_model(run.model), run.optimizer)
    if run.average is not None and not checkpoint.load_average(path, run.average):
        run.average.reset()  # the continued run kept no average: this one starts it from the copied weights
    state = TrainState.from_saved(saved, run.steps, run.world)
    state.next_epoch()
    if start.source is not None:
        run.weights_from = f"{start.source} (epoch {saved['epoch']}, step {saved['global_step']})"
        say(f"continuing {run.weights_from} with {hparams.values_at(run.config, state.epoch)}")
    return state


def check_fits(run: Run, path: Path, saved: dict[str, Any]) -> None:
    """A checkpoint's trainer state must be a point of this run (config.json): model, position,
    images seen, one history row per finished epoch."""
    config, error = run.config, checkpoint.CheckpointError
    if (saved["preset"], saved["width"]) != (config.preset, config.width):
        raise error(f"checkpoint {path} was written by preset {saved['preset']!r} width {saved['width']}, but "
                    f"config.json says {config.preset!r} width {config.width}: the checkpoint belongs to another run")
    if not (1 <= saved["epoch"] <= config.epochs and 0 <= saved["step"] <= run.steps
            and saved["global_step"] == TrainState.from_saved(saved, run.steps, saved["world"]).global_step):
        raise error(f"checkpoint {path} (epoch {saved['epoch']}, step {saved['step']}) does not fit config.json "
                    f"({config.epochs} epochs of {run.steps} steps): the batch size, data limits or epochs were edited since")
    finished = saved["epoch"] - (saved["step"] < run.steps)
    if len(saved["history"]) != finished:
        raise error(f"checkpoint {path} holds {len(saved['history'])} epochs of history "
                    f"at epoch {saved['epoch']} step {saved['step']}: it was altered")
    if saved["samples_per_process"] * saved["world"] != saved["global_step"] * config.batch_size or \
            config.batch_size % saved["world"]:
        raise error(f"checkpoint {path} counts {saved['samples_per_process']} images per process on {saved['world']} "
                    f"processes after {saved['global_step']} steps of {config.batch_size}: it was altered")


# ------------------------------------------------------------------------------------------------
# fit: the loop
# ------------------------------------------------------------------------------------------------
def fit(config: TrainConfig, report: Report | None = None, *, data: PairedMnist | None = None,
        progress: bool = True, test_every_epoch: bool = False, resume: bool = False,
        warn: Callable[[str], None] = print, score_test: bool = True, download: bool = True,
        on_checkpoint: Callable[[Path], None] | None = None, overwrite: bool = False,
        continue_from: Continuation | None = None) -> dict[str, Any]:
    """Train ``config``; call ``report(row)`` after every epoch on every process; return final metrics.

    ``data``: MNIST already read. With ``config.output_dir`` the main process holds that run folder;
    ``resume`` continues from its newest valid checkpoint (``resume.py``'s rules), ``overwrite``
    replaces a run there. ``test_every_epoch`` scores the test set each epoch (benchmarks, never for
    selection), ``score_test=False`` never (sweep trials). ``on_checkpoint(path)``: after each checkpoint.
    ``continue_from``: a new run (in a new folder) that starts where another run's checkpoint ends,
    with this config's later scheduled values (``continued_state``; population-based training).
    """
    if resume and continue_from is not None:
        raise ConfigError("a run either resumes its own checkpoint or continues another run's: not both")
    process = process_state(config.cpu, config.dist_timeout)
    with numerics(cuda=not use_cpu(config.cpu), deterministic=config.deterministic) as precision, \
            StopSignal() as stop, peers_explained(process.process_index, process.num_processes, config.dist_timeout):
        run = setup(config, data, precision, download)
        folder = open_run_folder(run, resume, overwrite)
        with _failures_explained(run, folder):
            state = start_state(run, resume, warn, continue_from)
            begin(run, state, resume or continue_from is not None)
            checkpointer = Checkpointer(run, folder, on_checkpoint)
            with Progress(enabled=progress and run.main, epochs=config.epochs, steps=run.steps) as bar:
                while state.epoch <= config.epochs:
                    first, start = state.step, time.perf_counter()
                    loss_sum = torch.full((), state.loss_sum, device=run.device)
                    run.model.train()
                    step.hold(run, state.epoch)
                    bar.start_epoch(state.epoch, first)
                    checkpointer.begin_epoch(state)
                    for images, numbers, digits, sums in train_batches(
                            run.train, config.batch_size, config.seed, state.epoch, config.shift, run.rank,
                            run.world, first, config.rotate, config.scale, config.elastic):
                        loss_sum += step.train_step(run, images, numbers, digits, sums, run.lr_at(state.global_step))
                        state.advance(len(digits))
                        if run.average is not None:
                            run.average.update(state.global_step)
                        if bar.enabled and (state.step % config.log_every == 0 or state.step == run.steps):
                            # .item() is a device sync: only at log intervals, only where a bar is drawn
                            bar.update(state.step, loss_sum.item() / state.step,
                                       (state.step - first) * config.batch_size / (time.perf_counter() - start))
                        # SIGTERM: all processes agree at log intervals, save this step and stop
                        stopping = state.step % config.log_every == 0 and state.step < run.steps and stop.agreed(run)
                        if stopping or checkpointer.due(state):
                            checkpointer.save(state, loss_sum, state.train_seconds + time.perf_counter() - start)
                        if stopping:
                            raise preempted(run, state)
                    synchronize(run.device)  # the clock must include the GPU work still queued
                    seconds = time.perf_counter() - start
                    checkpointer.check_finite(state, loss_sum)
                    state.loss_sum = run.accelerator.reduce(loss_sum, reduction="mean").item()
                    state.train_seconds += seconds
                    row = epoch_row(run, state, seconds, first, test_every_epoch)
                    record(run, state, row)
                    checkpointer.save(state)
                    tracking.log_epoch(run, row, state.global_step)
                    if report is not None:
                        report(row)
                    if state.epoch < config.epochs and stop.agreed(run):
                        raise preempted(run, state)  # the epoch's checkpoint is written
                    state.next_epoch()
            return finish(run, state, test_every_epoch, score_test)


def preempted(run: Run, state: TrainState) -> Preempted:
    """The line of a run stopped by SIGTERM (after the checkpoint of ``state``, if it has a folder)."""
    who = f"rank {run.rank}: " if run.world > 1 else ""
    where = f"epoch {state.epoch}, step {state.step}/{run.steps}"
    if run.run_dir is None:
        return Preempted(f"{who}stopped by SIGTERM at {where}; no run folder, so nothing to resume")
    return Preempted(f"{who}stopped by SIGTERM at {where}, checkpoint {checkpoint.checkpoint_dir(run.run_dir, state.global_step).name} "
                     f"written: run the same command with --auto-resume (or mnist-addition train --resume {run.run_dir})")


@contextlib.contextmanager
def _failures_explained(run: Run, folder: RunFolder | None) -> Iterator[None]:
    """Hold the run folder while training; every way training can fail becomes one line (a full
    disk, out of memory), and Ctrl-C says what is left once the folder is closed."""
    ok = interrupted = False
    try:
        yield
        ok = True
    except KeyboardInterrupt:
        interrupted = True  # said once the folder is closed: only then is it known what is left
    except OSError as e:  # the run folder could not be written: disk full, read-only, removed
        error = runs.write_failed(e, "--output-dir", run.run_dir)
        raise type(error)(f"{error}; checkpoints already written are kept") from None
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        config = run.config
        raise ConfigError(f"out of memory on {run.device} with --batch-size {config.batch_size} and "
                          f"--width {config.width}: lower --batch-size (or use --gradient-accumulation-steps), "
                          "--eval-batch-size or --width") from None
    finally:
        stopped = None if ok else "interrupted" if interrupted else stop_reason(sys.exc_info()[1])
        try:
            if folder is not None:
                if stopped:
                    note_stop(run, stopped, sys.exc_info()[1])
                folder.close(ok)
        finally:  # the trackers are told how the run ended, whatever happened to the folder
            tracking.end(run, "FINISHED" if ok else "KILLED" if stopped in ("interrupted", "preempted") else "FAILED")
    if interrupted:
        raise Interrupted(describe(folder.outcome if folder else "", run.run_dir))


def note_stop(run: Run, stopped: str, error: BaseException | None) -> None:
    """Why a run that began and can be resumed stopped (``status.json``, for ``mnist-addition runs``);
    a refusal before training began changes nothing."""
    if run.began and run.run_dir and checkpoint.list_checkpoints(run.run_dir) and not (run.run_dir / FINISHED).exists():
        try:
            runs.write_json(run.run_dir / STATUS, {"status": stopped, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                   "message": str(error or "interrupted (Ctrl-C)")})
        except OSError:
            pass  # a note for `runs` only (a full disk is why the run stopped, often): the error said is the run's


def stop_reason(error: BaseException | None) -> str:
    """What ``runs`` shows of an unfinished run (status.json): why it stopped."""
    kinds = ((TrainingDiverged, "diverged"), (Preempted, "preempted"), (Interrupted, "interrupted"),
             (PeerLost, "peer lost"))
    return next((name for kind, name in kinds if isinstance(error, kind)), "failed")


def begin(run: Run, state: TrainState, resume: bool) -> None:
    """Before the first step: compile, config.json (and, resumed or continued, metrics.jsonl as the
    checkpoint knows it), trackers."""
    run.began = True
    run.setup["compile_seconds"] = step.warm_up(run)  # not counted as training time
    if run.run_dir and run.main:
        runs.write_config(run.run_dir, run.config, run.setup)
        (run.run_dir / STATUS).unlink(missing_ok=True)  # why it stopped last time: it is running now
        if resume:  # metrics.jsonl holds exactly the epochs the checkpoint knows about
            runs.write_jsonl(run.run_dir / "metrics.jsonl", state.history)
    tracking.start(run, state.history, resume)


def score(run: Run, split: Split) -> dict[str, Any]:
    """Loss and accuracies on ``split``, counts summed over all processes."""
    counts = evaluate_counts(run.evaluated, split, run.config.eval_batch_size, run.hparams["sum_weight"], run.rank, run.world)
    return summarize(run.accelerator.reduce(counts, reduction="sum"))


def epoch_row(run: Run, state: TrainState, seconds: float, first: int, test_every_epoch: bool) -> dict[str, Any]:
    """The epoch's line in metrics.jsonl: training loss, validation (and test) metrics, speed."""
    row: dict[str, Any] = {"epoch": state.epoch, "train_loss": state.loss_sum / run.steps}
    if len(run.val):  # --val-size 0: a refit on every training image, nothing to validate on
        row.update({f"val_{k}": v for k, v in score(run, run.val).items()})
    if test_every_epoch:
        row.update({f"test_{k}": v for k, v in score(run, run.test).items()})
    row.update({"images_per_s": (run.steps - first) * run.config.batch_size / seconds, "epoch_seconds": seconds,
                "train_seconds": state.train_seconds, "lr": run.lr_at(state.global_step - 1)})
    # what held in the epoch (the lr: at its last step), and whose weights it started from
    row.update({k: run.hparams[k] for k in hparams.SCHEDULED if k != "lr"})
    if run.weights_from:
        row[checkpoint.WEIGHTS_FROM], run.weights_from = run.weights_from, None
    return row


def record(run: Run, state: TrainState, row: dict[str, Any]) -> None:
    """The epoch's row joins the history, and metrics.jsonl on the main process."""
    state.history.append(row)
    if run.run_dir and run.main:
        runs.write_jsonl(run.run_dir / "metrics.jsonl", state.history)


def finish(run: Run, state: TrainState, test_every_epoch: bool, score_test: bool) -> dict[str, Any]:
    """Score the test set once, write weights, metrics, curves and pictures; return the final metrics."""
    config, history = run.config, state.history
    run.setup["train_samples_per_process"] = run.accelerator.gather(
        torch.tensor([state.samples_per_process], device=run.device)).tolist()
    test_metrics = (_strip(history[-1], "test_") if test_every_epoch  # score the test set once
                    else score(run, run.test) if score_test else None)
    final = {"val": _strip(history[-1], "val_") or None, "test": test_metrics, "params": run.setup["params"],
             "train_seconds": state.train_seconds, "epochs": config.epochs,
             "images_per_s": run.steps * config.batch_size * config.epochs / max(state.train_seconds, 1e-9),
             "setup": run.setup}
    if run.run_dir and run.main:
        unwrapped = run.accelerator.unwrap_model(run.evaluated)
        runs.save_weights(unwrapped, run.run_dir / "model.safetensors", config)
        from ..rundir.plots import plot_curves

        plot_curves(history, run.run_dir / "curves.png", label_smoothing=config.label_smoothing,
                    title=f"{config.preset} (width {config.width}), seed {config.seed}")
        if score_test:
            pictures.write_pictures(unwrapped, run.test, run.run_dir, config.eval_batch_size)
        runs.write_json(run.run_dir / FINISHED, final)  # last: a run without it is resumed, not called finished
    tracking.log_final(run, final, state.global_step)  # closed by _failures_explained, however the run ends
    run.accelerator.wait_for_everyone()
    final["history"] = history
    return final


def _strip(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}
