"""The training loop: the only core module that imports Accelerate.

``fit(config, report)`` trains, validates every epoch, tests once at the end and returns the final
metrics. The same code runs as one CPU process, on one GPU, or data-parallel under
``accelerate launch``: ``--batch-size`` is the global batch, and each process takes an equal
shard of every global batch, so the learning rate needs no rescaling.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import set_seed

from . import checkpoint as checkpoint_io
from . import runs
from .config import ConfigError, TrainConfig, check_batch
from .data import PairedMnist, load_mnist, make_splits, steps_per_epoch, train_batches
from .evaluate import evaluate_counts
from .metrics import loss_fn, summarize
from .model import build_model, count_parameters, param_groups
from .report import write_report

Report = Callable[[dict[str, Any]], None]


def resolve_mixed_precision(requested: str, cuda: bool) -> str:
    """'auto' -> 'bf16' where the hardware has native bf16 (Ampere+ GPUs, AMX/AVX512-BF16 CPUs), else 'no'."""
    if requested != "auto":
        return requested
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    native = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return "bf16" if native else "no"


def process_state() -> PartialState:
    """This process's place in the launch (joins the process group under ``accelerate launch``).

    ``cpu=True`` without CUDA: otherwise several CPU processes would each train alone instead of
    joining one gloo group.
    """
    return PartialState(cpu=not torch.cuda.is_available())


def make_accelerator(config: TrainConfig) -> Accelerator:
    """A fresh Accelerator for one run (several runs may share a process: benchmarks, tests, sweeps)."""
    # Accelerate keeps mixed precision and accumulation in process-wide singletons and refuses a
    # second Accelerator with other settings. Reset them (not the distributed PartialState, which
    # owns the process group) so that each fit() gets exactly its config's settings.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    cuda = torch.cuda.is_available()
    process_state()  # the same process group whoever asks first
    tracking = config.log_with != "none"
    if tracking and not config.output_dir:
        raise ConfigError(f"--log-with {config.log_with} needs a run folder: pass --output-dir")
    if tracking and importlib.util.find_spec(config.log_with) is None:
        raise ConfigError(f"--log-with {config.log_with} needs the {config.log_with} package: "
                          f"pip install -e \".[{config.log_with}]\"")
    return Accelerator(cpu=not cuda, mixed_precision=resolve_mixed_precision(config.mixed_precision, cuda),
                       gradient_accumulation_steps=config.gradient_accumulation_steps,
                       log_with=config.log_with if tracking else None,
                       project_dir=config.output_dir if tracking else None)


def make_optimizer(model: torch.nn.Module, config: TrainConfig, total_steps: int):
    groups = param_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))
    if config.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=config.warmup,
            cycle_momentum=False, div_factor=25.0, final_div_factor=1e3)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return optimizer, scheduler


def fit(config: TrainConfig, report: Report | None = None, data: PairedMnist | None = None,
        progress: bool = True, test_every_epoch: bool = False, resume: bool = False,
        warn: Callable[[str], None] = print, score_test: bool = True,
        on_checkpoint: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Train ``config``; call ``report(row)`` after every epoch on every process; return final metrics.

    ``data`` skips reading MNIST (tests and benchmarks pass their own). When ``config.output_dir``
    is set, the main process writes the run folder there (the caller checked it may) and every
    process joins in saving checkpoints; ``resume`` continues from its newest valid checkpoint.
    With ``test_every_epoch`` the test set is also scored each epoch (benchmarks only: never for
    selection); with ``score_test=False`` it is never scored (sweep trials select on validation,
    and the run folder then gets no test-set report). ``on_checkpoint(path)`` is called on every
    process after each checkpoint is written (an epoch's comes just before its ``report``).
    """
    accelerator = make_accelerator(config)
    world, rank = accelerator.num_processes, accelerator.process_index
    micro = config.gradient_accumulation_steps
    run_dir = Path(config.output_dir) if config.output_dir else None
    if resume and run_dir is None:
        raise ConfigError("resuming needs the run folder: pass --resume RUN_DIR")
    set_seed(config.seed)  # model initialisation; data order has its own (seed, epoch) generators

    if data is None:
        data = make_splits(load_mnist(config.data_dir), config.val_size)
    data = data.limited(config.train_limit, config.eval_limit)
    check_batch(config, len(data.train), world)
    device = accelerator.device
    train, val, test = data.train.to(device), data.val.to(device), data.test.to(device)

    model = build_model(config.preset, config.width).to(memory_format=torch.channels_last)
    n_params = count_parameters(model)
    steps = steps_per_epoch(len(train), config.batch_size)
    optimizer, scheduler = make_optimizer(model, config, total_steps=steps * config.epochs)
    # The scheduler is not prepared: Accelerate would step it once per process, but each of our
    # steps already consumes a whole global batch. It is registered so checkpoints include it.
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    main = accelerator.is_main_process
    setup = {"num_processes": world, "distributed_type": str(accelerator.distributed_type.value),
             "mixed_precision": accelerator.mixed_precision, "device": str(device),
             "global_batch_size": config.batch_size, "per_process_batch_size": config.batch_size // world,
             "micro_batch_size": config.batch_size // world // micro, "params": n_params}

    # Where to start: from scratch, or from the newest valid checkpoint.
    history: list[dict[str, Any]] = []
    start_epoch, start_step, train_seconds, samples_seen = 1, 0, 0.0, 0
    loss_carry = 0.0
    if resume:
        checkpoint, state = checkpoint_io.latest_valid(run_dir, warn=warn if main else lambda _: None)
        if (state["preset"], state["width"]) != (config.preset, config.width):
            raise checkpoint_io.CheckpointError(
                f"checkpoint {checkpoint} was written by preset {state['preset']!r} width {state['width']}, but "
                f"config.json says {config.preset!r} width {config.width}: the checkpoint belongs to another run")
        if state["world"] != world and main:
            warn(f"note: resuming a {state['world']}-process run on {world} processes; "
                 "the global batch is unchanged, so the maths is the same")
        accelerator.load_state(str(checkpoint))
        history, train_seconds = state["history"], state["train_seconds"]
        start_epoch, start_step, loss_carry = state["epoch"], state["step"], state["loss_sum"]
        samples_seen = state["samples_per_process"] * state["world"] // world
        if start_step == steps:  # the checkpoint closed an epoch
            start_epoch, start_step, loss_carry = start_epoch + 1, 0, 0.0
        if main:
            warn(f"resuming from {checkpoint.name}: epoch {start_epoch}, step {start_step}/{steps}")
    if run_dir and main:
        runs.write_config(run_dir, config, setup)
        if resume:  # metrics.jsonl holds exactly the epochs the checkpoint knows about
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))

    if config.log_with != "none":
        # trackers take scalars only; the run folder's config.json has the rest
        hparams = {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(config.log_with, config=hparams)

    def scored(split) -> dict[str, Any]:
        counts = accelerator.reduce(evaluate_counts(model, split, config.eval_batch_size, config.sum_weight,
                                                    rank, world), reduction="sum")
        return summarize(counts)

    def save(epoch: int, step: int, loss_sum: torch.Tensor, seconds: float) -> None:
        state = {"epoch": epoch, "step": step, "global_step": (epoch - 1) * steps + step,
                 # the mean over processes, so that every process resumes from the same running sum
                 "loss_sum": accelerator.reduce(loss_sum.clone(), reduction="mean").item(), "train_seconds": seconds,
                 "history": history, "preset": config.preset, "width": config.width, "world": world,
                 "samples_per_process": samples_seen}
        path = checkpoint_io.save_checkpoint(accelerator, run_dir, state["global_step"], state, config.keep_checkpoints)
        if on_checkpoint is not None:
            on_checkpoint(path)

    bar = _Progress(enabled=progress and main, epochs=config.epochs, steps=steps)
    with bar:
        for epoch in range(start_epoch, config.epochs + 1):
            model.train()
            first = start_step if epoch == start_epoch else 0
            loss_sum = torch.full((), loss_carry if epoch == start_epoch else 0.0, device=device)
            bar.start_epoch(epoch, first)
            start = time.perf_counter()
            batches = train_batches(train, config.batch_size, config.seed, epoch, config.shift, rank, world, first)
            for step, (images, numbers, digits, sums) in enumerate(batches, first + 1):
                for chunk in range(micro):  # gradient accumulation: micro-batches of one global batch
                    part = slice(chunk * len(digits) // micro, (chunk + 1) * len(digits) // micro)
                    with accelerator.accumulate(model):
                        digit_logits, sum_logits = model(images[part], numbers[part])
                        loss = loss_fn(digit_logits, sum_logits, digits[part], sums[part], config.sum_weight,
                                       config.label_smoothing)
                        accelerator.backward(loss)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    loss_sum += loss.detach() / micro
                scheduler.step()
                samples_seen += len(digits)
                if step % config.log_every == 0 or step == steps:
                    # .item() is a device sync: only at log intervals
                    bar.update(step, loss_sum.item() / step,
                               (step - first) * config.batch_size / (time.perf_counter() - start))
                if run_dir and config.checkpoint_every and ((epoch - 1) * steps + step) % config.checkpoint_every == 0 \
                        and step < steps:  # the epoch-end checkpoint below covers step == steps
                    save(epoch, step, loss_sum, train_seconds + time.perf_counter() - start)
            epoch_seconds = time.perf_counter() - start
            train_seconds += epoch_seconds
            train_loss = accelerator.reduce(loss_sum, reduction="mean").item() / steps
            row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
            row.update({f"val_{k}": v for k, v in scored(val).items()})
            if test_every_epoch:
                row.update({f"test_{k}": v for k, v in scored(test).items()})
            row.update({"images_per_s": (steps - first) * config.batch_size / epoch_seconds,
                        "epoch_seconds": epoch_seconds, "train_seconds": train_seconds,
                        "lr": scheduler.get_last_lr()[0]})
            history.append(row)
            if run_dir and main:
                runs.append_jsonl(run_dir / "metrics.jsonl", row)
            if run_dir:
                save(epoch, steps, loss_sum, train_seconds)
            if config.log_with != "none":
                accelerator.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            if report is not None:
                report(row)

    per_process = accelerator.gather(torch.tensor([samples_seen], device=device)).tolist()
    setup["train_samples_per_process"] = per_process
    test_metrics = (_strip(history[-1], "test_") if test_every_epoch  # score the test set once
                    else scored(test) if score_test else None)
    final = {"val": _strip(history[-1], "val_"), "test": test_metrics, "params": n_params,
             "train_seconds": train_seconds, "epochs": config.epochs,
             "images_per_s": steps * config.batch_size * config.epochs / max(train_seconds, 1e-9), "setup": setup}
    if run_dir and main:
        unwrapped = accelerator.unwrap_model(model)
        runs.save_weights(unwrapped, run_dir / "model.safetensors", config)
        runs.write_json(run_dir / "metrics.json", final)
        from .plots import plot_curves

        plot_curves(history, run_dir / "curves.png", title=f"{config.preset} (width {config.width}), seed {config.seed}",
                    label_smoothing=config.label_smoothing)
        if score_test:
            write_report(unwrapped, test, run_dir, config.eval_batch_size)
    if config.log_with != "none":
        accelerator.end_training()
    accelerator.wait_for_everyone()
    final["history"] = history
    return final


def _strip(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}


class _Progress:
    """A rich epoch/step bar with loss and throughput, or nothing (non-main processes, tests)."""

    def __init__(self, enabled: bool, epochs: int, steps: int) -> None:
        self.enabled, self.epochs, self.steps = enabled, epochs, steps
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                                     TextColumn("{task.fields[speed]:,.0f} img/s"), TimeElapsedColumn(), transient=False)
            self.task = None

    def __enter__(self) -> "_Progress":
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.progress.stop()

    def start_epoch(self, epoch: int, first_step: int = 0) -> None:
        if self.enabled:
            self.task = self.progress.add_task("train", total=self.steps, completed=first_step, epoch=epoch,
                                               epochs=self.epochs, loss=float("nan"), speed=0.0)

    def update(self, step: int, loss: float, speed: float) -> None:
        if self.enabled:
            self.progress.update(self.task, completed=step, loss=loss, speed=speed)
