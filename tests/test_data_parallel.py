"""Data-parallel training proven equal to one process, and a run resumed on another number of processes."""

from __future__ import annotations

import importlib.util
import json

import pytest

from mnist_addition.commands.cli import main

from .helpers import COMMON, CPU, SEED_ARGS, assert_trains_like, copy_run, initial_weights, launch_two, run_weights

pytestmark = pytest.mark.slow  # see pyproject.toml: make test-fast leaves these out

# ------------------------------------------------------------------------------------------------
# N processes == 1 process
# ------------------------------------------------------------------------------------------------
def test_two_processes_train_the_same_model_as_one(mnist_dir, tmp_path, seed_one_process, mlflow_db):
    """Seed network (no BatchNorm), SGD, 2 epochs x 8 steps, global batch 32 (SEED_ARGS).

    2 processes (DDP over gloo, 16 images each, 1 thread each) vs 1 process (32 images, 2 threads).
    The gradients are the same means computed in another order, so the parameters differ only by
    float32 rounding carried through 16 momentum steps. Measured here (2026-12-07): max |diff|
    7.4e-6, at most 1.05% of any tensor's own update (with 15 steps an epoch before: 1.6e-5 and
    1.6%; a single process with 1 thread instead of 2 then differed from itself by 8.8e-6).
    Tolerances: 1e-4 absolute and 5% of the update. A process that trained alone on its half would
    miss both by orders of magnitude in the heads.
    """
    args = [*SEED_ARGS, "--data-dir", str(mnist_dir)]
    # the 2-process run also logs to MLflow (a tracker changes no maths): only the main process does
    uri = mlflow_db
    tracked = ["--log-with", "mlflow"] if importlib.util.find_spec("mlflow") else []
    # (in tmp_path: MLflow puts its artefacts in ./mlruns)
    two = launch_two([*args, "--output-dir", str(tmp_path / "two"), *tracked], env={"MLFLOW_TRACKING_URI": uri},
                      cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]

    setup = json.loads((tmp_path / "two" / "metrics.json").read_text())["setup"]
    assert setup["num_processes"] == 2 and setup["distributed_type"] == "MULTI_CPU"
    assert setup["per_process_batch_size"] == 16
    assert setup["train_samples_per_process"] == [256, 256]  # each saw half of the 2 x 256 images
    one_setup = json.loads((seed_one_process / "metrics.json").read_text())["setup"]
    assert one_setup["train_samples_per_process"] == [512]

    assert_trains_like(run_weights(tmp_path / "two"), run_weights(seed_one_process), initial_weights("seed", 32))
    # only the main process prints: one results table
    assert two.stderr.count("Results") + two.stdout.count("Results") == 1
    if tracked:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        (run,) = client.search_runs([client.get_experiment_by_name("mnist-addition").experiment_id])
        assert run.data.params["setup/num_processes"] == "2"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_digit_acc")] == [8, 16]


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
    two = launch_two([*args, "--output-dir", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-2000:]
    assert main(["train", *args, "--gradient-accumulation-steps", "2", "--output-dir", str(tmp_path / "acc")]) == 0
    a, b = run_weights(tmp_path / "two"), run_weights(tmp_path / "acc")
    trained = [k for k in b if b[k].is_floating_point() and "running" not in k]
    assert_trains_like(a, b, initial_weights("fast", 8), trained)


# ------------------------------------------------------------------------------------------------
# Kill and resume
# ------------------------------------------------------------------------------------------------


def test_resume_on_another_number_of_processes(crashed, tmp_path):
    """Killed as 1 process, resumed by 2 (the global batch is unchanged, each process takes half):
    it finishes its 3 epochs, says what changed, and still learns. Not bit-identical: BatchNorm then
    normalises half-batches."""
    run = copy_run(crashed, tmp_path / "run")
    two = launch_two(["--resume", str(run)])
    assert two.returncode == 0, two.stderr[-2000:]
    assert "note: resuming a 1-process run on 2 processes" in two.stderr + two.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["val_digit_acc"] > 0.8
    final = json.loads((run / "metrics.json").read_text())
    assert final["setup"]["num_processes"] == 2 and final["setup"]["device"].startswith("cpu")
