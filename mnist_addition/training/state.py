"""What a training run holds: ``Run`` (built once by ``setup.setup``) and ``TrainState`` (where
training stands; saved in every checkpoint as ``trainer_state.json``, JSON, no pickle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..core import hparams
from ..core.average import WeightAverage
from ..core.config import TrainConfig
from ..core.data import Split


@dataclass(kw_only=True)
class Run:
    """Everything one fit() works with, built once by ``setup.setup``."""

    config: TrainConfig
    accelerator: Any  # accelerate.Accelerator (not imported here)
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_of: Callable[..., torch.Tensor]  # (images, numbers, digits, sums) -> loss; maybe compiled
    lr_at: Callable[[int], float]  # the learning rate of a 0-based global step
    train: Split
    val: Split
    test: Split
    steps: int  # optimizer steps per epoch
    setup: dict[str, Any]  # device, precision, processes, batch sizes: config.json's "setup"
    run_dir: Path | None
    hparams: dict[str, float]  # the scheduled values held in the epoch (hparams.SCHEDULED; step.hold sets them)
    tracker_ids: dict[str, dict[str, str]] = field(default_factory=dict)  # trackers.json of a resumed run
    began: bool = False  # training began (loop.begin): a failure from here on is the run's (status.json)
    weights_from: str | None = None  # whose weights a continued run copied (the next epoch's row says it)
    average: WeightAverage | None = None  # --ema: the moving average of the weights
    trackers_lost: bool = False  # a tracker's store failed mid-run: logging stopped, training went on

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights the run evaluates, tests and saves: the moving average with --ema, else the model's."""
        return self.average.module if self.average is not None else self.model

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def identity(self) -> dict[str, Any]:
        """What a checkpoint records of the run that wrote it (checked when it is loaded), and its
        schedule (``hparams.segments``: what a run continuing from it continues)."""
        return {"preset": self.config.preset, "width": self.config.width, "world": self.world,
                "schedule": hparams.segments(self.config)}


@dataclass
class TrainState:
    """Where training stands."""

    steps: int  # optimizer steps per epoch (follows from the config and the data: not saved)
    epoch: int = 1  # the epoch in progress (1-based)
    step: int = 0  # steps done in that epoch
    loss_sum: float = 0.0  # summed training loss of those steps (mean over processes)
    train_seconds: float = 0.0  # of finished epochs (the epoch in progress adds its own)
    samples_per_process: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics row per finished epoch

    @property
    def global_step(self) -> int:
        """Optimizer steps done since the start of the run."""
        return (self.epoch - 1) * self.steps + self.step

    def advance(self, samples: int) -> None:
        """One optimizer step done on ``samples`` images of this process."""
        self.step += 1
        self.samples_per_process += samples

    def next_epoch(self) -> None:
        self.epoch, self.step, self.loss_sum = self.epoch + 1, 0, 0.0

    def state_dict(self, identity: dict[str, Any]) -> dict[str, Any]:
        """``trainer_state.json`` (``checkpoint.SAVED_FIELDS``): the fields, the global step and the run's ``identity``."""
        return {"epoch": self.epoch, "step": self.step, "global_step": self.global_step, "loss_sum": self.loss_sum,
                "train_seconds": self.train_seconds, "history": self.history,
                "samples_per_process": self.samples_per_process, **identity}

    @classmethod
    def from_saved(cls, saved: dict[str, Any], steps: int, world: int) -> "TrainState":
        """The state a saved ``state_dict`` describes, for ``world`` processes (the images seen are
        shared out again; the global batch, and so the maths, is the same)."""
        return cls(steps, saved["epoch"], saved["step"], saved["loss_sum"], saved["train_seconds"],
                   saved["samples_per_process"] * saved["world"] // world, list(saved["history"]))
