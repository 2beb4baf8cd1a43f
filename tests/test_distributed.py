"""Data parallel training proven equal to one process; kill-and-resume is bit-identical; launch/ files parse."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mnist_addition.commands.cli import main
from mnist_addition.rundir.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
# 480 of the 500 synthetic training images are used each epoch (15 steps of 32).
COMMON = ["--val-size", "100", "--batch-size", "32", "--mixed-precision", "no", "--no-download"]
# These tests prove CPU facts (gloo data parallelism, bit-identical resume without --deterministic):
# they ask for the CPU, so they hold on a GPU machine too.
CPU = ["--cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("MNIST_ADDITION_DATA", None)
    return env


def _launch_two(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH / "cpu_2proc.yaml"),
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
           "-m", "mnist_addition", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**_env(), **(env or {})}, timeout=600, cwd=cwd)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a
               if not k.endswith(skip) and a[k].is_floating_point())


# ------------------------------------------------------------------------------------------------
# launch/ files
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.name for p in LAUNCH.glob("*.yaml")))
def test_launch_yaml_parses_with_accelerates_loader(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(LAUNCH / name))
    assert config.num_processes >= 1 and config.num_machines >= 1
    assert config.num_processes % config.num_machines == 0


def test_gpu_recipe_is_a_valid_config():
    from mnist_addition.core.config import TrainConfig

    config = TrainConfig.load(LAUNCH / "gpu_recipe.json")
    assert config.preset == "fast" and config.batch_size > TrainConfig().batch_size and not config.compile


def test_cpu_fastest_recipe_is_a_valid_config():
    from mnist_addition.core.config import TrainConfig

    config = TrainConfig.load(LAUNCH / "cpu_fastest.json")
    assert (config.preset, config.stem) == ("fast", "stride") and config.crop > 0
    assert config.epochs <= TrainConfig().epochs


def test_cpu_accurate_recipe_is_the_accurate_space_with_its_winners_values():
    import yaml

    from mnist_addition.core.config import TrainConfig
    from mnist_addition.sweep import find_space

    config = TrainConfig.load(LAUNCH / "cpu_accurate.json")
    space = yaml.safe_load(find_space("accurate").read_text())
    assert all(getattr(config, k) == v for k, v in space["fixed"].items())  # the net, budget, augmentation, views
    assert set(space["search"]) <= set(json.loads((LAUNCH / "cpu_accurate.json").read_text()))


def test_slurm_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(LAUNCH / "slurm_multinode.sbatch")]).returncode == 0


# ------------------------------------------------------------------------------------------------
# N processes == 1 process
# ------------------------------------------------------------------------------------------------
def test_two_processes_train_the_same_model_as_one(mnist_dir, tmp_path):
    """Seed network (no BatchNorm), SGD, 2 epochs x 15 steps, global batch 32.

    2 processes (DDP over gloo, 16 images each, 1 thread each) vs 1 process (32 images, 2 threads).
    The gradients are the same means computed in another order, so the parameters differ only by
    float32 rounding carried through 30 momentum steps. Measured here: max |diff| 1.6e-5, at most
    1.6% of any tensor's own update; the same single process run with 1 thread instead of 2
    differs from itself by 8.8e-6. Tolerances: 1e-4 absolute and 5% of the update. A process that
    trained alone on its half would miss both by orders of magnitude in the heads.
    """
    args = ["--preset", "seed", "--epochs", "2", "--lr", "0.01", "--data-dir", str(mnist_dir), *COMMON, *CPU]
    # the 2-process run also logs to MLflow (a tracker changes no maths): only the main process does
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracked = ["--log-with", "mlflow"] if importlib.util.find_spec("mlflow") else []
    # (in tmp_path: MLflow puts its artefacts in ./mlruns)
    two = _launch_two([*args, "--output-dir", str(tmp_path / "two"), *tracked], env={"MLFLOW_TRACKING_URI": uri},
                      cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    assert main(["train", *args, "--output-dir", str(tmp_path / "one")]) == 0

    setup = json.loads((tmp_path / "two" / "metrics.json").read_text())["setup"]
    assert setup["num_processes"] == 2 and setup["distributed_type"] == "MULTI_CPU"
    assert setup["per_process_batch_size"] == 16
    assert setup["train_samples_per_process"] == [480, 480]  # each saw half of the 2 x 480 images
    one_setup = json.loads((tmp_path / "one" / "metrics.json").read_text())["setup"]
    assert one_setup["train_samples_per_process"] == [960]

    a, b = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    init = _initial_weights("seed", 32)
    assert _max_diff(a, b) <= 1e-4
    for name in b:
        update = (b[name] - init[name]).abs().max().item()
        assert (a[name] - b[name]).abs().max().item() <= 0.05 * update, name
    # only the main process prints: one results table
    assert two.stderr.count("Results") + two.stdout.count("Results") == 1
    if tracked:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        (run,) = client.search_runs([client.get_experiment_by_name("mnist-addition").experiment_id])
        assert run.data.params["setup/num_processes"] == "2"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_digit_acc")] == [15, 30]


def _initial_weights(preset: str, width: int) -> dict[str, torch.Tensor]:
    from accelerate.utils import set_seed

    from mnist_addition.core.model import build_model

    set_seed(0)  # as fit() does before building the model
    return {k: v.detach().clone() for k, v in build_model(preset, width).state_dict().items()}


def test_two_processes_with_batchnorm_equal_one_process_accumulating(mnist_dir, tmp_path):
    """With BatchNorm each process normalises its own half-batch: exactly what one process does
    with 2 accumulation steps of half a batch. Weights must agree (1e-4 absolute and 5% of each
    tensor's update, as above; measured 1.2e-5); BatchNorm's running statistics are not compared
    (DDP keeps rank 0's, accumulation sees both halves).

    SGD, not the preset's AdamW: Adam divides by sqrt(v) + eps, which turns float32 rounding in
    near-zero gradients into steps of size lr, so no tight tolerance would hold for it.
    """
    args = ["--preset", "fast", "--width", "8", "--epochs", "1", "--lr", "0.05", "--optimizer", "sgd",
            "--data-dir", str(mnist_dir), *COMMON, *CPU]
    two = _launch_two([*args, "--output-dir", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-2000:]
    assert main(["train", *args, "--gradient-accumulation-steps", "2", "--output-dir", str(tmp_path / "acc")]) == 0
    a, b = _weights(tmp_path / "two"), _weights(tmp_path / "acc")
    init = _initial_weights("fast", 8)
    trained = [k for k in b if b[k].is_floating_point() and "running" not in k]
    assert _max_diff({k: a[k] for k in trained}, {k: b[k] for k in trained}) <= 1e-4
    for name in trained:
        assert (a[name] - b[name]).abs().max() <= 0.05 * (b[name] - init[name]).abs().max(), name


# ------------------------------------------------------------------------------------------------
# Kill and resume
# ------------------------------------------------------------------------------------------------
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


def _resume_args(mnist_dir: Path, device: list[str] = CPU) -> list[str]:
    # with every augmentation on: rotations, scalings, elastic fields and shifts are drawn per
    # (seed, epoch), so a resumed run sees the same images
    return ["--width", "8", "--epochs", "3", "--lr", "0.01", "--data-dir", str(mnist_dir), "--checkpoint-every", "4",
            "--keep-checkpoints", "3", "--rotate", "10", "--scale", "0.1", "--elastic", "2", *COMMON, *device]


def _train_to_the_end(args: list[str], run: Path) -> Path:
    assert main(["train", *args, "--output-dir", str(run)]) == 0
    return run


def _train_and_kill(args: list[str], run: Path) -> Path:
    script = CRASHING_RUN.replace("{kill}", str(KILL_AFTER_SAVES))
    proc = subprocess.run([sys.executable, "-c", script, "train", *args, "--output-dir", str(run)],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (run / "model.safetensors").exists()
    assert [p.name for p in list_checkpoints(run)] == ["step-00000012", "step-00000015", "step-00000016"]
    return run


@pytest.fixture(scope="module")
def uninterrupted(mnist_dir, tmp_path_factory):
    return _train_to_the_end(_resume_args(mnist_dir), tmp_path_factory.mktemp("full") / "run")


@pytest.fixture(scope="module")
def crashed(mnist_dir, tmp_path_factory):
    return _train_and_kill(_resume_args(mnist_dir), tmp_path_factory.mktemp("crash") / "run")


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _assert_resumed_like_uninterrupted(run: Path, uninterrupted: Path, err: str) -> None:
    assert "resuming from step-00000016: epoch 2, step 1/15" in err
    a, b = _weights(run), _weights(uninterrupted)
    assert all(torch.equal(a[k], b[k]) for k in a)
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # appended, no epoch twice
    full = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in full]
    assert [r["val_digit_acc"] for r in resumed] == [r["val_digit_acc"] for r in full]


def test_resume_after_sigkill_is_bit_identical(crashed, uninterrupted, tmp_path, capsys):
    run = _copy(crashed, tmp_path / "run")
    assert main(["train", "--resume", str(run)]) == 0
    _assert_resumed_like_uninterrupted(run, uninterrupted, capsys.readouterr().err)


@pytest.mark.gpu
def test_resume_after_sigkill_is_bit_identical_on_the_gpu_with_deterministic(mnist_dir, tmp_path, capsys):
    args = _resume_args(mnist_dir, device=["--deterministic"])
    uninterrupted = _train_to_the_end(args, tmp_path / "full")
    assert json.loads((uninterrupted / "config.json").read_text())["setup"]["device"].startswith("cuda")
    run = _train_and_kill(args, tmp_path / "run")
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    _assert_resumed_like_uninterrupted(run, uninterrupted, capsys.readouterr().err)


def test_corrupt_checkpoint_falls_back_to_the_previous_one(crashed, uninterrupted, tmp_path, capsys):
    run = _copy(crashed, tmp_path / "run")
    weights = run / "checkpoints" / "step-00000016" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # damaged after it was written
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert "checkpoint" in err and "step-00000016 is corrupt (model.safetensors does not match its checksum)" in err
    assert "resuming from step-00000015" in err
    a, b = _weights(run), _weights(uninterrupted)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_half_written_checkpoint_is_ignored(crashed, tmp_path, capsys):
    run = _copy(crashed, tmp_path / "run")
    shutil.copytree(run / "checkpoints" / "step-00000016", run / "checkpoints" / ".tmp-step-00000020")
    (run / "checkpoints" / ".tmp-step-00000020" / "MANIFEST.json").unlink()  # died before the rename
    assert main(["train", "--resume", str(run)]) == 0
    assert "resuming from step-00000016" in capsys.readouterr().err


@pytest.mark.parametrize("case,match", [
    ("missing", "no such run folder"),
    ("no_checkpoint", "the run has no checkpoints"),
    ("finished", "already finished"),
    ("other_width", "was written by preset 'fast' width 8, but config.json says 'fast' width 12"),
    ("changed_lr", "--lr cannot change when resuming"),
    ("with_config", "--config cannot be combined with --resume"),
])
def test_bad_resume_is_one_line_and_changes_nothing(case, match, crashed, uninterrupted, tmp_path, capsys):
    run = _copy(crashed, tmp_path / "run")
    extra: list[str] = []
    if case == "missing":
        run = tmp_path / "nope"
    elif case == "no_checkpoint":
        shutil.rmtree(run / "checkpoints")
    elif case == "finished":
        run = _copy(uninterrupted, tmp_path / "done")
    elif case == "other_width":
        config = json.loads((run / "config.json").read_text())
        config["config"]["width"] = 12
        (run / "config.json").write_text(json.dumps(config))
    elif case == "changed_lr":
        extra = ["--lr", "0.5"]
    elif case == "with_config":
        extra = ["--config", str(run / "config.json")]
    before = _contents(run)
    assert main(["train", "--resume", str(run), *extra]) == 2
    err = capsys.readouterr().err.strip()
    error = err.splitlines()[-1]  # the error is one line (a header line may come before it)
    assert error.startswith("mnist-addition train: error: ") and match in error and "Traceback" not in err
    assert _contents(run) == before


def test_the_same_command_with_resume_is_accepted_and_resumes_bit_identically(crashed, uninterrupted, mnist_dir,
                                                                              tmp_path, capsys):
    """Flags given with the values the run already has (--cpu, --lr, --width ...) are not changes."""
    run = _copy(crashed, tmp_path / "run")
    assert main(["train", *_resume_args(mnist_dir), "--resume", str(run), "--output-dir", str(run)]) == 0
    _assert_resumed_like_uninterrupted(run, uninterrupted, capsys.readouterr().err)


def test_fit_itself_enforces_the_resume_rules(crashed, uninterrupted, tmp_path):
    """The Python API refuses what the command line refuses, and accepts what it accepts."""
    from mnist_addition.core.config import ConfigError, TrainConfig
    from mnist_addition.training.loop import fit

    run = _copy(crashed, tmp_path / "run")
    own = TrainConfig.load(run / "config.json").replace(output_dir=str(run))
    before = _contents(run)
    with pytest.raises(ConfigError, match=r"--lr cannot change when resuming \(.*config.json has 0.01, not 0.5\)"):
        fit(own.replace(lr=0.5), start="resume", progress=False)
    with pytest.raises(ConfigError, match="--cpu cannot change when resuming"):
        fit(own.replace(cpu=False, mixed_precision="no"), start="resume", progress=False)
    assert _contents(run) == before
    fit(own.replace(log_every=3, keep_checkpoints=1), start="resume", progress=False)  # where and how often: allowed
    a, b = _weights(run), _weights(uninterrupted)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(list_checkpoints(run)) == 1


def _contents(run: Path) -> dict[Path, bytes]:
    """Every file of a run folder, but the lock's bookkeeping (who holds the folder; a killed run
    leaves a stale note that the next attempt clears): the run's data, byte for byte."""
    from mnist_addition.rundir.names import LOCK

    skip = {LOCK}
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name not in skip} if run.exists() else {}


