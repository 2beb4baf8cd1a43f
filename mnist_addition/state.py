"""What a training run holds: ``Run`` (built once by ``train.setup``) and ``TrainState`` (where
training stands, saved in every checkpoint as JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .config import TrainConfig
from .data import Split


@dataclass
class Run:
    """Everything one fit() works with, built once by ``setup``."""

    config: TrainConfig
    accelerator: Any  # accelerate.Accelerator (not imported here)
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_of: Callable[..., torch.Tensor]  # (images, numbers, digits, sums) -> loss; maybe compiled
    lr_at: Callable[[int], float]
    train: Split
    val: Split
    test: Split
    steps: int  # optimizer steps per epoch
    setup: dict[str, Any]
    run_dir: Path | None

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


@dataclass
class TrainState:
    """Where training stands; what every checkpoint's trainer_state.json holds (JSON, no pickle)."""

    epoch: int = 1  # the epoch in progress (1-based)
    step: int = 0  # steps done in that epoch
    loss_sum: float = 0.0  # summed training loss of those steps (mean over processes)
    train_seconds: float = 0.0
    samples_per_process: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, run: Run) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "global_step": (self.epoch - 1) * run.steps + self.step,
                "loss_sum": self.loss_sum, "train_seconds": self.train_seconds, "history": self.history,
                "preset": run.config.preset, "width": run.config.width, "world": run.world,
                "samples_per_process": self.samples_per_process}
