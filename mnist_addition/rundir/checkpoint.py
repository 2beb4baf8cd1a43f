"""Training-state checkpoints in a run folder: atomic, verified, pruned, and never unpickled.

A checkpoint is ``RUN/checkpoints/step-00000123/``:

* ``model.safetensors`` - the model's state_dict (parameters and BatchNorm statistics);
* ``optimizer.safetensors`` + ``optimizer.json`` - the optimizer's per-parameter tensors (moments,
  step counts) and its hyperparameter groups;
* ``ema.safetensors`` - with ``--ema``, the moving average of the weights (``average.py``);
* ``trainer_state.json`` - epoch, step, running loss, history so far (``state.TrainState.state_dict``);
* ``MANIFEST.json`` - every file's size and SHA-256, written last.

Nothing else is needed to resume bit for bit: the learning rate is a pure function of the step and
every random draw comes from generators seeded by (seed, epoch). No file is ever read with pickle,
so a checkpoint from someone else's machine cannot run code; files a checkpoint should not have
(Accelerate's old ``*.pkl``/``*.bin``) are never opened. Everything is first written to
``.tmp-step-...`` and renamed into place, so a crash mid-write never leaves a checkpoint that looks
valid; a checkpoint damaged later fails its manifest check, and one altered so that its manifest
still matches fails the checks of what it holds (types, ranges, shapes, dtypes, finite values,
against the run): either way it is reported in one line and the previous one is used. Links are
never followed: a checkpoint is the files in its own folder.

No Accelerate here: ``checkpointer.Checkpointer`` decides when to save and which process writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..core.errors import UserError, first_line, shown
from ..core.hparams import SCHEDULED
from . import files
from .names import (
    CHECKPOINT_PREFIX,
    CHECKPOINTS,
    EMA_FILE,
    MANIFEST,
    MODEL_FILE,
    OPTIMIZER_GROUPS,
    OPTIMIZER_TENSORS,
    STATE_FILE,
)

if TYPE_CHECKING:
    from ..core.average import WeightAverage


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


REQUIRED = (MODEL_FILE, OPTIMIZER_TENSORS, OPTIMIZER_GROUPS, STATE_FILE)


def checkpoint_dir(run_dir: str | os.PathLike, global_step: int) -> Path:
    """Where the checkpoint of ``global_step`` lives in a run folder."""
    return Path(run_dir) / CHECKPOINTS / f"{CHECKPOINT_PREFIX}{global_step:08d}"


def write_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, run_dir: Path, global_step: int,
                     state: dict[str, Any], average: dict[str, torch.Tensor] | None = None) -> Path:
    """Save the full training state (``model`` unwrapped) as the checkpoint of ``global_step``. The
    main process writes (data-parallel processes hold the same weights and optimizer state)."""
    final = checkpoint_dir(run_dir, global_step)
    root = final.parent
    if not files.is_real_dir(root):
        root.mkdir()  # a link at checkpoints/ fails here (FileExistsError), never written through
    tmp = files.make_temp_dir(root, f".tmp-{final.name}-")  # fresh: nothing in it can be a planted link
    try:
        write_training_state(tmp, model, optimizer, state, average)
        manifest = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(tmp)}
        _write(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
    except BaseException:  # a full disk, Ctrl-C: the half-written checkpoint goes, the ones before it stay
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if files.is_real_dir(final):  # the same step saved again after a resume
        shutil.rmtree(final)
    elif os.path.lexists(final):
        final.unlink()
    os.replace(tmp, final)
    return final


def prune(run_dir: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints (main process)."""
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def write_training_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict[str, Any], average: dict[str, torch.Tensor] | None = None) -> None:
    """Model, optimizer (and the weights' moving average) as safetensors + JSON, the trainer state as
    JSON: no pickle anywhere. ``folder`` is new (``write_checkpoint`` made it), so plain writes
    cannot meet a planted link."""
    from safetensors.torch import save

    _write(folder / MODEL_FILE, save(_on_host(model.state_dict())))
    if average is not None:
        _write(folder / EMA_FILE, save(_on_host(average)))
    saved = optimizer.state_dict()
    tensors = {f"{index}.{name}": value.detach().cpu().contiguous()
               for index, values in saved["state"].items() for name, value in values.items()}
    others = {str(index): {name: value for name, value in values.items() if not torch.is_tensor(value)}
              for index, values in saved["state"].items()}
    _write(folder / OPTIMIZER_TENSORS, save(tensors))
    _write(folder / OPTIMIZER_GROUPS, json.dumps({"param_groups": saved["param_groups"], "scalars": others}).encode())
    _write(folder / STATE_FILE, json.dumps(state).encode())


