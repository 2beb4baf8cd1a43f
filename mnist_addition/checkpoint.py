"""Training-state checkpoints in a run folder: atomic, verified, pruned, and never unpickled.

A checkpoint is ``RUN/checkpoints/step-00000123/``:

* ``model.safetensors`` - the model's state_dict (parameters and BatchNorm statistics);
* ``optimizer.safetensors`` + ``optimizer.json`` - the optimizer's per-parameter tensors (moments,
  step counts) and its hyperparameter groups;
* ``trainer_state.json`` - epoch, step, running loss, history so far (``state.TrainState``);
* ``MANIFEST.json`` - every file's size and SHA-256, written last.

Nothing else is needed to resume bit for bit: the learning rate is a pure function of the step and
every random draw comes from generators seeded by (seed, epoch). No file is ever read with pickle,
so a checkpoint from someone else's machine cannot run code; files a checkpoint should not have
(Accelerate's old ``*.pkl``/``*.bin``) are never opened. Everything is first written to
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

import torch

from .errors import UserError

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_GROUPS = "optimizer.json"
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


def save_checkpoint(accelerator: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run_dir: Path,
                    global_step: int, state: dict[str, Any], keep: int) -> Path:
    """Save the full training state for ``global_step``; every process must call this (the main
    process writes: data-parallel processes hold the same weights and optimizer state)."""
    final = checkpoint_dir(run_dir, global_step)
    root = final.parent
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # the remains of a crash mid-write
        tmp.mkdir()
        write_training_state(tmp, accelerator.unwrap_model(model), optimizer, state)
        manifest = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if final.exists():  # the same step saved again after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def write_training_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict[str, Any]) -> None:
    """Model and optimizer as safetensors + JSON, the trainer state as JSON: no pickle anywhere."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / MODEL_FILE))
    saved = optimizer.state_dict()
    tensors = {f"{index}.{name}": value.detach().cpu().contiguous()
               for index, values in saved["state"].items() for name, value in values.items()}
    others = {str(index): {name: value for name, value in values.items() if not torch.is_tensor(value)}
              for index, values in saved["state"].items()}
    save_file(tensors, str(folder / OPTIMIZER_TENSORS))
    (folder / OPTIMIZER_GROUPS).write_text(json.dumps({"param_groups": saved["param_groups"], "scalars": others}))
    (folder / STATE_FILE).write_text(json.dumps(state))


def load_training_state(checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load ``write_training_state``'s files into ``model`` (unwrapped) and ``optimizer``; a file
    that is not what it should be is a CheckpointError naming it (never unpickled, never run)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not (checkpoint / OPTIMIZER_TENSORS).is_file() and (checkpoint / "optimizer.bin").is_file():
        raise CheckpointError(f"{checkpoint} was written by an older mnist-addition in Accelerate's pickle-based "
                              "format, which is not loaded (it could run code): train again without --resume")
    name = MODEL_FILE
    try:
        model.load_state_dict(load_file(str(checkpoint / MODEL_FILE)))
        name = OPTIMIZER_GROUPS
        groups = json.loads((checkpoint / OPTIMIZER_GROUPS).read_text())
        name = OPTIMIZER_TENSORS
        per_param: dict[int, dict[str, Any]] = {}
        for key, value in load_file(str(checkpoint / OPTIMIZER_TENSORS)).items():
            index, field = key.split(".", 1)
            per_param.setdefault(int(index), {})[field] = value
        for index, values in groups["scalars"].items():
            per_param.setdefault(int(index), {}).update(values)
        optimizer.load_state_dict({"state": per_param, "param_groups": groups["param_groups"]})
    except (OSError, SafetensorError, ValueError, KeyError, TypeError, RuntimeError) as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CheckpointError(f"{checkpoint / name} cannot be loaded ({reason}): the checkpoint does not belong to "
                              "this run or was altered; remove that checkpoint folder to resume from the one "
                              "before, or train again without --resume") from None


# What trainer_state.json must hold, and of which types (see state.TrainState.to_dict).
STATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "epoch": int, "step": int, "global_step": int, "loss_sum": (int, float), "train_seconds": (int, float),
    "history": list, "preset": str, "width": int, "world": int, "samples_per_process": int}


def read_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The trainer state (epoch, step, history, ...) saved in a checkpoint folder, checked field by field."""
    path = Path(checkpoint) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({type(e).__name__}): remove that checkpoint folder to "
                              "resume from the one before, or train again without --resume") from None
    for name, kind in STATE_FIELDS.items():
        value = state.get(name) if isinstance(state, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(f"{path} has no valid {name!r} (got {value!r}): the file was altered; remove that "
                                  "checkpoint folder to resume from the one before, or train again without --resume")
    return state


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
