"""The training loop: the only core module that imports Accelerate.

``fit(config, report)`` trains, validates every epoch, tests once at the end and returns the final
metrics. The same code runs as one CPU process, on one GPU, or data-parallel under
``accelerate launch``: ``--batch-size`` is the global batch, and each process takes an equal
shard of every global batch, so the learning rate needs no rescaling.

``fit`` is a short orchestration of named parts: ``setup`` (accelerator, data on the device, model,
optimizer, the step function, compiled or not: ``step.py``), ``start_state`` (fresh or from a
checkpoint; ``state.py``), ``train_epoch`` (which calls ``step.train_step``), ``evaluate`` and
``finish`` (the run folder).
The hot loop never waits for the host: batches are slices of tensors already on the device, the
learning rate is a pure function of the step, and ``.item()`` runs only at log intervals.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import broadcast_object_list, set_seed

from . import checkpoint as checkpoint_io
from . import runs
from .backends import free_memory, is_out_of_memory, numerics, resolve_mixed_precision, synchronize, use_cpu
from .config import ConfigError, TrainConfig, check_batch, check_model_fits
from .data import PairedMnist, Split, load_mnist, make_splits, steps_per_epoch, train_batches
from .errors import EXIT_FAILED, Interrupted, UserError
from .evaluate import evaluate_counts
from .metrics import summarize
from .model import build_model, count_parameters, parameter_count
from .progress import Progress
from .report import write_report
from .runfolder import FINISHED, RunFolder, describe
from .state import Run, TrainState
from .step import cuda_graphs, lr_schedule, make_loss_of, make_optimizer, train_step, warm_up

__all__ = ["fit", "process_state", "resolve_mixed_precision", "lr_schedule", "TrainState"]

Report = Callable[[dict[str, Any]], None]


# ------------------------------------------------------------------------------------------------
# Set-up
# ------------------------------------------------------------------------------------------------
def process_state(cpu: bool = False) -> PartialState:
    """This process's place in the launch (joins the process group under ``accelerate launch``).

    On the CPU (asked for, or no GPU) every process must say so before the group forms: otherwise
    several CPU processes would each train alone, or take the GPU path on a GPU machine.
    """
    return PartialState(cpu=use_cpu(cpu))


def make_accelerator(config: TrainConfig) -> Accelerator:
    """A fresh Accelerator for one run (several runs may share a process: benchmarks, tests, sweeps)."""
    # Accelerate keeps mixed precision and accumulation in process-wide singletons and refuses a
    # second Accelerator with other settings. Reset them (not the distributed PartialState, which
    # owns the process group) so that each fit() gets exactly its config's settings.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    cpu = use_cpu(config.cpu)
    state = process_state(config.cpu)  # the same process group whoever asks first
    if cpu and state.device.type != "cpu":
        raise ConfigError("--cpu was given after this process had already started on the GPU: "
                          "pass --cpu to every run of the process (or set ACCELERATE_USE_CPU=1)")
    tracking = config.log_with != "none"
    if tracking and not config.output_dir:
        raise ConfigError(f"--log-with {config.log_with} needs a run folder: pass --output-dir")
    if tracking and importlib.util.find_spec(config.log_with) is None:
        raise ConfigError(f"--log-with {config.log_with} needs the {config.log_with} package: "
                          f"pip install -e \".[{config.log_with}]\"")
    cuda = state.device.type == "cuda"
    return Accelerator(cpu=cpu, mixed_precision=resolve_mixed_precision(config.mixed_precision, cuda),
                       gradient_accumulation_steps=config.gradient_accumulation_steps,
                       log_with=config.log_with if tracking else None,
                       project_dir=config.output_dir if tracking else None)


def setup(config: TrainConfig, data: PairedMnist | None, precision: dict[str, str]) -> Run:
    """Accelerator, data on the device, model, optimizer and the step's loss function."""
    accelerator = make_accelerator(config)
    set_seed(config.seed)  # model initialisation; data order has its own (seed, epoch) generators
    if data is None:
        data = make_splits(load_mnist(config.data_dir), config.val_size)
    data = data.limited(config.train_limit, config.eval_limit)
    world = accelerator.num_processes
    check_batch(config, len(data.train), world)
    device = accelerator.device
    check_model_fits(config, parameter_count(config.preset, config.width), free_memory(device), str(device))
    # on the device before the optimizer is built: fused kernels need their parameters there
    model = build_model(config.preset, config.width).to(device, memory_format=torch.channels_last)
    n_params = count_parameters(model)
    steps = steps_per_epoch(len(data.train), config.batch_size)
    optimizer = make_optimizer(model, config, device)
    model, optimizer = accelerator.prepare(model, optimizer)
    micro = config.gradient_accumulation_steps
    setup_info = {"num_processes": world, "distributed_type": str(accelerator.distributed_type.value),
                  "mixed_precision": accelerator.mixed_precision, "device": str(device),
                  "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  **precision, "deterministic": config.deterministic, "compile": config.compile,
                  "cuda_graphs": cuda_graphs(config, device, world),
                  "global_batch_size": config.batch_size, "per_process_batch_size": config.batch_size // world,
                  "micro_batch_size": config.batch_size // world // micro, "params": n_params}
    return Run(config, accelerator, model, optimizer, make_loss_of(model, config, device, world),
               lr_schedule(config, steps * config.epochs), data.train.to(device), data.val.to(device),
               data.test.to(device), steps, setup_info, Path(config.output_dir) if config.output_dir else None)


# ------------------------------------------------------------------------------------------------
# Where training stands
# ------------------------------------------------------------------------------------------------
def start_state(run: Run, resume: bool, warn: Callable[[str], None]) -> TrainState:
    """From scratch, or from the newest usable checkpoint (model and optimizer restored too)."""
    if not resume:
        return TrainState()
    say = warn if run.main else (lambda _: None)

    def accept(checkpoint: Path, saved: dict[str, Any]) -> None:  # raises CheckpointError: try the one before
        check_fits(run, checkpoint, saved)
        checkpoint_io.load_training_state(checkpoint, run.accelerator.unwrap_model(run.model), run.optimizer)

    checkpoint, saved = checkpoint_io.latest_valid(run.run_dir, warn=say, accept=accept)
    if saved["world"] != run.world:
        say(f"note: resuming a {saved['world']}-process run on {run.world} processes; "
            "the global batch is unchanged, so the maths is the same")
    state = TrainState(saved["epoch"], saved["step"], saved["loss_sum"], saved["train_seconds"],
                       saved["samples_per_process"] * saved["world"] // run.world, saved["history"])
    if state.step == run.steps:  # the checkpoint closed an epoch
        state.epoch, state.step, state.loss_sum = state.epoch + 1, 0, 0.0
    say(f"resuming from {checkpoint.name}: epoch {state.epoch}, step {state.step}/{run.steps}")
    return state


def check_fits(run: Run, checkpoint: Path, saved: dict[str, Any]) -> None:
    """A checkpoint's trainer state must be a point of this run (config.json): model, position,
    images seen, one history row per finished epoch."""
    config = run.config
    if (saved["preset"], saved["width"]) != (config.preset, config.width):
        raise checkpoint_io.CheckpointError(
            f"checkpoint {checkpoint} was written by preset {saved['preset']!r} width {saved['width']}, but "
            f"config.json says {config.preset!r} width {config.width}: the checkpoint belongs to another run")
    if not (1 <= saved["epoch"] <= config.epochs and 0 <= saved["step"] <= run.steps
            and saved["global_step"] == (saved["epoch"] - 1) * run.steps + saved["step"]):
        raise checkpoint_io.CheckpointError(
            f"checkpoint {checkpoint} (epoch {saved['epoch']}, step {saved['step']}) does not fit config.json "
            f"({config.epochs} epochs of {run.steps} steps): the batch size, data limits or epochs were edited since")
    finished = saved["epoch"] - (saved["step"] < run.steps)
    if len(saved["history"]) != finished:
        raise checkpoint_io.CheckpointError(f"checkpoint {checkpoint} holds {len(saved['history'])} epochs of history "
                                            f"at epoch {saved['epoch']} step {saved['step']}: it was altered")
    if saved["samples_per_process"] * saved["world"] != saved["global_step"] * config.batch_size or \
            config.batch_size % saved["world"]:
        raise checkpoint_io.CheckpointError(
            f"checkpoint {checkpoint} counts {saved['samples_per_process']} images per process on {saved['world']} "
            f"processes after {saved['global_step']} steps of {config.batch_size}: it was altered")


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
def train_epoch(run: Run, state: TrainState, bar: Progress, save: Callable[[TrainState, torch.Tensor, float], None]) -> float:
    """Train ``state.epoch`` from ``state.step`` to its end; returns the epoch's seconds.

    ``save(state, loss_sum, seconds_so_far)`` writes a mid-epoch checkpoint every ``checkpoint_every``
    global steps (the epoch-end one is the caller's). ``state.loss_sum`` ends as the epoch's summed
    loss, averaged over processes.
    """
    config, epoch, first = run.config, state.epoch, state.step
    run.model.train()
    loss_sum = torch.full((), state.loss_sum, device=run.accelerator.device)
    bar.start_epoch(epoch, first)
    start = time.perf_counter()
    checked = first  # the last step at which the loss and weights were known to be finite
    batches = train_batches(run.train, config.batch_size, config.seed, epoch, config.shift, run.rank, run.world, first)
    for step, (images, numbers, digits, sums) in enumerate(batches, first + 1):
        global_step = (epoch - 1) * run.steps + step  # steps done after this one
        loss_sum += train_step(run, images, numbers, digits, sums, run.lr_at(global_step - 1))
        state.step, state.samples_per_process = step, state.samples_per_process + len(digits)
        if bar.enabled and (step % config.log_every == 0 or step == run.steps):
            # .item() is a device sync: only at log intervals, only where a bar is drawn
            bar.update(step, loss_sum.item() / step, (step - first) * config.batch_size / (time.perf_counter() - start))
        if run.run_dir and config.checkpoint_every and global_step % config.checkpoint_every == 0 and step < run.steps:
            check_finite(run, state, loss_sum, since=checked)
            checked = step
            save(state, loss_sum, time.perf_counter() - start)
    synchronize(run.accelerator.device)  # the clock must include the GPU work still queued
    seconds = time.perf_counter() - start
    check_finite(run, state, loss_sum, since=checked)
    state.loss_sum = run.accelerator.reduce(loss_sum, reduction="mean").item()
    return seconds


class TrainingDiverged(UserError):
    """The loss or the weights stopped being finite numbers; nothing non-finite was saved."""

    exit_code = EXIT_FAILED


def check_finite(run: Run, state: TrainState, loss_sum: torch.Tensor, since: int) -> None:
    """Stop if the running loss or any weight is NaN or infinite (on any process). A device sync:
    called only before checkpoints and at epoch ends, so a bad state is never saved."""
    finite = torch.isfinite(loss_sum) & torch.stack([torch.isfinite(p).all() for p in run.model.parameters()]).all()
    if run.accelerator.reduce((~finite).float(), reduction="sum").item() == 0:
        return
    found = checkpoint_io.list_checkpoints(run.run_dir) if run.run_dir else []
    kept = found[-1].name if found else None
    lr = run.lr_at((state.epoch - 1) * run.steps + state.step - 1)
    raise TrainingDiverged(
        f"training diverged in epoch {state.epoch} between steps {since} and {state.step} of {run.steps}: the loss "
        f"or the weights became NaN or infinite (learning rate {lr:.3g} there); lower --lr (now {run.config.lr:g})"
        + (" or train in fp32 (--mixed-precision no)" if run.accelerator.mixed_precision != "no" else "")
        + (f"; the last good checkpoint, {kept}, is kept" if kept else "") + "; no weights were saved")


def evaluate(run: Run, split: Split) -> dict[str, Any]:
    """Loss and accuracies on ``split``, counts summed over all processes."""
    counts = evaluate_counts(run.model, split, run.config.eval_batch_size, run.config.sum_weight, run.rank, run.world)
    return summarize(run.accelerator.reduce(counts, reduction="sum"))


def save_checkpoint(run: Run, state: TrainState, loss_sum: torch.Tensor | None, seconds: float,
                    on_checkpoint: Callable[[Path], None] | None) -> None:
    """Checkpoint the model, optimizer and ``state`` (``seconds`` of training so far); every
    process calls this. ``loss_sum``: the running loss mid-epoch (None: ``state.loss_sum`` is final)."""
    saved = state.to_dict(run)
    if loss_sum is not None:  # the mean over processes, so that every process resumes from the same sum
        saved["loss_sum"] = run.accelerator.reduce(loss_sum.clone(), reduction="mean").item()
    saved["train_seconds"] = seconds
    path = checkpoint_io.save_checkpoint(run.accelerator, run.model, run.optimizer, run.run_dir, saved["global_step"], saved,
                                         run.config.keep_checkpoints)
    if on_checkpoint is not None:
        on_checkpoint(path)


def epoch_row(run: Run, state: TrainState, seconds: float, first: int, test_every_epoch: bool) -> dict[str, Any]:
    """The epoch's line in metrics.jsonl: training loss, validation (and test) metrics, speed."""
    row: dict[str, Any] = {"epoch": state.epoch, "train_loss": state.loss_sum / run.steps}
    row.update({f"val_{k}": v for k, v in evaluate(run, run.val).items()})
    if test_every_epoch:
        row.update({f"test_{k}": v for k, v in evaluate(run, run.test).items()})
    row.update({"images_per_s": (run.steps - first) * run.config.batch_size / seconds, "epoch_seconds": seconds,
                "train_seconds": state.train_seconds, "lr": run.lr_at(state.epoch * run.steps)})
    return row


# ------------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------------
def fit(config: TrainConfig, report: Report | None = None, data: PairedMnist | None = None,
        progress: bool = True, test_every_epoch: bool = False, resume: bool = False,
        warn: Callable[[str], None] = print, score_test: bool = True,
        on_checkpoint: Callable[[Path], None] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train ``config``; call ``report(row)`` after every epoch on every process; return final metrics.

    ``data`` skips reading MNIST (tests and benchmarks pass their own). When ``config.output_dir``
    is set, the main process holds that run folder for the whole run (``runfolder.RunFolder``: one
    writer, a new run only where there is none or with ``overwrite``, which keeps the old run until
    the new one's first checkpoint) and every process joins in saving checkpoints; ``resume``
    continues from the newest valid checkpoint. Everything that can be refused is checked before
    the folder is touched. With ``test_every_epoch`` the test set is also scored each epoch
    (benchmarks only: never for selection); with ``score_test=False`` it is never scored (sweep
    trials select on validation, and the run folder then gets no test-set report).
    ``on_checkpoint(path)`` is called on every process after each checkpoint is written (an
    epoch's comes just before its ``report``).
    """
    with numerics(cuda=not use_cpu(config.cpu), deterministic=config.deterministic) as precision:
        run = setup(config, data, precision)
        folder = open_run_folder(run, resume, overwrite)
        ok = interrupted = False
        try:
            final = train(run, folder, resume, report, progress, test_every_epoch, warn, score_test, on_checkpoint)
            ok = True
        except KeyboardInterrupt:
            interrupted = True  # said once the folder is closed: only then is it known what is left
        except OSError as e:  # the run folder could not be written: disk full, read-only, removed
            error = runs.write_failed(e, "--output-dir", run.run_dir)
            raise type(error)(f"{error}; checkpoints already written are kept") from None
        except (RuntimeError, MemoryError) as e:
            if not is_out_of_memory(e):
                raise
            raise ConfigError(f"out of memory on {run.accelerator.device} with --batch-size {config.batch_size} and "
                              f"--width {config.width}: lower --batch-size (or use --gradient-accumulation-steps), "
                              "--eval-batch-size or --width") from None
        finally:
            if folder is not None:
                folder.close(ok)
    if interrupted:
        raise Interrupted(describe(folder.outcome if folder else "", run.run_dir))
    return final


def open_run_folder(run: Run, resume: bool, overwrite: bool) -> RunFolder | None:
    """The main process takes the run folder (checks, lock, old run set aside); a refusal reaches
    every process, so that none waits for the others at a barrier."""
    if run.run_dir is None:
        if resume:
            raise ConfigError("resuming needs the run folder: pass --resume RUN_DIR")
        return None
    folder, refusal = RunFolder(run.run_dir, resume, overwrite), None
    if run.main:
        try:
            folder.open()
        except UserError as e:
            refusal = e
    refusal = broadcast_object_list([refusal])[0] if run.world > 1 else refusal
    if refusal is not None:
        raise refusal
    return folder if run.main else None


def train(run: Run, folder: RunFolder | None, resume: bool, report: Report | None, progress: bool,
          test_every_epoch: bool, warn: Callable[[str], None], score_test: bool,
          on_checkpoint: Callable[[Path], None] | None) -> dict[str, Any]:
    """The run itself, in a folder already held: resume or start, epochs, checkpoints, the end."""
    config = run.config
    state = start_state(run, resume, warn)
    run.setup["compile_seconds"] = warm_up(run)  # not counted as training time
    if run.run_dir and run.main:
        runs.write_config(run.run_dir, config, run.setup)
        if resume:  # metrics.jsonl holds exactly the epochs the checkpoint knows about
            runs.write_jsonl(run.run_dir / "metrics.jsonl", state.history)
    tracking = config.log_with != "none"
    if tracking:  # trackers take scalars only; the run folder's config.json has the rest
        run.accelerator.init_trackers(config.log_with, config={
            k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))})

    def checkpointed(path: Path) -> None:
        if folder is not None:
            folder.committed()  # the run this one replaces may go now
        if on_checkpoint is not None:
            on_checkpoint(path)

    save = lambda st, loss, seconds: save_checkpoint(run, st, loss, st.train_seconds + seconds,  # noqa: E731
                                                     checkpointed)
    with Progress(enabled=progress and run.main, epochs=config.epochs, steps=run.steps) as bar:
        while state.epoch <= config.epochs:
            first = state.step
            seconds = train_epoch(run, state, bar, save)
            state.train_seconds += seconds
            row = epoch_row(run, state, seconds, first, test_every_epoch)
            state.history.append(row)
            if run.run_dir and run.main:
                runs.write_jsonl(run.run_dir / "metrics.jsonl", state.history)
            if run.run_dir:
                save_checkpoint(run, state, None, state.train_seconds, checkpointed)
            if tracking:
                run.accelerator.log({k: v for k, v in row.items() if k != "epoch"}, step=state.epoch)
            if report is not None:
                report(row)
            state.epoch, state.step, state.loss_sum = state.epoch + 1, 0, 0.0
    return finish(run, state, test_every_epoch, score_test)


def finish(run: Run, state: TrainState, test_every_epoch: bool, score_test: bool) -> dict[str, Any]:
    """Score the test set once, write weights, metrics, curves and report; return the final metrics."""
    config, history = run.config, state.history
    device = run.accelerator.device
    run.setup["train_samples_per_process"] = run.accelerator.gather(
        torch.tensor([state.samples_per_process], device=device)).tolist()
    test_metrics = (_strip(history[-1], "test_") if test_every_epoch  # score the test set once
                    else evaluate(run, run.test) if score_test else None)
    final = {"val": _strip(history[-1], "val_"), "test": test_metrics, "params": run.setup["params"],
             "train_seconds": state.train_seconds, "epochs": config.epochs,
             "images_per_s": run.steps * config.batch_size * config.epochs / max(state.train_seconds, 1e-9),
             "setup": run.setup}
    if run.run_dir and run.main:
        unwrapped = run.accelerator.unwrap_model(run.model)
        runs.save_weights(unwrapped, run.run_dir / "model.safetensors", config)
        from .plots import plot_curves

        plot_curves(history, run.run_dir / "curves.png", label_smoothing=config.label_smoothing,
                    title=f"{config.preset} (width {config.width}), seed {config.seed}")
        if score_test:
            write_report(unwrapped, run.test, run.run_dir, config.eval_batch_size)
        runs.write_json(run.run_dir / FINISHED, final)  # last: a run without it is resumed, not called finished
    if config.log_with != "none":
        run.accelerator.end_training()
    run.accelerator.wait_for_everyone()
    final["history"] = history
    return final


def _strip(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}


