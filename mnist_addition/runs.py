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

from .config import ConfigError, TrainConfig
from .errors import UserError
from .model import build_model
from .report import REPORT_FILES

RUN_FILES = ("config.json", "metrics.jsonl", "metrics.json", "model.safetensors", "curves.png", *REPORT_FILES)


class RunError(UserError):
    """A run folder is missing, incomplete or would be overwritten; the message says what to do."""


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def check_run_dir(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise RunError if ``path`` cannot become a run folder (without touching anything)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunError(f"output path {path} is a file, not a folder: choose another --output-dir")
    existing = [name for name in RUN_FILES if (path / name).exists()]
    if existing and not overwrite:
        raise RunError(f"{path} already holds a run ({', '.join(existing)}): choose another --output-dir, "
                       "resume it with --resume, or pass --overwrite to replace it")


def prepare_run_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create the run folder; refuse one that already holds a run unless ``overwrite``."""
    path = Path(path)
    check_run_dir(path, overwrite)
    if overwrite:
        for name in RUN_FILES:
            (path / name).unlink(missing_ok=True)
        shutil.rmtree(path / "checkpoints", ignore_errors=True)
        shutil.rmtree(path / "tensorboard", ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    save_file(state, str(tmp), metadata={"preset": config.preset, "width": str(config.width)})
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
    bad = sorted(name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all())
    if bad:
        raise RunError(f"{weights_path} holds NaN or infinite weights ({bad[0]}{' and others' if len(bad) > 1 else ''}): "
                       "the run diverged; train again with a lower --lr")
    model = build_model(config.preset, config.width).to(device)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise RunError(f"{weights_path} does not match config.json (preset {config.preset!r}, width {config.width}): "
                       "the weights belong to another run") from None
    model.eval()
    return config, model
