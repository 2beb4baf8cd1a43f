"""The names in a run folder and a sweep folder, and the time stamps in them, in one place.
Standard library only: ``catalog`` (``mnist-addition runs``) lists run folders without torch.

A run folder holds ``config.json`` (the config, how it trained, when), ``metrics.jsonl`` (one row per
epoch), ``checkpoints/``, and once finished ``model.safetensors``, ``curves.png``, the pictures and,
written last, ``metrics.json``. ``trackers.json`` names the experiment-tracker runs it logs to (a
resumed run continues them); ``status.json`` says why an unfinished run stopped.
"""

from __future__ import annotations

import time
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
REPLACED = ".replaced"  # the run --overwrite replaces, set aside until the new run's first checkpoint
ONNX = "model.onnx"  # written into a run folder by `export`

# One checkpoint, checkpoints/step-NNNNNNNN/ (the format: checkpoint.py)
CHECKPOINT_PREFIX = "step-"
STATE_FILE, MODEL_FILE, EMA_FILE = "trainer_state.json", "model.safetensors", "ema.safetensors"
OPTIMIZER_TENSORS, OPTIMIZER_GROUPS, MANIFEST = "optimizer.safetensors", "optimizer.json", "MANIFEST.json"

# A sweep's folder (STORAGE/NAME): sweep.json first (what was asked), the results files at the end.
SWEEP_FILE, CSV_FILE, BEST_FILE, PLOT_FILE, SUMMARY_FILE = (
    "sweep.json", "trials.csv", "best_config.json", "sweep.png", "summary.json")
PARETO_CSV, PARETO_PLOT = "pareto.csv", "pareto.png"  # a multi-objective sweep's front
TUNER_FILE = "tuner.pkl"  # Ray's Tuner, written by Ray straight into the sweep folder
SIGNATURES = "state-signatures.json"  # our signatures of Ray's state (sweep/trust.py)
UNVERIFIED = ".unverified"  # Ray's state that failed its check, set aside (never read)
TRIAL_RUN = "run"  # a trial's run folder, STORAGE/NAME/trial-ID/run
CONTINUED_FROM = "continued-from"  # beside TRIAL_RUN: the checkpoint a PBT trial continues
SEED_PREFIX = "seed-"  # RUN/seed-<s>: one seed of a K-seed run (train --seeds, tune --seeds)
SEEDS_STAGED = "checkpoint-seeds"  # beside TRIAL_RUN: a K-seed trial's newest checkpoints as one, for Ray
SEEDS_FILE = "seeds.json"  # RUN/seeds.json: each seed's final metrics and their mean, spread and worst
TRIAL_LEASE = "attempt.json"  # beside TRIAL_RUN: which attempt of the trial may write (sweep/fencing.py)
TRIAL_HUNG = "hung.json"  # beside TRIAL_RUN: the trial's attempt that --trial-timeout stopped (sweep/watchdog.py)

FOLDER_STAMP = "%Y%m%d-%H%M%S"  # runs/<stamp>, tune-<stamp>
TIME_STAMP = "%Y-%m-%dT%H:%M:%S%z"  # when, in the JSON files (ISO 8601 with the UTC offset)


def stamp(form: str = TIME_STAMP, when: float | None = None) -> str:
    """``when`` (default: now, local time) in one of the two forms above."""
    return time.strftime(form, time.localtime(when))


def is_run_dir(folder: Path) -> bool:
    """config.json and what only training leaves beside it (a tracker's copy of config.json is no run)."""
    import os

    from .files import is_real_file

    return is_real_file(folder / CONFIG) and any(os.path.lexists(folder / name) for name in (HISTORY, CHECKPOINTS, LOCK))
