"""Run folders: create without clobbering, write config/metrics/weights, read them back. Pure torch."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backends import free_memory
from .config import ConfigError, TrainConfig, check_model_fits
from .errors import UserError
from .model import build_model, count_parameters
from .report import REPORT_FILES

RUN_FILES = ("config.json", "metrics.jsonl", "metrics.json", "model.safetensors", "curves.png", *REPORT_FILES)


class RunError(UserError):
    """A run folder is missing, incomplete or would be overwritten; the message says what to do."""


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def check_run_dir(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise RunError if ``path`` cannot become a new run folder (without touching anything)."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                where = "is" if parent == path else f"is below {parent}, which is"
                raise RunError(f"output path {path} {where} a file, not a folder: choose another --output-dir")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise RunError(f"cannot write in {parent} (permission denied): choose another --output-dir")
            break
    existing = [name for name in RUN_FILES if (path / name).exists()] if path.is_dir() else []
    if existing and not overwrite:
        raise RunError(f"{path} already holds a run ({', '.join(existing)}): choose another --output-dir, "
                       "resume it with --resume, or pass --overwrite to replace it")


def check_resumable(path: str | os.PathLike) -> None:
    """Raise RunError unless ``path`` is an unfinished run with at least one checkpoint."""
    from .checkpoint import list_checkpoints

    path = Path(path)
    if not path.is_dir():
        raise RunError(f"--resume {path}: no such run folder; pass the --output-dir of an earlier run")
    if not list_checkpoints(path):
        raise RunError(f"--resume {path}: the run has no checkpoints (it stopped before its first one); "
                       "train it again without --resume")
    if (path / "model.safetensors").exists():
        raise RunError(f"--resume {path}: that run already finished (model.safetensors exists); nothing to resume")


class RunFolder:
    """The folder of one training run, held for the run's whole life (main process only).

    * One writer: a lock (``flock`` on RUN/.lock, released by the kernel if the process dies, so a
      killed run never blocks its own ``--resume``); a second writer is refused in one line that
      names the process holding it.
    * The rules: a new run needs a folder without a run (or ``overwrite``); a resumed one needs an
      unfinished run with a checkpoint. They are checked under the lock, so two runs started at the
      same moment cannot both pass them.
    * ``overwrite`` loses nothing: the old run is moved into RUN/.replaced/ and removed only once the
      new run has written its first checkpoint; if the new run fails before that, it comes back.
    """

    LOCK, OWNER, ASIDE = ".lock", ".lock-owner.json", ".replaced"

    def __init__(self, path: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> None:
        self.path, self.resume, self.overwrite = Path(path), resume, overwrite
        self._lock: Any = None
        self._created = False

    def open(self) -> "RunFolder":
        """Lock the folder (creating it if needed), check the rules, and set an old run aside."""
        from filelock import FileLock, Timeout

        if not self.resume:
            check_run_dir(self.path, self.overwrite)
        else:
            check_resumable(self.path)
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.path / self.LOCK))
            lock.acquire(timeout=0)
        except Timeout:
            self._forget_created()
            raise RunError(f"{self.path} is in use by {self._owner()}: wait for it to finish, or choose another "
                           "--output-dir") from None
        except OSError as e:
            self._forget_created()
            raise RunError(f"cannot write the run folder {self.path} ({e.strerror}): choose another --output-dir") from None
        self._lock = lock
        write_json(self.path / self.OWNER, {"pid": os.getpid(), "host": platform.node(),
                                            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        try:  # again under the lock: another process may have finished a run here meanwhile
            check_resumable(self.path) if self.resume else check_run_dir(self.path, self.overwrite)
        except RunError:
            self.close(ok=False)
            raise
        if self.overwrite and not self.resume:
            self._set_aside()
        return self

    def committed(self) -> None:
        """The new run has a checkpoint: the run it replaces can go."""
        shutil.rmtree(self.path / self.ASIDE, ignore_errors=True)

    def close(self, ok: bool) -> None:
        """Release the lock; a replacement that failed before its first checkpoint restores the old run."""
        aside = self.path / self.ASIDE
        if not ok and aside.is_dir():
            for name in [*RUN_FILES, "checkpoints", "tensorboard"]:
                _remove(self.path / name)
            for item in aside.iterdir():
                os.replace(item, self.path / item.name)
            aside.rmdir()
        (self.path / self.OWNER).unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if not ok:
            self._forget_created()

    def _set_aside(self) -> None:
        aside = self.path / self.ASIDE
        if aside.exists():  # a crash while replacing: that run is still the one to keep
            return
        old = [name for name in [*RUN_FILES, "checkpoints", "tensorboard"] if (self.path / name).exists()]
        if old:
            aside.mkdir()
            for name in old:
                os.replace(self.path / name, aside / name)

    def _owner(self) -> str:
        try:
            owner = json.loads((self.path / self.OWNER).read_text())
            return f"process {owner['pid']} on {owner['host']} (since {owner['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def _forget_created(self) -> None:
        """A folder this run created and left empty (but for its lock) is removed: nothing left behind."""
        if self._created and self.path.is_dir():
            (self.path / self.LOCK).unlink(missing_ok=True)
            try:
                self.path.rmdir()
            except OSError:
                pass


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def check_output_file(path: Path, overwrite: bool, flag: str) -> Path:
    """Refuse an output file path the user named that cannot be written, or would replace something
    it should not: never a folder, device or pipe (``--overwrite`` or not), an existing file only
    with ``overwrite``, and only in a folder that exists and can be written."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise RunError(f"{path} is not a regular file (a folder, device or pipe), so it is never replaced: "
                           f"{flag} must name a file")
        if not overwrite:
            raise RunError(f"{path} exists: choose another {flag}, or pass --overwrite to replace it")
    parent = path.parent
    if not parent.is_dir():
        raise RunError(f"the folder {parent} does not exist{' (or is a file)' if parent.exists() else ''}: "
                       f"create it, or choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f"cannot write in {parent} (permission denied): choose another {flag}")
    return path


def replace_file(path: Path, write: Any, flag: str) -> None:
    """``write(tmp)`` then rename onto ``path``: the old file stays whole until the new one is; an
    OSError (disk full, read-only) is one line naming the path."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunError(f"cannot write {path} ({e.strerror or e}): free some space or choose another {flag}") from None


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
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(run_dir / "config.json", payload)


def write_json(path: Path, data: Any) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a JSON file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace a JSON-lines file with ``rows`` (via a temporary file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def save_weights(model: nn.Module, path: Path, config: TrainConfig) -> None:
    """Weights as safetensors (no pickle), with the preset and width in the header."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    # One metadata key: safetensors writes its metadata map in no fixed order, so with two keys the
    # same tensors gave different files from run to run; with one, equal tensors give equal bytes.
    save_file(state, str(tmp), metadata={"mnist_addition": json.dumps({"preset": config.preset, "width": config.width},
                                                                      sort_keys=True)})
    tmp.replace(path)


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[TrainConfig, nn.Module]:
    """Rebuild the model of a finished run from its config.json and model.safetensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist: pass the --output-dir of a finished training run")
    config_path, weights_path = run_dir / "config.json", run_dir / "model.safetensors"
    if not config_path.is_file():
        raise RunError(f"{run_dir} has no config.json: it is not a run folder (or training never started)")
    if not weights_path.is_file():
        raise RunError(f"{run_dir} has no model.safetensors: training did not finish; train again or pick another run")
    try:
        config = TrainConfig.load(config_path)
    except ConfigError as e:
        raise RunError(str(e)) from None
    try:
        state = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"{weights_path} is unreadable ({str(e).splitlines()[0][:120]}): the file is corrupt, "
                       "retrain or restore it") from None
    with torch.device("meta"):  # the model config.json implies, allocating nothing
        skeleton = build_model(config.preset, config.width)
    if {k: tuple(v.shape) for k, v in skeleton.state_dict().items()} != {k: tuple(v.shape) for k, v in state.items()}:
        raise RunError(f"{weights_path} does not match config.json (preset {config.preset!r}, width {config.width}): "
                       "the weights belong to another run")
    check_model_fits(config, count_parameters(skeleton), free_memory(torch.device(device)), str(device),
                     training=False)
    bad = sorted(name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all())
    if bad:
        raise RunError(f"{weights_path} holds NaN or infinite weights ({bad[0]}{' and others' if len(bad) > 1 else ''}): "
                       "the run diverged; train again with a lower --lr")
    model = build_model(config.preset, config.width).to(device)
    model.load_state_dict(state)
    model.eval()
    return config, model
