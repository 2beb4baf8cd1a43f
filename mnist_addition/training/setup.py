"""What one ``fit`` works with, built once: the Accelerator (``make_accelerator``), data on the
device, model, optimizer and the step (``setup`` returns a ``state.Run``), and the run folder the
main process holds (``open_run_folder``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import InitProcessGroupKwargs, set_seed

from ..core import backends, hparams
from ..core.average import WeightAverage
from ..core.backends import resolve_mixed_precision, use_cpu
from ..core.config import ConfigError, TrainConfig, check_batch, check_model_fits
from ..core.data import PairedMnist, load_mnist, make_splits, steps_per_epoch
from ..core.model import build_model, count_parameters, parameter_count
from ..rundir.folder import RunFolder
from . import step, trackers
from .group import main_decides, process_state
from .resume import check_resume
from .state import Run


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
        run.tracker_ids = trackers.resumed_ids(path, run.config)

    folder = RunFolder(run.run_dir, resume, overwrite, also=also if resume else None)
    main_decides(run.accelerator.state, lambda: folder.open() and None)  # the lock stays here, the answer travels
    return folder if run.main else None