def _on_host(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _write(path: Path, data: bytes) -> None:
    """One file of a new checkpoint; a full disk is an OSError naming it (not safetensors' own error)."""
    with path.open("xb") as f:
        f.write(data)


def load_training_state(checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load ``write_training_state``'s files into ``model`` (unwrapped) and ``optimizer``. Everything
    is read and checked against the model and optimizer first (names, shapes, dtypes, finite
    values) and only then loaded; a file that is not what it should be is a CheckpointError naming
    it (never unpickled, never run)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not (checkpoint / OPTIMIZER_TENSORS).is_file() and (checkpoint / "optimizer.bin").is_file():
        raise CheckpointError(f"{checkpoint} was written by an older mnist-addition in Accelerate's pickle-based "
                              "format, which is not loaded (it could run code): train again without --resume")
    name = MODEL_FILE
    try:
        weights = load_file(str(checkpoint / MODEL_FILE))
        _check_tensors(weights, model.state_dict())
        name = OPTIMIZER_GROUPS
        groups = json.loads((checkpoint / OPTIMIZER_GROUPS).read_text())
        name = OPTIMIZER_TENSORS
        fresh = optimizer.state_dict()["param_groups"]  # this run's own groups (indices and hyperparameters)
        per_param = _optimizer_state(load_file(str(checkpoint / OPTIMIZER_TENSORS)), groups, optimizer, fresh)
    except (OSError, SafetensorError, ValueError, KeyError, TypeError, RuntimeError, RecursionError) as e:
        raise CheckpointError(f"{checkpoint / name} cannot be loaded ({first_line(e)})") from None
    model.load_state_dict(weights)
    # The hyperparameters are the run's own (config.json cannot change on resume; the lr is set every
    # step): only the per-parameter state comes from the file.
    optimizer.load_state_dict({"state": per_param, "param_groups": fresh})


def load_average(checkpoint: Path, average: WeightAverage) -> bool:
    """Load a checkpoint's ``ema.safetensors`` into ``average``, checked like the model's weights; False if the checkpoint has none (written without --ema)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not files.is_real_file(checkpoint / EMA_FILE):
        return False
    try:
        tensors = load_file(str(checkpoint / EMA_FILE))
        _check_tensors(tensors, average.state_dict())
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"{checkpoint / EMA_FILE} cannot be loaded ({first_line(e)})") from None
    average.load_state_dict(tensors)
    return True


def _check_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    if set(got) != set(want):
        raise ValueError(f"holds {sorted(set(got) ^ set(want))[0]!r}, which the model does not have or lacks")
    for key, tensor in want.items():
        if got[key].shape != tensor.shape or got[key].dtype != tensor.dtype:
            raise ValueError(f"{key} is {got[key].dtype} {tuple(got[key].shape)}, the model's is "
                             f"{tensor.dtype} {tuple(tensor.shape)}")
        if got[key].is_floating_point() and not torch.isfinite(got[key]).all():
            raise ValueError(f"{key} holds NaN or infinite values")


def _optimizer_state(tensors: dict[str, torch.Tensor], groups: Any, optimizer: torch.optim.Optimizer,
                     fresh: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The per-parameter state of ``optimizer.json`` + ``optimizer.safetensors``, checked against the
    optimizer's parameters (every moment has its parameter's shape and dtype, and is finite)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not isinstance(groups, dict) or not isinstance(groups.get("param_groups"), list) or \
            [g.get("params") if isinstance(g, dict) else None for g in groups["param_groups"]] != \
            [g["params"] for g in fresh] or not isinstance(groups.get("scalars"), dict):
        raise ValueError("its parameter groups are not this model's")
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, field = key.split(".", 1)
        i = int(index)
        if not 0 <= i < len(params):
            raise ValueError(f"state for parameter {i}, of {len(params)}")
        want = () if field == "step" else params[i].shape
        if value.shape != want or not value.is_floating_point() or not torch.isfinite(value).all():
            raise ValueError(f"{key} is {value.dtype} {tuple(value.shape)} (or not finite), not float {tuple(want)}")
        per_param.setdefault(i, {})[field] = value.to(params[i].dtype) if field != "step" else value
    for index, values in groups["scalars"].items():
        i = int(index)
        if not 0 <= i < len(params) or not isinstance(values, dict) or \
                not all(v is None or isinstance(v, (bool, int, float)) for v in values.values()):
            raise ValueError(f"scalars for parameter {shown(index)} are not plain values")
        per_param.setdefault(i, {}).update(values)
    return per_param


# What trainer_state.json holds, and of which types: the training loop's state (``TrainState``),
# the global step, and the writing run's identity (``Run.identity``).
SAVED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "epoch": int, "step": int, "global_step": int, "loss_sum": (int, float), "train_seconds": (int, float),
    "history": list, "preset": str, "width": int, "world": int, "samples_per_process": int, "schedule": list}
# The plot and the reports read these of every history row; every value of a row is a finite number.
HISTORY_KEYS = ("epoch", "train_loss")
# ... and these of every row of a run with a validation split (none has them: a --val-size 0 refit)
VAL_KEYS = ("val_loss", "val_digit_acc", "val_sum_acc", "val_both_acc")
WEIGHTS_FROM = "weights_from"  # the one text of a row: whose weights a continued run copied before this epoch
MAX_COUNT = 2**62  # epochs, steps, samples: any larger is an altered file (and would overflow int64)


def read_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The trainer state (epoch, step, history, ...) saved in a checkpoint folder, checked field by
    field: types, ranges, and a history of one well-formed row per finished epoch."""
    path = Path(checkpoint) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be a trainer state") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({type(e).__name__})") from None
    for name, kind in SAVED_FIELDS.items():
        value = state.get(name) if isinstance(state, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(f"{path} has no valid {name!r} (got {shown(value)})")
    problem = _out_of_range(state)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return state


def _out_of_range(state: dict[str, Any]) -> str | None:
    for name in ("epoch", "width", "world"):
        if not 1 <= state[name] <= MAX_COUNT:
            return f"{name} {shown(state[name])} is out of range"
    for name in ("step", "global_step", "samples_per_process"):
        if not 0 <= state[name] <= MAX_COUNT:
            return f"{name} {shown(state[name])} is out of range"
    for name in ("loss_sum", "train_seconds"):
        if not (math.isfinite(state[name]) and 0 <= state[name]):
            return f"{name} {shown(state[name])} is not a finite number >= 0"
    first = state["history"][0] if state["history"] else {}
    validated = isinstance(first, dict) and VAL_KEYS[0] in first  # every row as the first: validated, or a refit
    for i, row in enumerate(state["history"], 1):
        if not isinstance(row, dict) or row.get("epoch") != i or not all(k in row for k in HISTORY_KEYS) or \
                any((k in row) != validated for k in VAL_KEYS) or \
                not all(_number(v) or (k == WEIGHTS_FROM and isinstance(v, str)) for k, v in row.items()):
            return f"history row {i} is not epoch {i}'s metrics (got {shown(row)})"
    return _bad_schedule(state["schedule"])


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bad_schedule(schedule: Any) -> str | None:
    """What is wrong with a trainer state's ``schedule`` (``hparams.segments``)."""
    if not isinstance(schedule, list) or not schedule or not all(
            isinstance(s, dict) and set(s) == {"epoch", *SCHEDULED} and isinstance(s["epoch"], int)
            and all(_number(s[k]) for k in SCHEDULED) for s in schedule) or schedule[0]["epoch"] != 1 or \
            any(a["epoch"] >= b["epoch"] for a, b in zip(schedule, schedule[1:])):
        return f"schedule is not a list of stretches of {', '.join(SCHEDULED)} from epoch 1 on (got {shown(schedule)})"
    return None


def restore_into(run_dir: str | os.PathLike, checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Copy a checkpoint folder written by ``write_checkpoint`` (e.g. one handed back by Ray Tune)
    into ``run_dir``, where ``fit(..., resume=True)`` finds it; returns its trainer state."""
    state = read_state(checkpoint)
    # links are copied as links: the checks that read the copy refuse them rather than follow them
    shutil.copytree(checkpoint, checkpoint_dir(run_dir, state["global_step"]), symlinks=True)
    return state


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders, oldest first (temporary folders and links are not checkpoints)."""
    root = Path(run_dir) / CHECKPOINTS
    if not files.is_real_dir(root):
        return []
    found = [p for p in root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()
             and files.is_real_dir(p)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))  # by step: 9 digits sort after 8


def verify(checkpoint: Path) -> str | None:
    """None if every file matches the manifest, else what is wrong (one phrase)."""
    try:
        manifest = json.loads((checkpoint / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return "no readable MANIFEST.json"
    if not isinstance(manifest, dict) or not all(
            isinstance(want, dict) and isinstance(want.get("bytes"), int) and isinstance(want.get("sha256"), str)
            for want in manifest.values()):
        return "MANIFEST.json is not a map of file to size and checksum"
    missing = [name for name in REQUIRED if name not in manifest]
    if missing:
        return f"MANIFEST.json does not list {missing[0]}"
    for name, want in manifest.items():
        path = checkpoint / name
        if "/" in name or name in ("", ".", "..") or not files.is_real_file(path):  # a link or a path out: never read
            return f"{shown(name)} is missing or not a file of the checkpoint"
        if path.stat().st_size != want["bytes"] or _sha256(path) != want["sha256"]:
            return f"{name} does not match its checksum"
    return None


def latest_valid(run_dir: Path, warn: Callable[[str], None] = print,
                 accept: Callable[[Path, dict[str, Any]], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """The newest usable checkpoint and its trainer state: its files match the manifest, its state
    passes ``read_state``, and ``accept(checkpoint, state)`` (the run's own checks, and loading it)
    raises no CheckpointError. Each one that fails is reported with ``warn`` and the previous tried."""
    run_dir = Path(run_dir)
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir} has no checkpoints: it was never checkpointed (train it again, "
                              f"without --resume)")
    newest = ""
    for checkpoint in reversed(found):
        problem, verdict = verify(checkpoint), "is corrupt"
        if problem is None:
            try:
                state = read_state(checkpoint)
                if accept is not None:
                    accept(checkpoint, state)
                return checkpoint, state
            except CheckpointError as e:
                problem, verdict = str(e), "cannot be used"
        newest = newest or problem
        warn(f"warning: checkpoint {checkpoint} {verdict} ({problem}); trying the previous one")
    raise CheckpointError(f"every checkpoint in {run_dir / CHECKPOINTS} is corrupt or does not fit the run (the newest: "
                          f"{newest}): restore what was changed, or train again without --resume")
