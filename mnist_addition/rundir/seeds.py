"""Several seeds of one config: their run folders side by side, and their checkpoints as one.

``train --seeds K`` and a K-seed sweep trial write one whole run folder per seed,
``RUN/seed-<s>/`` (seeds ``s = seed, seed+1, ... seed+K-1``). A K-seed trial's checkpoint is a
folder of ``seed-<s>/`` checkpoints, one per seed, all of the same epoch; a one-seed checkpoint is
the checkpoint folder itself, as it always was. The helpers here read both.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, read_state, restore_into, verify
from .names import SEED_PREFIX


def seeds_of(first: int, count: int) -> list[int]:
    """The seeds a K-seed run trains: ``first`` and the ``count - 1`` after it."""
    return [first + i for i in range(count)]


def seed_dir(parent: str | os.PathLike, seed: int) -> Path:
    return Path(parent) / f"{SEED_PREFIX}{seed}"


def parts(folder: str | os.PathLike) -> dict[int | None, Path]:
    """A checkpoint's per-seed checkpoints by seed; ``{None: folder}`` for a one-seed checkpoint."""
    folder = Path(folder)
    found = {int(p.name[len(SEED_PREFIX):]): p for p in folder.iterdir()
             if p.is_dir() and p.name.startswith(SEED_PREFIX) and p.name[len(SEED_PREFIX):].isdigit()}
    return dict(sorted(found.items())) or {None: folder}


def combine(checkpoints: dict[int, Path], into: Path) -> Path:
    """One checkpoint folder holding each seed's (hard links where the file system allows: no copy)."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    for seed, checkpoint in checkpoints.items():
        shutil.copytree(checkpoint, seed_dir(into, seed), copy_function=_link_or_copy)
    return into


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def problem(folder: Path) -> str | None:
    """None if every seed's checkpoint matches its manifest and all hold the same epoch, else what is wrong."""
    epochs = set()
    for seed, part in parts(folder).items():
        wrong = verify(part)
        if wrong is not None:
            return wrong if seed is None else f"seed {seed}: {wrong}"
        try:
            epochs.add(read_state(part)["epoch"])
        except CheckpointError as e:
            return str(e)
    return None if len(epochs) == 1 else f"its seeds hold different epochs ({sorted(epochs)})"


def epoch_of(folder: str | os.PathLike) -> int:
    """The epoch a (one- or K-seed) checkpoint ends (its seeds' lowest)."""
    return min(read_state(part)["epoch"] for part in parts(folder).values())


def histories(folder: str | os.PathLike) -> list[list[dict[str, Any]]]:
    """Each seed's history rows as its checkpoint holds them."""
    return [read_state(part)["history"] for part in parts(folder).values()]


def restore_each(run_dir: Path, folder: str | os.PathLike) -> None:
    """Put each seed's checkpoint into its run folder (``run_dir/seed-<s>``; a one-seed one into ``run_dir``)."""
    for seed, part in parts(folder).items():
        target = run_dir if seed is None else seed_dir(run_dir, seed)
        target.mkdir(parents=True, exist_ok=True)
        restore_into(target, part)
