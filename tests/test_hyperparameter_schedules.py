"""Hyperparameters that change during a run: the schedule, its checks, and a run that continues
another run's checkpoint with new values (population-based training's exploit), replayed from
scratch by its own config."""

from __future__ import annotations

import json

import pytest
import torch

from mnist_addition.core import hparams
from mnist_addition.core.config import ConfigError, TrainConfig
from mnist_addition.rundir.checkpoint import checkpoint_dir, read_state
from mnist_addition.training.loop import fit
from mnist_addition.training.start import Continuation
from mnist_addition.training.step import lr_schedule

from .helpers import tiny_config


def test_values_hold_from_the_start_of_their_epoch_and_stretches_say_all_of_them():
    config = TrainConfig(schedule="constant", epochs=6, hparam_schedule=[{"epoch": 3, "lr": 0.004},
                                                                         {"epoch": 5, "sum_weight": 1}])
    assert [hparams.values_at(config, e)["lr"] for e in range(1, 7)] == [0.008] * 2 + [0.004] * 4
    assert [hparams.values_at(config, e)["sum_weight"] for e in range(1, 7)] == [0.5] * 4 + [1.0] * 2
    assert [s["epoch"] for s in hparams.segments(config)] == [1, 3, 5]
    assert hparams.segments(config)[2] == {"epoch": 5, "lr": 0.004, "weight_decay": 0.0005, "sum_weight": 1.0,
                                           "label_smoothing": 0.1}
    lr = lr_schedule(config, 6 * 10)  # 10 steps an epoch: the epoch's value at each of its steps
    assert [lr(s) for s in (0, 19, 20, 59)] == [0.008, 0.008, 0.004, 0.004]
    assert hparams.per_epoch(config, "sum_weight") == [hparams.values_at(config, e)["sum_weight"] for e in range(1, 7)]


def test_a_continued_config_keeps_the_past_and_holds_its_own_values_after_it():
    past = hparams.segments(TrainConfig(schedule="constant", epochs=6, hparam_schedule=[{"epoch": 3, "lr": 0.004}]))
    mine = TrainConfig(schedule="constant", epochs=6, lr=0.002, sum_weight=0.6)
    config = hparams.continued(mine, past, 4)  # copied at the end of epoch 4
    assert (config.lr, config.sum_weight) == (0.008, 0.5)  # epoch 1 is the copied run's
    assert config.hparam_schedule == [{"epoch": 3, "lr": 0.004}, {"epoch": 5, "lr": 0.002, "sum_weight": 0.6}]
    assert hparams.disagreement(config, past, 4) is None
    assert hparams.disagreement(mine, past, 4) == "lr was 0.008 in epoch 1, the config says 0.002"
    same = hparams.continued(TrainConfig(schedule="constant", epochs=6, lr=0.004), past, 4)  # nothing new
    assert hparams.segments(same) == past


