"""The pictures of a finished run: confusion matrices, sample predictions, mistakes. Pure torch."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .data import MEAN, STD, Split
from .evaluate import predictions
from .plots import plot_confusion, plot_examples
from .runs import REPORT_FILES

__all__ = ["REPORT_FILES", "write_report"]


def write_report(model: nn.Module, test: Split, run_dir: Path, batch_size: int = 1000, max_mistakes: int = 48) -> dict:
    """Score ``test`` once and write the four report pictures into ``run_dir``."""
    digit_pred, sum_pred = predictions(model, test, batch_size)
    images = (test.images.cpu() * STD + MEAN).clamp(0, 1)  # back to [0, 1] for display
    digits, numbers = test.digits.cpu(), test.numbers.cpu()
    sums = digits + numbers
    plot_confusion(digits, digit_pred, 10, run_dir / "confusion_digit.png", "Digit head, test set")
    plot_confusion(sums, sum_pred, 19, run_dir / "confusion_sum.png", "Sum head, test set")
    first = slice(0, 32)
    plot_examples(images[first], numbers[first], digits[first], sums[first], digit_pred[first], sum_pred[first],
                  run_dir / "samples.png", "First 32 test pairs: predicted digit + number = predicted sum")
    wrong = torch.nonzero((digit_pred != digits) | (sum_pred != sums)).flatten()
    shown = wrong[:max_mistakes]
    plot_examples(images[shown], numbers[shown], digits[shown], sums[shown], digit_pred[shown], sum_pred[shown],
                  run_dir / "mistakes.png", f"Test pairs with a wrong digit or sum: {len(wrong)} of {len(digits)}"
                  + (f" (first {len(shown)} shown)" if len(wrong) > len(shown) else ""))
    return {"mistakes": int(len(wrong)), "n": int(len(digits))}
