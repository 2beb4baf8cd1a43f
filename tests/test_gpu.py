"""What only a CUDA GPU can show: bf16 training and evaluation, on-device random draws, and
bit-identical reruns with --deterministic. Every test here is marked ``gpu`` and skips elsewhere
(the compiled step and the resume after kill -9 have their GPU variants next to their CPU ones)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mnist_addition.commands.cli import main
from mnist_addition.core.data import Split, train_batches
from mnist_addition.training.loop import fit

from .helpers import tiny_config

pytestmark = pytest.mark.gpu


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def test_bf16_training_and_evaluation_on_the_gpu(mnist_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    final = fit(tiny_config(mnist_dir, mixed_precision="bf16", output_dir=str(run)), progress=False)
    setup = final["setup"]
    assert setup["device"].startswith("cuda") and setup["mixed_precision"] == "bf16"
    assert setup["matmul_precision"] == "tf32"
    assert final["val"]["digit_acc"] > 0.8 and final["test"]["sum_acc"] > 0.6
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json", "--no-download"]) == 0
    scored = json.loads(capsys.readouterr().out)["test"]
    # evaluate re-scores under the same bf16 autocast: the same predictions, to within one pair
    n = final["test"]["n"]
    assert scored["n"] == n
    assert scored["digit_acc"] == pytest.approx(final["test"]["digit_acc"], abs=1.01 / n)
    assert scored["sum_acc"] == pytest.approx(final["test"]["sum_acc"], abs=1.01 / n)


def test_random_draws_happen_on_the_gpu_and_repeat(mnist_dir):
    device = torch.device("cuda")
    split = Split(torch.randn(512, 1, 28, 28, device=device), torch.randint(0, 10, (512,), device=device), None)
    first = list(train_batches(split, 64, seed=3, epoch=2, shift=2))
    again = list(train_batches(split, 64, seed=3, epoch=2, shift=2))
    for a, b in zip(first, again):
        assert all(x.device.type == "cuda" for x in a)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    resumed = list(train_batches(split, 64, seed=3, epoch=2, shift=2, start_step=3))  # mid-epoch resume
    assert len(resumed) == len(first) - 3 and all(torch.equal(x, y) for x, y in zip(first[3], resumed[0]))


def test_deterministic_gpu_runs_give_bit_identical_weights(mnist_dir, tmp_path):
    runs = []
    for name in ("a", "b"):
        run = tmp_path / name
        run.mkdir()
        final = fit(tiny_config(mnist_dir, deterministic=True, output_dir=str(run)), progress=False)
        assert final["setup"]["deterministic"] is True and final["setup"]["device"].startswith("cuda")
        runs.append((final, _weights(run)))
    (a, wa), (b, wb) = runs
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
