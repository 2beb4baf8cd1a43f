"""The training loop: ``fit``, which ``run.train`` (the one way into a run) calls.

``fit(config, report)`` trains, validates every epoch, tests once at the end and returns the final
metrics. The same code runs as one CPU process, on one GPU, or data-parallel under
``accelerate launch``: ``--batch-size`` is the global batch, and each process takes an equal
shard of every global batch, so the learning rate needs no rescaling.

``fit`` reads top to bottom: set-up (``setup.setup``: accelerator, data on the device, model,
optimizer, the step; ``setup.open_run_folder``; ``start.start_state``: fresh or from a
checkpoint), then each epoch's steps (``train_epoch``: the optimizer step ``step.train_step``, the
progress bar and the checkpoint decision ``checkpointer.Checkpointer``), and at each epoch's end
evaluation, the metrics row, the epoch's checkpoint and ``report(row)``; then ``finish`` (test
set, weights, pictures, metrics.json). The hot loop never waits for the host: batches are slices
of tensors already on the device, the learning rate is a pure function of the step, and
``.item()`` runs only at log intervals.

Callbacks are the seams: ``report(row)`` after every epoch, ``on_checkpoint(path)`` after every
checkpoint. Tests that inject faults replace public functions that ``fit`` calls through their
modules (``step.train_step``, ``step.lr_schedule``, ``backends.free_memory``,
``pictures.write_pictures``, ``checkpoint.prune``), never names inside this one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..core import hparams
from ..core.backends import numerics, synchronize, use_cpu
from ..core.config import ConfigError, TrainConfig
from ..core.data import PairedMnist, Split, train_batches
from ..core.evaluation import evaluate_counts
from ..core.metrics import summarize
from ..rundir import checkpoint, contents, pictures
from ..rundir.names import CURVES, FINISHED, HISTORY, STATUS, WEIGHTS
from . import step, trackers
from .checkpointer import Checkpointer
from .faults import Preempted, StopSignal, peers_explained
from .group import process_state
from .progress import Progress
from .setup import open_run_folder, setup
from .start import Continuation, start_state
from .state import Run, TrainState
from .stops import failures_explained

Report = Callable[[dict[str, Any]], None]
STARTS = ("new", "overwrite", "resume")  # or a Continuation
TESTS = ("end", "every_epoch", "never")  # when the test set is scored


def fit(config: TrainConfig, report: Report | None = None, *, data: PairedMnist | None = None,
        start: str | Continuation = "new", test: str = "end", progress: bool = True,
        warn: Callable[[str], None] = print, on_checkpoint: Callable[[Path], None] | None = None,
        download: bool = True, on_step: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train ``config``; call ``report(row)`` after every epoch on every process; return final metrics.

    The loop that ``run.train`` (the one way into a run) calls once the process group is joined
    and the run folder chosen. ``data``: MNIST already read. With ``config.output_dir`` the main
    process holds that run folder; ``start``: "new", "overwrite" (replace a run there), "resume"
    (from its newest valid checkpoint, ``resume.py``'s rules) or a ``Continuation`` (a new run
    that starts where another run's checkpoint ends, with this config's later scheduled values:
    population-based training). ``test``: score the test set at the "end", "every_epoch"
    (benchmarks, never for selection) or "never" (sweep trials). ``on_checkpoint(path)``: after
    each checkpoint; ``on_step()``: after each optimizer step (a sweep's watchdog of hung trials).
    """
    if start not in STARTS and not isinstance(start, Continuation):
        raise ConfigError(f"start must be one of {', '.join(STARTS)} or a Continuation, got {start!r}")
    if test not in TESTS:
        raise ConfigError(f"test must be one of {', '.join(TESTS)}, got {test!r}")
    resume, continue_from = start == "resume", start if isinstance(start, Continuation) else None
    test_every_epoch, score_test = test == "every_epoch", test != "never"
    process = process_state(config.cpu, config.dist_timeout)
    with numerics(cuda=not use_cpu(config.cpu), deterministic=config.deterministic) as precision, \
            StopSignal() as stop, peers_explained(process.process_index, process.num_processes, config.dist_timeout):
        run = setup(config, data, precision, download)
        folder = open_run_folder(run, resume, start == "overwrite")
        with failures_explained(run, folder):
            state = start_state(run, resume, warn, continue_from)
            begin(run, state, resume or continue_from is not None)
            checkpointer = Checkpointer(run, folder, on_checkpoint)
            with Progress(enabled=progress and run.main, epochs=config.epochs, steps=run.steps) as bar:
                while state.epoch <= config.epochs:
                    first = state.step
                    loss_sum, seconds = train_epoch(run, state, checkpointer, bar, stop, on_step)
                    checkpointer.check_finite(state, loss_sum)
                    state.loss_sum = run.accelerator.reduce(loss_sum, reduction="mean").item()
                    state.train_seconds += seconds
                    row = epoch_row(run, state, seconds, first, test_every_epoch)
                    record(run, state, row)
                    checkpointer.save(state)
                    trackers.log_epoch(run, row, state.global_step)
                    if report is not None:
                        report(row)
                    if state.epoch < config.epochs and stop.agreed(run):
                        raise preempted(run, state)  # the epoch's checkpoint is written
                    state.next_epoch()
            return finish(run, state, test_every_epoch, score_test)


