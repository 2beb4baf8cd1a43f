"""Evaluation on a split, with fixed numbers or with all ten numbers per image. Pure torch."""

from __future__ import annotations

import torch
from torch import nn

from .data import Split, eval_batches
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
