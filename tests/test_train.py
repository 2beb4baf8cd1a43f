"""fit(): learns, is reproducible, reports every epoch, accumulates gradients correctly."""

from __future__ import annotations

import pytest
import torch

from mnist_addition.config import ConfigError
from mnist_addition.train import fit, resolve_mixed_precision

from .conftest import tiny_config


@pytest.fixture(scope="module")
def trained(mnist_dir):
    rows = []
    final = fit(tiny_config(mnist_dir), report=rows.append, progress=False)
    return final, rows


def test_learns_well_above_chance(trained):
    final, _ = trained
    # chance is 10% (digit) and at most ~10% (sum); the glyphs are easy, so this is a clear margin
    assert final["val"]["digit_acc"] > 0.8 and final["test"]["digit_acc"] > 0.8
    assert final["val"]["sum_acc"] > 0.6 and final["test"]["sum_acc"] > 0.6


def test_reports_once_per_epoch_with_both_accuracies(trained):
    _, rows = trained
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("train_loss", "val_loss", "val_digit_acc", "val_sum_acc", "val_both_acc", "images_per_s"):
        assert all(key in r for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_same_config_and_seed_give_identical_metrics(mnist_dir, trained):
    final, rows = trained
    again = fit(tiny_config(mnist_dir), progress=False)
    assert again["test"] == final["test"] and again["val"] == final["val"]
    assert [r["train_loss"] for r in again["history"]] == [r["train_loss"] for r in rows]


def test_another_seed_gives_another_model(mnist_dir, trained):
    final, _ = trained
    other = fit(tiny_config(mnist_dir, seed=1, epochs=1), progress=False)
    assert other["history"][0]["train_loss"] != final["history"][0]["train_loss"]


def test_single_process_on_cpu(trained):
    final, _ = trained
    assert final["setup"]["num_processes"] == 1 and final["setup"]["device"] == "cpu"


def test_seed_preset_trains_through_the_same_loop(mnist_dir):
    final = fit(tiny_config(mnist_dir, preset="seed", width=32, epochs=1, optimizer="sgd", train_limit=64,
                            batch_size=32), progress=False)
    assert final["params"] == 6_384_925 and 0.0 <= final["test"]["digit_acc"] <= 1.0


def test_gradient_accumulation_matches_one_big_batch(mnist_dir):
    """K micro-batches of B/K accumulate to the update of one batch of B (fp32).

    BatchNorm normalises over the batch it sees, so the check uses the seed network (no BatchNorm).
    Tolerance 1e-5: the same sums in a different order, in float32.
    """
    common = dict(preset="seed", width=32, epochs=1, optimizer="sgd", schedule="constant", train_limit=64,
                  batch_size=32, weight_decay=0.0, shift=0)
    one = fit(tiny_config(mnist_dir, **common), progress=False)
    acc = fit(tiny_config(mnist_dir, **common, gradient_accumulation_steps=4), progress=False)
    assert acc["history"][0]["train_loss"] == pytest.approx(one["history"][0]["train_loss"], rel=1e-5)
    assert acc["val"]["loss"] == pytest.approx(one["val"]["loss"], rel=1e-5)


def test_batch_larger_than_the_training_set(mnist_dir):
    with pytest.raises(ConfigError, match="larger than the 500 training images"):
        fit(tiny_config(mnist_dir, batch_size=1024), progress=False)


def test_auto_precision_resolves_to_a_concrete_choice():
    assert resolve_mixed_precision("no", cuda=False) == "no"
    assert resolve_mixed_precision("auto", cuda=False) in ("bf16", "no")
    assert torch.cuda.is_available() or resolve_mixed_precision("fp16", cuda=False) == "fp16"


def test_limits_apply_to_data_passed_in(mnist_dir):
    from mnist_addition.data import load_mnist, make_splits

    data = make_splits(load_mnist(mnist_dir, download=False), val_size=100)
    final = fit(tiny_config(mnist_dir, epochs=1, train_limit=64, eval_limit=50), data=data, progress=False)
    assert final["setup"]["train_samples_per_process"] == [64] and final["test"]["n"] == 50


def test_test_every_epoch_reports_the_final_test_metrics(mnist_dir):
    final = fit(tiny_config(mnist_dir, epochs=2), progress=False, test_every_epoch=True)
    last = final["history"][-1]
    assert [r["epoch"] for r in final["history"]] == [1, 2]
    assert final["test"]["digit_acc"] == last["test_digit_acc"] and final["test"]["n"] == last["test_n"] == 200
