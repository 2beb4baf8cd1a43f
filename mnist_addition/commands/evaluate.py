"""``mnist-addition evaluate``: a saved run re-scored as it was trained, on its test set or its
validation split."""

from __future__ import annotations

import os
from typing import Any

from ..core.backends import numerics
from ..core.evaluation import evaluate_all_numbers, evaluate_counts, run_split, training_device, training_precision
from ..core.metrics import summarize
from ..rundir.contents import load_run


def evaluate_run(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, all_numbers: bool = False,
                 download: bool = True, tta: int | None = None, split: str = "test") -> dict[str, Any]:
    """A saved run's test metrics, on its training device and precision where this machine has
    them; ``all_numbers`` pairs every test image with all ten numbers (100,000 pairs); ``tta``
    scores with that many views instead of the run's own; ``split="val"`` scores its validation
    split (to choose ``tta`` without looking at the test set)."""
    config, model, setup = load_run(run_dir, tta=tta)
    device = training_device(setup)
    model.to(device)
    pairs = run_split(config, data_dir, download, split).to(device)
    with numerics(cuda=device == "cuda", deterministic=False), training_precision(setup, device):
        counts = (evaluate_all_numbers if all_numbers else evaluate_counts)(
            model, pairs, config.eval_batch_size, config.sum_weight)
    return summarize(counts)