@pytest.mark.parametrize("schedule, match", [
    ([{"epoch": 1, "lr": 0.1}], "entry 1 starts at epoch 1: each entry starts later"),
    ([{"epoch": 3, "lr": 0.1}, {"epoch": 3, "lr": 0.2}], "entry 2 starts at epoch 3"),
    ([{"epoch": 2001, "lr": 0.1}], "within the run's 2000 epochs"),
    ([{"epoch": 3}], r"entry 1 \(epoch 3\) changes nothing"),
    ([{"epoch": 3, "width": 4}], "changes 'width', which cannot change during a run"),
    ([{"epoch": 3, "lr": -1}], r"entry 1 \(epoch 3\): --lr must be > 0"),
    ([{"epoch": 3, "sum_weight": 2}], r"--sum-weight must be in \[0, 1\]"),
    ([{"epoch": 3, "lr": "0.1"}], "not a number"),
    (["epoch 3"], "not an object"),
    ("[]", "must be list"),
    ([{"epoch": e, "sum_weight": 0.5} for e in range(2, 1003)], "holds 1,001 changes, at most 1,000"),
])
def test_a_bad_schedule_is_one_line_naming_the_entry(schedule, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(schedule="constant", epochs=2000, hparam_schedule=schedule)


def test_the_learning_rate_changes_only_under_the_constant_schedule():
    with pytest.raises(ConfigError, match="changes lr under --schedule onecycle: a changed learning rate needs "
                                          "--schedule constant"):
        TrainConfig(epochs=6, hparam_schedule=[{"epoch": 3, "lr": 0.004}])
    TrainConfig(epochs=6, hparam_schedule=[{"epoch": 3, "sum_weight": 0.7}])  # the loss weights may change


def history(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_continued_run_copies_the_weights_records_them_and_its_config_replays_it_bit_for_bit(mnist_dir, tmp_path):
    """Run A trains 3 epochs; B continues A's epoch-2 checkpoint with another lr, sum weight and weight
    decay for epoch 3. B's metrics.jsonl says what held in each epoch and whose weights epoch 3
    started from; B's config.json, trained from scratch, follows the same schedule to the same weights."""
    a, b, replay = tmp_path / "a", tmp_path / "b", tmp_path / "replay"
    base = tiny_config(mnist_dir, cpu=True, schedule="constant", keep_checkpoints=5)
    fit(base.replace(output_dir=str(a)), progress=False)
    steps = read_state(checkpoint_dir(a, 15))["step"]  # 15 steps an epoch (470 images, batch 32)
    source = checkpoint_dir(a, 2 * steps)
    saved = read_state(source)
    assert saved["schedule"] == hparams.segments(base)
    new = base.replace(lr=0.003, sum_weight=0.7, weight_decay=0.002, output_dir=str(b))
    config = hparams.continued(new, saved["schedule"], saved["epoch"])
    fit(config, progress=False, start=Continuation(source, "run a"))

    rows = history(b)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[:2] == history(a)[:2]  # the copied run's epochs
    assert [(r["lr"], r["sum_weight"], r["weight_decay"]) for r in rows] == [(0.01, 0.5, 0.0005)] * 2 + [(0.003, 0.7, 0.002)]
    assert rows[2]["weights_from"] == f"run a (epoch 2, step {2 * steps})" and "weights_from" not in rows[1]
    assert rows[2]["val_loss"] != history(a)[2]["val_loss"]  # epoch 3 trained with the new values
    written = json.loads((b / "config.json").read_text())["config"]
    assert written["hparam_schedule"] == [{"epoch": 3, "lr": 0.003, "weight_decay": 0.002, "sum_weight": 0.7}]

    fit(TrainConfig.load(b / "config.json").replace(output_dir=str(replay)), progress=False)
    again = history(replay)
    drop = ("images_per_s", "epoch_seconds", "train_seconds", "weights_from")
    assert [{k: v for k, v in r.items() if k not in drop} for r in again] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rows]
    from safetensors.torch import load_file

    theirs, ours = load_file(str(b / "model.safetensors")), load_file(str(replay / "model.safetensors"))
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)


def test_a_continued_ema_run_copies_the_average_too(mnist_dir, tmp_path):
    """B continues A's epoch-2 checkpoint with A's own values: with the average copied as well, B
    ends with A's averaged weights to the bit (restarted from the weights, it would not)."""
    from safetensors.torch import load_file

    a, b = tmp_path / "a", tmp_path / "b"
    base = tiny_config(mnist_dir, cpu=True, schedule="constant", ema=0.9)
    fit(base.replace(output_dir=str(a)), progress=False)
    source = checkpoint_dir(a, 2 * read_state(checkpoint_dir(a, 45))["step"])
    fit(base.replace(output_dir=str(b)), progress=False, start=Continuation(source, "a"))
    theirs, ours = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert history(b)[2]["val_loss"] == history(a)[2]["val_loss"]


def test_a_continuation_whose_config_disagrees_with_the_past_or_starts_mid_epoch_is_refused(mnist_dir, tmp_path):
    a = tmp_path / "a"
    base = tiny_config(mnist_dir, cpu=True, schedule="constant", epochs=2, checkpoint_every=5, keep_checkpoints=10)
    fit(base.replace(output_dir=str(a)), progress=False)
    with pytest.raises(ConfigError, match=r"cannot continue from .*step-00000015: lr was 0.01 in epoch 1, the config "
                                          r"says 0.003; a continued run's config keeps the past"):
        fit(base.replace(lr=0.003, output_dir=str(tmp_path / "b")), progress=False,
            start=Continuation(checkpoint_dir(a, 15), "a"))
    from mnist_addition.rundir.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="in the middle of epoch 1: a run continues another from the end"):
        fit(base.replace(output_dir=str(tmp_path / "c")), progress=False,
            start=Continuation(checkpoint_dir(a, 10), "a"))
    with pytest.raises(ConfigError, match="start must be one of new, overwrite, resume or a Continuation"):
        fit(base.replace(output_dir=str(a)), progress=False, start="continue")
    assert not (tmp_path / "b" / "config.json").exists() and not (tmp_path / "c" / "config.json").exists()
