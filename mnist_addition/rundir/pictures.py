"""The pictures of a finished run (``mnist-addition report`` redraws them): confusion matrices, sample
predictions, mistakes. Which files they are is ``runs.REPORT_FILES``. Pure torch (and matplotlib)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..core.data import MEAN, STD, Split
from ..core.evaluation import predictions, run_split, training_precision
from .plots import plot_confusion, plot_examples

__all__ = ["redraw", "write_pictures"]


def write_pictures(model: nn.Module, test: Split, run_dir: Path, batch_size: int = 1000, max_mistakes: int = 48) -> dict:
    """Score ``test`` once and write the four pictures of ``runs.REPORT_FILES`` into ``run_dir``."""
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


def redraw(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, download: bool = True) -> dict:
    """Draw a saved run's pictures again, from its weights and test pairs (on the CPU, at its precision)."""
    from .contents import load_run, write_failed

    config, model, setup = load_run(run_dir)
    test = run_split(config, data_dir, download)
    try:
        with training_precision(setup, "cpu"):
            return write_pictures(model, test, Path(run_dir), config.eval_batch_size)
    except OSError as e:
        raise write_failed(e, "") from None  # the pictures belong in the run folder: nothing else to choose
