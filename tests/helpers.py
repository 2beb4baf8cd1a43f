"""What the tests share besides fixtures (``conftest.py``): the debug config, where the real MNIST
is, and how a test launches two processes. Test files import from here, never from each other."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mnist_addition.commands.cli import main
from mnist_addition.core.config import TrainConfig
from mnist_addition.rundir.checkpoint import list_checkpoints
from mnist_addition.rundir.names import WEIGHTS
from mnist_addition.testing.machines import unavailable
from mnist_addition.testing.slowed import slowed_env

ROOT = Path(__file__).resolve().parents[1]
REAL_MNIST = ROOT.parent / "shared" / "mnist"
LAUNCH = ROOT / "launch"
# 480 of the 500 synthetic training images are used each epoch (15 steps of 32).
COMMON = ["--val-size", "100", "--batch-size", "32", "--mixed-precision", "no", "--no-download"]
# These tests prove CPU facts (gloo data parallelism, bit-identical resume without --deterministic):
# they ask for the CPU, so they hold on a GPU machine too.
CPU = ["--cpu"]
# The data-parallel proofs: the seed network (no BatchNorm), SGD, 2 epochs of 8 steps of 32 images.
SEED_ARGS = ["--preset", "seed", "--epochs", "2", "--lr", "0.01", "--train-limit", "256", *COMMON, *CPU]


def tiny_config(mnist_dir: Path, preset: str = "fast", **overrides) -> TrainConfig:
    """The debug config the integration tests drive: width 8, 100 val images, small batches, fp32.

    It runs on whatever device the machine has; tests that need the CPU pass ``cpu=True``.
    """
    base = dict(data_dir=str(mnist_dir), width=8, epochs=3, batch_size=32, lr=0.01, val_size=100,
                mixed_precision="no", log_every=5)
    return TrainConfig.from_preset(preset, **{**base, **overrides})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env() -> dict[str, str]:
    """The environment of a launched process: unbuffered, no developer's data folder."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("MNIST_ADDITION_DATA", None)
    return env


def launch_two(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``mnist-addition train ARGS`` as two CPU processes under ``accelerate launch`` (gloo, 127.0.0.1)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH / "cpu_2proc.yaml"),
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
           "-m", "mnist_addition", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**launch_env(), **(env or {})}, timeout=600, cwd=cwd)


def run_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / WEIGHTS))


def same_weights(a: Path, b: Path) -> bool:
    """The two runs' final weights are equal, bit for bit."""
    x, y = run_weights(a), run_weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> float:
    """The largest difference between two state dicts' floating-point tensors (the keys must agree)."""
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a
               if not k.endswith(skip) and a[k].is_floating_point())


def assert_trains_like(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], init: dict[str, torch.Tensor],
                       names: list[str] | None = None) -> None:
    """Data-parallel weights ``a`` against one process's ``b`` (both from ``init``): within 1e-4
    absolute and within 5% of each tensor's update, the data-parallel tests' tolerances."""
    names = list(b) if names is None else names
    assert max_diff({k: a[k] for k in names}, {k: b[k] for k in names}) <= 1e-4
    for name in names:
        assert (a[name] - b[name]).abs().max().item() <= 0.05 * (b[name] - init[name]).abs().max().item(), name


def initial_weights(preset: str, width: int) -> dict[str, torch.Tensor]:
    """The weights a run of ``preset`` and ``width`` starts from (seed 0, as ``fit`` seeds)."""
    from accelerate.utils import set_seed

    from mnist_addition.core.model import build_model

    set_seed(0)  # as fit() does before building the model
    return {k: v.detach().clone() for k, v in build_model(preset, width).state_dict().items()}


KILL_AFTER_SAVES = 5  # checkpoints at steps 4, 8, 12, 15 (end of epoch 1), 16: killed mid-epoch 2