def train_epoch(run: Run, state: TrainState, checkpointer: Checkpointer, bar: Progress,
                stop: StopSignal, on_step: Callable[[], None] | None = None) -> tuple[torch.Tensor, float]:
    """The steps of ``state.epoch`` from ``state.step`` on (a resumed epoch starts mid-way): the
    summed loss (on the device) and the seconds they took, the GPU's queued work included."""
    config, first, began = run.config, state.step, time.perf_counter()
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
        if on_step is not None:
            on_step()
        if run.average is not None:
            run.average.update(state.global_step)
        if bar.enabled and (state.step % config.log_every == 0 or state.step == run.steps):
            # .item() is a device sync: only at log intervals, only where a bar is drawn
            bar.update(state.step, loss_sum.item() / state.step,
                       (state.step - first) * config.batch_size / (time.perf_counter() - began))
        # SIGTERM: all processes agree at log intervals, save this step and stop
        stopping = state.step % config.log_every == 0 and state.step < run.steps and stop.agreed(run)
        if stopping or checkpointer.due(state):
            checkpointer.save(state, loss_sum, state.train_seconds + time.perf_counter() - began)
        if stopping:
            raise preempted(run, state)
    synchronize(run.device)  # the clock must include the GPU work still queued
    return loss_sum, time.perf_counter() - began


def preempted(run: Run, state: TrainState) -> Preempted:
    """The line of a run stopped by SIGTERM (after the checkpoint of ``state``, if it has a folder)."""
    who = f"rank {run.rank}: " if run.world > 1 else ""
    where = f"epoch {state.epoch}, step {state.step}/{run.steps}"
    if run.run_dir is None:
        return Preempted(f"{who}stopped by SIGTERM at {where}; no run folder, so nothing to resume")
    return Preempted(f"{who}stopped by SIGTERM at {where}, checkpoint {checkpoint.checkpoint_dir(run.run_dir, state.global_step).name} "
                     f"written: run the same command with --auto-resume (or mnist-addition train --resume {run.run_dir})")


def begin(run: Run, state: TrainState, resume: bool) -> None:
    """Before the first step: compile, config.json (and, resumed or continued, metrics.jsonl as the
    checkpoint knows it), trackers."""
    run.began = True
    run.setup["compile_seconds"] = step.warm_up(run)  # not counted as training time
    if run.run_dir and run.main:
        contents.write_config(run.run_dir, run.config, run.setup)
        (run.run_dir / STATUS).unlink(missing_ok=True)  # why it stopped last time: it is running now
        if resume:  # metrics.jsonl holds exactly the epochs the checkpoint knows about
            contents.write_jsonl(run.run_dir / HISTORY, state.history)
    trackers.start(run, state.history, resume)


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
        contents.write_jsonl(run.run_dir / HISTORY, state.history)


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
        contents.save_weights(unwrapped, run.run_dir / WEIGHTS, config)
        from ..rundir.plots import plot_curves

        plot_curves(history, run.run_dir / CURVES, label_smoothing=config.label_smoothing,
                    title=f"{config.preset} (width {config.width}), seed {config.seed}")
        if score_test:
            pictures.write_pictures(unwrapped, run.test, run.run_dir, config.eval_batch_size)
        contents.write_json(run.run_dir / FINISHED, final)  # last: a run without it is resumed, not called finished
    trackers.log_final(run, final, state.global_step)  # closed by _failures_explained, however the run ends
    run.accelerator.wait_for_everyone()
    final["history"] = history
    return final


def _strip(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}
