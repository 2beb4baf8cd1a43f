"""--compile: the compiled training step computes what the eager one does, and changes nothing on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mnist_addition.training.loop import fit

from .helpers import tiny_config

pytestmark = pytest.mark.slow  # see pyproject.toml: make test-fast leaves these out

# SGD, fp32, 4 steps of 32 images. The compiler fuses and reorders float32 arithmetic, so the
# weights are not bit-identical to eager. Measured on the 2-core CPU after 4 steps: max |diff| 2.2e-7
# (BatchNorm running statistics), at most 3e-5 of any tensor's own update (updates 2e-3 to 0.3).
# Tolerance: 1e-5 absolute, and 0.1% of each tensor's update.
TOLERANCE = 1e-5

DEVICES = [pytest.param(True, id="cpu"), pytest.param(False, id="gpu", marks=pytest.mark.gpu)]


def _train(mnist_dir: Path, run: Path, cpu: bool, compile: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    run.mkdir()
    config = tiny_config(mnist_dir, cpu=cpu, compile=compile, epochs=1, train_limit=128, optimizer="sgd",
                         lr=0.05, output_dir=str(run), log_every=1)
    final = fit(config, progress=False)
    return final, load_file(str(run / "model.safetensors"))


@pytest.mark.parametrize("cpu", DEVICES)
def test_compiled_step_matches_the_eager_step(mnist_dir, tmp_path, cpu):
    from accelerate.utils import set_seed
    from torch._dynamo.utils import counters

    from mnist_addition.core.model import build_model

    eager, eager_weights = _train(mnist_dir, tmp_path / "eager", cpu, compile=False)
    graphs = counters["stats"]["unique_graphs"]
    compiled, compiled_weights = _train(mnist_dir, tmp_path / "compiled", cpu, compile=True)
    assert counters["stats"]["unique_graphs"] > graphs  # the step really went through the compiler
    assert compiled["setup"]["compile"] is True and eager["setup"]["compile"] is False
    # the same keys as eager: a compiled run's model.safetensors loads into the plain model
    assert compiled_weights.keys() == eager_weights.keys()
    set_seed(0)
    init = build_model("fast", 8).state_dict()
    for name, value in eager_weights.items():
        if not value.is_floating_point():
            continue
        diff = (compiled_weights[name] - value).abs().max().item()
        update = (value - init[name]).abs().max().item()
        assert diff <= TOLERANCE and diff <= max(1e-3 * update, 1e-7), (name, diff, update)
    assert compiled["history"][0]["train_loss"] == pytest.approx(eager["history"][0]["train_loss"], rel=1e-5)
