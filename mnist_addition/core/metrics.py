"""Losses and metrics as plain functions. Count, don't average: counts are summed (across batches
and processes) and divided once, so the result is exact whatever the sharding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The order of the count vector that crosses process boundaries in one all-reduce.
COUNT_KEYS = ("loss_sum", "n", "digit_correct", "sum_correct", "both_correct", "sum_right_digit_wrong")


def loss_fn(digit_logits: torch.Tensor, sum_logits: torch.Tensor, digits: torch.Tensor, sums: torch.Tensor,
            sum_weight: float = 0.5, label_smoothing: float = 0.0) -> torch.Tensor:
    """(1 - w) * CE(digit) + w * CE(sum), averaged over the batch. w = 0.5 is the seed's plain average."""
    digit_loss = F.cross_entropy(digit_logits.float(), digits, label_smoothing=label_smoothing)
    sum_loss = F.cross_entropy(sum_logits.float(), sums, label_smoothing=label_smoothing)
    return (1.0 - sum_weight) * digit_loss + sum_weight * sum_loss


def batch_counts(digit_logits: torch.Tensor, sum_logits: torch.Tensor, digits: torch.Tensor, sums: torch.Tensor,
                 sum_weight: float = 0.5) -> torch.Tensor:
    """Counts for one batch, as a float64 vector in COUNT_KEYS order (stays on the device: no sync)."""
    digit_ok = digit_logits.argmax(dim=1) == digits
    sum_ok = sum_logits.argmax(dim=1) == sums
    loss = loss_fn(digit_logits, sum_logits, digits, sums, sum_weight) * len(digits)
    return torch.stack([
        loss.double(),
        torch.tensor(len(digits), dtype=torch.float64, device=digits.device),
        digit_ok.sum().double(),
        sum_ok.sum().double(),
        (digit_ok & sum_ok).sum().double(),
        (sum_ok & ~digit_ok).sum().double(),
    ])


def summarize(counts: torch.Tensor) -> dict[str, float | int]:
    """Total counts -> ``loss``, ``digit_acc``, ``sum_acc``, ``both_acc`` (fractions), raw counts."""
    c = dict(zip(COUNT_KEYS, counts.tolist()))
    n = max(c["n"], 1.0)
    return {
        "loss": c["loss_sum"] / n,
        "digit_acc": c["digit_correct"] / n,
        "sum_acc": c["sum_correct"] / n,
        "both_acc": c["both_correct"] / n,
        "sum_right_digit_wrong": int(c["sum_right_digit_wrong"]),
        "n": int(c["n"]),
    }
