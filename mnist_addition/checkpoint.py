"""Training-state checkpoints in a run folder: atomic, verified, pruned.

A checkpoint is ``RUN/checkpoints/step-00000123/``: Accelerate's ``save_state`` files (model,
optimizer, RNG states; the learning rate is a pure function of the step, so there is no scheduler
state) plus ``trainer_state.json`` (epoch, step, history so far) and a ``MANIFEST.json`` of every file's size and SHA-256, written last. Everything is first written to
``.tmp-step-...`` and renamed into place, so a crash mid-write never leaves a checkpoint that looks
valid; a checkpoint damaged later fails its manifest check and the previous one is used.

No Accelerate import here: the accelerator is passed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from .errors import UserError

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
MANIFEST = "MANIFEST.json"
PREFIX = "step-"


class CheckpointError(UserError):
    """No usable checkpoint; the message says where we looked and what to do."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def checkpoint_dir(run_dir: str | os.PathLike, global_step: int) -> Path:
    """Where the checkpoint of ``global_step`` lives in a run folder."""
    return Path(run_dir) / CHECKPOINTS / f"{PREFIX}{global_step:08d}"


def save_checkpoint(accelerator: Any, run_dir: Path, global_step: int, state: dict[str, Any], keep: int) -> Path:
    """Save the full training state for ``global_step``; every process must call this."""
    final = checkpoint_dir(run_dir, global_step)
    root = final.parent
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # the remains of a crash mid-write
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # main writes model/optimizer; each process its RNG state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state))
        manifest = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if final.exists():  # the same step saved again after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The trainer state (epoch, step, history, ...) saved in a checkpoint folder."""
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def restore_into(run_dir: str | os.PathLike, checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Copy a checkpoint folder written by ``save_checkpoint`` (e.g. one handed back by Ray Tune)
    into ``run_dir``, where ``fit(..., resume=True)`` finds it; returns its trainer state."""
    state = read_state(checkpoint)
    shutil.copytree(checkpoint, checkpoint_dir(run_dir, state["global_step"]))
    return state


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders, oldest first (temporary folders are not checkpoints)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def verify(checkpoint: Path) -> str | None:
    """None if every file matches the manifest, else what is wrong (one phrase)."""
    try:
        manifest = json.loads((checkpoint / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return "no readable MANIFEST.json"
    for name, want in manifest.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["bytes"] or _sha256(path) != want["sha256"]:
            return f"{name} does not match its checksum"
    return None


def latest_valid(run_dir: Path, warn: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint that passes its manifest check, and its trainer state."""
    run_dir = Path(run_dir)
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir} has no checkpoints: it was never checkpointed (train it again, "
                              f"without --resume)")
    for checkpoint in reversed(found):
        problem = verify(checkpoint)
        if problem is None:
            return checkpoint, read_state(checkpoint)
        warn(f"warning: checkpoint {checkpoint} is corrupt ({problem}); trying the previous one")
    raise CheckpointError(f"every checkpoint in {run_dir / CHECKPOINTS} is corrupt: train again without --resume")