CRASHING_RUN = textwrap.dedent("""
    import os, signal, sys
    import mnist_addition.rundir.checkpoint as ck
    real, saves = ck.prune, []
    def prune_then_maybe_die(*args, **kwargs):  # called once each checkpoint is written
        real(*args, **kwargs)
        saves.append(args)
        if len(saves) == {kill}:
            os.kill(os.getpid(), signal.SIGKILL)  # as hard as a power cut: no cleanup runs
    ck.prune = prune_then_maybe_die
    from mnist_addition.commands.cli import main
    sys.exit(main(sys.argv[1:]))
""")

def crashed_run_args(mnist_dir: Path, device: list[str] = CPU) -> list[str]:
    # with every augmentation on: rotations, scalings, elastic fields and shifts are drawn per
    # (seed, epoch), so a resumed run sees the same images
    return ["--width", "8", "--epochs", "3", "--lr", "0.01", "--data-dir", str(mnist_dir), "--checkpoint-every", "4",
            "--keep-checkpoints", "3", "--rotate", "10", "--scale", "0.1", "--elastic", "2", *COMMON, *device]

def train_to_the_end(args: list[str], run: Path) -> Path:
    assert main(["train", *args, "--output-dir", str(run)]) == 0
    return run

def train_and_kill(args: list[str], run: Path) -> Path:
    script = CRASHING_RUN.replace("{kill}", str(KILL_AFTER_SAVES))
    proc = subprocess.run([sys.executable, "-c", script, "train", *args, "--output-dir", str(run)],
                          capture_output=True, text=True, env=launch_env(), timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (run / "model.safetensors").exists()
    assert [p.name for p in list_checkpoints(run)] == ["step-00000012", "step-00000015", "step-00000016"]
    return run

def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest

def resumed_like_uninterrupted(run: Path, uninterrupted: Path, err: str) -> None:
    assert "resuming from step-00000016: epoch 2, step 1/15" in err
    a, b = run_weights(run), run_weights(uninterrupted)
    assert all(torch.equal(a[k], b[k]) for k in a)
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # appended, no epoch twice
    full = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in full]
    assert [r["val_digit_acc"] for r in resumed] == [r["val_digit_acc"] for r in full]


def folder_contents(run: Path) -> dict[Path, bytes]:
    """Every file of a run folder, but the lock's bookkeeping (who holds the folder; a killed run
    leaves a stale note that the next attempt clears): the run's data, byte for byte."""
    from mnist_addition.rundir.names import LOCK

    skip = {LOCK}
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name not in skip} if run.exists() else {}


# --cpu: these runs are compared bit for bit (reproduced from config.json, re-evaluated), a CPU fact
TINY = ["--width", "8", "--epochs", "2", "--batch-size", "32", "--lr", "0.01", "--val-size", "100",
        "--mixed-precision", "no", "--cpu"]

def folder_files(folder):
    from mnist_addition.rundir.names import LOCK

    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.name != LOCK}


def slow_env(tmp_path: Path) -> dict[str, str]:
    """The launch environment with each optimizer step sleeping 0.15 s: a "mid-run" to interrupt."""
    return slowed_env(tmp_path, 0.15, launch_env())


def wait_for_checkpoint(run: Path, step: int, proc: subprocess.Popen, limit: float = 300) -> None:
    """Until the checkpoint of ``step`` (or a later one) is in place (a hang guard, not a measurement)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        found = list_checkpoints(run)
        if found and int(found[-1].name.split("-")[1]) >= step:
            return
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before checkpoint {step}"
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint {step} within {limit} s")


def our_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mnist-addition train:")]


def proven_on_real_addresses(where: str) -> pytest.MarkDecorator:
    """Skips a loopback test where machines with their own addresses can be built (root and
    ``ip netns``: CI), because the test named by ``where`` proves the same there, on real addresses
    and real partitions; elsewhere (no root) the loopback test runs."""
    return pytest.mark.skipif(unavailable() is None, reason=f"proven on machines with their own addresses ({where})")
