"""Evaluation: counts on a split (fixed numbers, or all ten numbers per image), predictions, the
split a run is scored on, and the device and precision it was trained with. Pure torch."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .config import ConfigError, TrainConfig
from .data import DataError, Split, eval_batches, load_mnist, make_splits
from .errors import shown
from .metrics import COUNT_KEYS, batch_counts


@torch.no_grad()
def evaluate_counts(model: nn.Module, split: Split, batch_size: int = 1000, sum_weight: float = 0.5,
                    rank: int = 0, world: int = 1) -> torch.Tensor:
    """Summed counts (COUNT_KEYS order) over this process's shard of ``split``; no cross-process sum."""
    was_training = model.training
    model.eval()
    total = torch.zeros(len(COUNT_KEYS), dtype=torch.float64, device=split.images.device)
    for images, numbers, digits, sums in eval_batches(split, batch_size, rank, world):
        digit_logits, sum_logits = model(images, numbers)
        total += batch_counts(digit_logits, sum_logits, digits, sums, sum_weight)
    model.train(was_training)
    return total


@torch.no_grad()
def evaluate_all_numbers(model: nn.Module, split: Split, batch_size: int = 1000, sum_weight: float = 0.5) -> torch.Tensor:
    """Counts over every image paired with every number 0..9 (10 x len(split) pairs).

    The fixed test pairs cover each (digit, number) cell only ~100 times; this checks that the sum
    head adds correctly for every number, not just the ones each image happened to draw.
    """
    total = torch.zeros(len(COUNT_KEYS), dtype=torch.float64, device=split.images.device)
    for r in range(10):
        numbers = torch.full_like(split.digits, r)
        total += evaluate_counts(model, Split(split.images, split.digits, numbers), batch_size, sum_weight)
    return total


@torch.no_grad()
def predictions(model: nn.Module, split: Split, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted digits and sums for every pair of ``split`` (on the CPU)."""
    was_training = model.training
    model.eval()
    digit_pred, sum_pred = [], []
    for images, numbers, _, _ in eval_batches(split, batch_size):
        digit_logits, sum_logits = model(images, numbers)
        digit_pred.append(digit_logits.argmax(1).cpu())
        sum_pred.append(sum_logits.argmax(1).cpu())
    model.train(was_training)
    return torch.cat(digit_pred), torch.cat(sum_pred)


def run_split(config: TrainConfig, data_dir: str | os.PathLike | None = None, download: bool = True,
              split: str = "test") -> Split:
    """The test (or, ``split="val"``, validation) pairs a run was scored on: its data folder (unless
    ``data_dir``), its --val-size and its --eval-limit (a --smoke run scored 1,000 pairs), so the
    figures match its metrics.json."""
    if split == "val" and config.val_size == 0:
        raise ConfigError("this run trained on every training image (--val-size 0): it has no validation "
                          "split; use --split test")
    folder = data_dir if data_dir is not None else config.data_dir
    named_by_file = data_dir is None and config.data_dir is not None  # config.json is a file of the run: anyone's
    try:
        mnist = load_mnist(folder, download=download and not named_by_file)
    except DataError:
        if not named_by_file:
            raise
        raise DataError(f"MNIST not found in {shown(str(folder))}, the data folder the run's config.json names (a "
                        "folder a run's file names is read, never created or downloaded into): pass --data-dir "
                        "pointing to a folder that holds MNIST/raw/*-ubyte") from None
    splits = make_splits(mnist, config.val_size, eval_limit=config.eval_limit)
    return splits.val if split == "val" else splits.test


def training_device(setup: dict[str, Any]) -> str:
    """Where the run trained, if this machine has it: the same kernels give the same figures as
    metrics.json. A GPU run is scored on the CPU where there is no GPU."""
    return "cuda" if str(setup.get("device", "cpu")).startswith("cuda") and torch.cuda.is_available() else "cpu"


def training_precision(setup: dict[str, Any], device: str) -> torch.autocast:
    """Autocast as in training (bf16 or not), so re-scored figures match the run's metrics.json."""
    return torch.autocast(device, dtype=torch.bfloat16, enabled=setup.get("mixed_precision") == "bf16")