class _Payload:
    """Unpickling this makes a folder: proof that code from a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("name,needed", [
    ("model.safetensors", True), ("optimizer.safetensors", True), ("optimizer.json", True),
    ("trainer_state.json", True),
    # files Accelerate's pickle-based checkpoints had: never opened, so the newest checkpoint is used
    ("custom_checkpoint_0.pkl", False), ("random_states_0.pkl", False), ("optimizer.bin", False),
    ("scheduler.bin", False),
])
def test_a_code_running_payload_in_a_checkpoint_never_runs(name, needed, crashed, tmp_path, capsys):
    """A pickle payload is written into (or next to) each file of the newest checkpoint and the
    manifest regenerated to match, as a careful attacker would: resuming never runs it. A file the
    resume needs is reported in one line (naming it) and the checkpoint before is used; a file it
    does not need is never opened."""
    import pickle

    from mnist_addition.rundir.checkpoint import _files, _sha256
    from mnist_addition.rundir.names import MANIFEST

    run = _copy(crashed, tmp_path / "run")
    marker = tmp_path / "payload-ran"
    found = list_checkpoints(run)
    newest, previous = found[-1], found[-2]
    (newest / name).write_bytes(pickle.dumps(_Payload(marker)))
    manifest = {str(p.relative_to(newest)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(newest)}
    (newest / MANIFEST).write_text(json.dumps(manifest))
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert not marker.exists() and "Traceback" not in err and (run / "model.safetensors").exists()
    warnings = [line for line in err.splitlines() if line.startswith("warning: checkpoint")]
    if needed:
        assert len(warnings) == 1 and newest.name in warnings[0] and name in warnings[0]
        assert f"resuming from {previous.name}" in err
    else:
        assert warnings == [] and f"resuming from {newest.name}" in err


def test_all_checkpoints_damaged_is_one_line_and_changes_nothing(crashed, tmp_path, capsys):
    run = _copy(crashed, tmp_path / "run")
    for checkpoint in list_checkpoints(run):
        weights = checkpoint / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8])
    before = _contents(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if "is corrupt" in line and line.startswith("warning")] != []
    assert len([line for line in err if line.startswith("warning: checkpoint")]) == 3  # each one reported
    assert err[-1].startswith("mnist-addition train: error: every checkpoint in ") and "train again" in err[-1]
    assert _contents(run) == before


def test_resume_on_another_number_of_processes(crashed, tmp_path):
    """Killed as 1 process, resumed by 2 (the global batch is unchanged, each process takes half):
    it finishes its 3 epochs, says what changed, and still learns. Not bit-identical: BatchNorm then
    normalises half-batches."""
    run = _copy(crashed, tmp_path / "run")
    two = _launch_two(["--resume", str(run)])
    assert two.returncode == 0, two.stderr[-2000:]
    assert "note: resuming a 1-process run on 2 processes" in two.stderr + two.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["val_digit_acc"] > 0.8
    final = json.loads((run / "metrics.json").read_text())
    assert final["setup"]["num_processes"] == 2 and final["setup"]["device"].startswith("cpu")
