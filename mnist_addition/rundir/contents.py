"""What a run folder holds: config.json, metrics, weights; written atomically, read back checked.
Pure torch. Who may write a run folder, and when, is ``folder.py``.

Every file is written through ``files`` (a new temporary file renamed onto its name: a link
planted at the name is replaced, never written through), and read only if it lies inside the run
folder: a run folder from someone else can neither make us write nor read outside it.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from ..core.backends import free_memory
from ..core.config import MIXED_PRECISION, ConfigError, TrainConfig, check_model_fits, read_json_file
from ..core.errors import UserError, first_line, shown
from ..core.model import build_model, count_parameters
from . import files
from .names import (
    CONFIG,
    FOLDER_STAMP,
    LOCK,
    ONNX,
    REPLACED,
    RUN_DIRS,
    RUN_FILES,
    SWEEP_FILE,
    WEIGHTS,
    is_run_dir,
    stamp,
)


class RunError(UserError):
    """A run folder is missing, incomplete or would be overwritten; the message says what to do."""


def default_run_dir() -> Path:
    return Path("runs") / stamp(FOLDER_STAMP)


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
def write_json(path: Path, data: Any) -> None:
    """Write via a temporary file and rename: a crash never leaves half a JSON file."""
    files.write_text(path, json.dumps(data, indent=2) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace a JSON-lines file with ``rows`` (the whole history each time: never appended through a link)."""
    files.write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("mnist-addition", "torch", "torchvision", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """The commit of the source tree this package runs from, if it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_config(run_dir: Path, config: TrainConfig, setup: dict[str, Any]) -> None:
    payload = {"config": config.to_dict(), "setup": setup, "versions": versions(), "git_commit": git_commit(),
               "created": stamp()}
    write_json(run_dir / CONFIG, payload)


# What shapes a net's weights, written into the header of its model.safetensors and checked when it
# loads: crops 1 and 2 (and 3 and 4) build tensors of the same names and shapes, so only the header
# tells them apart. Dropout and test-time views do not touch the weights (evaluate takes --tta).
HEADER_KEY = "mnist_addition"
WEIGHT_FIELDS = ("preset", "width", "stem", "crop", "depth")


def save_weights(model: nn.Module, path: Path, config: TrainConfig) -> None:
    """Weights as safetensors (no pickle), with the net's WEIGHT_FIELDS in the header."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # One metadata key: safetensors writes its metadata map in no fixed order, so with two keys the
    # same tensors gave different files from run to run; with one, equal tensors give equal bytes.
    files.write_bytes(path, save(state, metadata={HEADER_KEY: json.dumps(
        {k: getattr(config, k) for k in WEIGHT_FIELDS}, sort_keys=True)}))


def header_mismatch(meta: dict[str, str], config: TrainConfig) -> str | None:
    """None if the WEIGHT_FIELDS a weights file's metadata ``meta`` names agree with ``config``, else
    the first difference. Files from before this check name the preset and width only, files from
    elsewhere nothing: each is checked on what it names."""
    try:
        header = json.loads(meta.get(HEADER_KEY, "{}"))
    except ValueError:
        return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    return next((f"its header says {k} {header[k]}" for k in WEIGHT_FIELDS
                 if k in header and header[k] != getattr(config, k)), None)


def check_output_file(path: Path, overwrite: bool, flag: str, protected: tuple[Path, ...] = (),
                      own: Path | None = None) -> Path:
    """Refuse an output file path the user named that cannot be written, or would replace something
    it should not: never a folder, device or pipe (``--overwrite`` or not), never a file of
    ``protected`` (the run being read, the images being read: by name, link or hard link), never a
    file of any run or sweep folder (its lock above all) but ``own`` (what this command wrote there
    before: ``export``'s model.onnx), an existing file only with ``overwrite``, and only in a folder
    that exists and can be written."""
    path = Path(path)
    try:
        try:
            os.lstat(path)  # a name too long, a link loop, a file where a folder should be: said here
        except FileNotFoundError:
            pass
        real, exists = os.path.realpath(path), os.path.exists(path)
        for other in protected:
            if os.path.lexists(other) and (os.path.realpath(other) == real or
                                           (exists and os.path.samefile(other, path))):
                raise RunError(f"{path} is {other}, which this command reads: it is never replaced; "
                               f"choose another {flag}")
        folder = holding_folder(Path(real))
        if os.path.lexists(path) and folder is not None and not (own is not None and os.path.realpath(own) == real):
            raise RunError(f"{path} is a file of the run or sweep in {folder}: it is never replaced; choose another "
                           f"{flag}")
        if os.path.lexists(path):
            if not path.is_file():
                what = "a link to nothing" if os.path.islink(path) else "a folder, device or pipe"
                raise RunError(f"{path} is not a regular file ({what}), so it is never replaced: {flag} must name a file")
            if not overwrite:
                raise RunError(f"{path} exists: choose another {flag}, or pass --overwrite to replace it")
        parent = path.parent
        if not parent.is_dir():
            raise RunError(f"the folder {parent} does not exist{' (or is a file)' if parent.exists() else ''}: "
                           f"create it, or choose another {flag}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RunError(f"cannot write in {parent} (permission denied): choose another {flag}")
    except OSError as e:  # a name too long, a link loop
        raise RunError(f"{flag} {shown(str(path))} cannot be used ({e.strerror or e}): choose another {flag}") from None
    return path


def holding_folder(path: Path) -> Path | None:
    """The run or sweep folder of which ``path`` is a file (one training or ``tune`` writes: the
    lock, config.json, a checkpoint's file, ``export``'s model.onnx, anything of a sweep), or None."""
    for depth, folder in enumerate(list(path.parents)[:3]):
        top = path.relative_to(folder).parts[0]
        if files.is_real_file(folder / SWEEP_FILE):
            return folder
        if is_run_dir(folder) and (top in (*RUN_DIRS, REPLACED) or depth == 0 and top in (*RUN_FILES, ONNX, LOCK)):
            return folder
    return None


def run_files(run_dir: Path) -> tuple[Path, ...]:
    """Every file a run folder holds (what ``export`` and ``predict --csv`` must never replace)."""
    found = [run_dir / name for name in RUN_FILES]
    for sub in RUN_DIRS:
        if files.is_real_dir(run_dir / sub):
            found += [p for p in (run_dir / sub).rglob("*") if not p.is_dir()]
    return tuple(found)


def replace_file(path: Path, write: Callable[[Path], None], flag: str) -> None:
    """``write(tmp)`` then rename onto ``path``: the old file stays whole until the new one is, a
    link at ``path`` is replaced (not written through); an OSError (disk full, read-only, a folder
    in the way) is one line naming the path."""
    try:
        files.write_via(path, write)
    except OSError as e:
        raise write_failed(e, flag) from None


def write_failed(error: OSError, flag: str, where: Path | None = None) -> RunError:
    """A write that failed (disk full, read-only, a folder where the file goes) as one line; ``flag``
    is what the user can choose instead (e.g. ``--csv``), or ``""`` when there is nothing to choose."""
    path = error.filename or where or "the output"
    instead = f", or choose another {flag}" if flag else ""
    if error.errno == errno.ENAMETOOLONG:
        return RunError(f"cannot write {shown(str(path))}: the name is too long for the filesystem{instead}")
    if error.errno == errno.EISDIR:
        return RunError(f"cannot write {path}: a folder of that name is in the way; remove it{instead}")
    return RunError(f"cannot write {path} ({error.strerror or error}): free some space{instead}")


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
def member(run_dir: Path, name: str, missing: str) -> Path:
    """``run_dir/name``, which must be a file inside the run folder (a link may point within it, never
    out of it: a folder from someone else must not make us read ``~/.ssh``)."""
    path = run_dir / name
    if not os.path.lexists(path):
        raise RunError(missing)
    if not files.inside(run_dir, path):
        raise RunError(f"{path} is a link to {os.path.realpath(path)}, outside the run folder: a run's files are "
                       "read only inside it; replace the link with the file itself")
    if not path.is_file():
        raise RunError(f"{path} is not a regular file: the run folder was altered; restore it or retrain")
    return path


def read_run_config(run_dir: str | os.PathLike) -> tuple[TrainConfig, dict[str, Any]]:
    """A run folder's config.json: the config, and how it trained (``setup``), both checked."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist: pass the --output-dir of a finished training run")
    path = member(run_dir, CONFIG, f"{run_dir} has no config.json: it is not a run folder (or training "
                                          "never started)")
    try:
        data = read_json_file(path, "config file", "restore the run's config.json")
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise ConfigError(f"{path} is not a run's config.json (no 'config' object): restore it or retrain")
        config = TrainConfig.from_dict(data["config"], source=str(path))
    except ConfigError as e:
        raise RunError(str(e)) from None
    setup = data.get("setup", {})
    if not isinstance(setup, dict) or not all(isinstance(setup.get(k, ""), str) for k in ("device", "mixed_precision")) \
            or setup.get("mixed_precision", "no") not in (*MIXED_PRECISION, "no"):
        raise RunError(f"{path}: 'setup' is not what training writes (got {shown(setup)}): the file was altered; "
                       "restore it or retrain")
    return config, setup


class SavedRun(NamedTuple):
    config: TrainConfig
    model: nn.Module
    setup: dict[str, Any]  # how it trained: device, precision, processes (config.json)


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu", tta: int | None = None) -> SavedRun:
    """Rebuild the model of a finished run from its config.json and model.safetensors; ``tta``, if
    given, evaluates with that many views instead of the run's own (the weights are the same)."""
    from safetensors import SafetensorError, safe_open

    run_dir = Path(run_dir)
    config, setup = read_run_config(run_dir)
    if tta is not None and tta != config.tta:
        if config.preset != "fast":
            raise RunError(f"--tta {tta}: {run_dir} is a {config.preset!r} run, which evaluates one view only: "
                           "drop --tta")
        config = config.replace(tta=tta)
    weights_path = member(run_dir, WEIGHTS, f"{run_dir} has no model.safetensors: training did not "
                                                        "finish; resume it (train --resume) or pick another run")
    try:  # one read for the tensors and the header
        with safe_open(str(weights_path), "pt", device=str(device)) as f:
            meta, state = f.metadata() or {}, {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"{weights_path} is unreadable ({first_line(e, 120)}): the file is corrupt, "
                       "retrain or restore it") from None
    with torch.device("meta"):  # the model config.json implies, allocating nothing
        skeleton = build_model(**config.net)
    problem = state_dict_mismatch(skeleton.state_dict(), state) or header_mismatch(meta, config)
    if problem:
        raise RunError(f"{weights_path} does not match config.json (preset {config.preset!r}, width {config.width}, "
                       f"stem {config.stem}, crop {config.crop}, depth {config.depth}: {problem}): the weights belong to another run or were altered")
    check_model_fits(config, count_parameters(skeleton), free_memory(torch.device(device)), str(device),
                     training=False)
    bad = sorted(name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all())
    if bad:
        raise RunError(f"{weights_path} holds NaN or infinite weights ({bad[0]}{' and others' if len(bad) > 1 else ''}): "
                       "the run diverged; train again with a lower --lr")
    model = build_model(**config.net).to(device)
    model.load_state_dict(state)
    model.eval()
    return SavedRun(config, model, setup)


def state_dict_mismatch(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str | None:
    """None if ``got`` has exactly ``want``'s tensors (names, shapes, dtypes), else the first difference."""
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        return f"{'no ' + missing[0] if missing else 'an unknown tensor ' + extra[0]}"
    for name, tensor in want.items():
        if tuple(got[name].shape) != tuple(tensor.shape):
            return f"{name} has shape {tuple(got[name].shape)}, not {tuple(tensor.shape)}"
        if got[name].dtype != tensor.dtype:
            return f"{name} is {str(got[name].dtype).removeprefix('torch.')}, not {str(tensor.dtype).removeprefix('torch.')}"
    return None
