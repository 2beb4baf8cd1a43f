"""The names in a run folder, in one place. Standard library only: ``catalog`` (``mnist-addition
runs``) lists run folders without loading torch.

A run folder holds ``config.json`` (the config, how it trained, when), ``metrics.jsonl`` (one row per
epoch), ``checkpoints/``, and once finished ``model.safetensors``, ``curves.png``, the pictures and,
written last, ``metrics.json``. ``trackers.json`` names the experiment-tracker runs it logs to (a
resumed run continues them); ``status.json`` says why an unfinished run stopped.
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.json"
HISTORY = "metrics.jsonl"
FINISHED = "metrics.json"  # written last: a run without it has not finished (resume finishes it)
WEIGHTS = "model.safetensors"
CURVES = "curves.png"
TRACKERS = "trackers.json"
STATUS = "status.json"
REPORT_FILES = ("confusion_digit.png", "confusion_sum.png", "samples.png", "mistakes.png")
RUN_FILES = (CONFIG, HISTORY, FINISHED, WEIGHTS, CURVES, *REPORT_FILES, TRACKERS, STATUS)
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
RUN_DIRS = (CHECKPOINTS, TENSORBOARD)
LOCK = ".lock"

# A sweep's folder (STORAGE/NAME): sweep.json first (what was asked), the results files at the end.
SWEEP_FILE, CSV_FILE, BEST_FILE, PLOT_FILE, SUMMARY_FILE = (
    "sweep.json", "trials.csv", "best_config.json", "sweep.png", "summary.json")
PARETO_CSV, PARETO_PLOT = "pareto.csv", "pareto.png"  # a multi-objective sweep's front


def is_run_dir(folder: Path) -> bool:
    """config.json and what only training leaves beside it (a tracker's copy of config.json is no run)."""
    import os

    from .files import is_real_file

    return is_real_file(folder / CONFIG) and any(os.path.lexists(folder / name) for name in (HISTORY, CHECKPOINTS, LOCK))
