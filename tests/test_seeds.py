"""K seeds of one config (``training/seeds.py``): trained in lockstep, each exactly as alone, and
what they add up to."""

from __future__ import annotations

import json
import math
import threading

import pytest

from mnist_addition.commands.cli import main
from mnist_addition.training.run import train
from mnist_addition.training.seeds import over_seeds, seed_configs, train_seeds

from .helpers import COMMON, CPU, same_weights, tiny_config


def test_one_seed_reports_its_row_unchanged_and_several_their_mean_spread_and_worst():
    row = {"epoch": 2, "val_both_acc": 0.5, "weights_from": "t1"}
    assert over_seeds([row]) == row
    rows = [{"epoch": 2, "val_both_acc": a, "val_loss": loss, "lr": 0.1, "weights_from": w}
            for a, loss, w in ((0.90, 0.3, "t1"), (0.96, 0.1, "t2"), (0.93, 0.2, "t3"))]
    got = over_seeds(rows)
    assert got["val_both_acc"] == pytest.approx(0.93) and got["val_both_acc_min"] == 0.90
    assert got["val_both_acc_std"] == pytest.approx(math.sqrt((0.03**2 + 0.03**2) / 3))
    assert got["val_loss"] == pytest.approx(0.2) and got["val_loss_max"] == 0.3  # the worst loss is the largest
    assert got["lr"] == 0.1 and got["epoch"] == 2 and got["weights_from"] == "t1"  # shared: exactly themselves
    assert got["seeds"] == 3 and "lr_std" not in got


def test_seeds_in_lockstep_train_each_exactly_as_alone_and_report_each_epoch_of_all(mnist_dir, tmp_path):
    """Dropout draws from the global random state every step: each seed keeps its own across the
    hand-overs, so each seed's weights equal those of the same seed trained alone."""
    config = tiny_config(mnist_dir, cpu=True, epochs=2, dropout=0.3, seed=5)
    reported = []
    outcomes = train_seeds(seed_configs(config, 3, str(tmp_path / "k")), reported.append, starts=["new"] * 3,
                           progress=False)
    assert [o.config.seed for o in outcomes] == [5, 6, 7]
    assert [[row["epoch"] for row in rows] for rows in reported] == [[1, 1, 1], [2, 2, 2]]
    for i, seed in enumerate((5, 6, 7)):
        alone = train(config.replace(seed=seed, output_dir=str(tmp_path / f"alone-{seed}")), progress=False)
        assert same_weights(tmp_path / "k" / f"seed-{seed}", tmp_path / f"alone-{seed}")
        assert [rows[i]["val_both_acc"] for rows in reported] == [r["val_both_acc"] for r in alone.final["history"]]
    assert not [t for t in threading.enumerate() if t.name.startswith("seed-")]


def test_a_failing_seed_stops_the_others_and_its_error_is_raised(mnist_dir, tmp_path, monkeypatch):
    from mnist_addition.training import step

    real, calls = step.train_step, []

    def fails_in_the_second_seed(run, *args):
        calls.append(run.config.seed)
        if run.config.seed == 1 and len([c for c in calls if c == 1]) > 3:
            raise RuntimeError("injected: seed 1 fails in its first epoch")
        return real(run, *args)

    monkeypatch.setattr(step, "train_step", fails_in_the_second_seed)
    config = tiny_config(mnist_dir, cpu=True, epochs=3)
    with pytest.raises(RuntimeError, match="injected"):
        train_seeds(seed_configs(config, 3, str(tmp_path / "k")), None, starts=["new"] * 3, progress=False)
    assert not [t for t in threading.enumerate() if t.name.startswith("seed-")]  # all three ended
    assert set(calls) == {0, 1}  # seed 2 never started: seed 1 failed before its turn
    status = json.loads((tmp_path / "k" / "seed-0" / "status.json").read_text())
    assert status["status"] == "failed"  # seed 0 stopped at its epoch's end, resumable
    monkeypatch.undo()
    assert main(["train", "--seeds", "3", *_args(mnist_dir, tmp_path / "k"), "--auto-resume"]) == 0  # all three end
    assert all((tmp_path / "k" / f"seed-{s}" / "metrics.json").exists() for s in (0, 1, 2))


def _args(mnist_dir, out) -> list[str]:
    return ["--width", "8", "--epochs", "3", "--lr", "0.01", "--data-dir", str(mnist_dir), "--output-dir", str(out),
            *COMMON, *CPU]


def test_train_seeds_writes_each_seed_and_their_mean_and_an_auto_resume_keeps_them(mnist_dir, tmp_path, capsys):
    out = tmp_path / "k"
    assert main(["train", "--seeds", "2", *_args(mnist_dir, out)]) == 0
    err = capsys.readouterr()
    assert "training 2 seeds 0, 1" in err.err and "mean of 2 seeds" in err.err and "mean ± std" in err.out
    summary = json.loads((out / "seeds.json").read_text())
    finals = [json.loads((out / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    assert summary["seeds"] == [0, 1]
    assert [r["test_both_acc"] for r in summary["runs"]] == [f["test"]["both_acc"] for f in finals]
    assert summary["mean"]["test_both_acc"] == pytest.approx(sum(f["test"]["both_acc"] for f in finals) / 2)
    assert summary["worst"]["test_both_acc"] == min(f["test"]["both_acc"] for f in finals)
    assert main(["train", "--seeds", "2", *_args(mnist_dir, out), "--auto-resume"]) == 0  # both finished: nothing to do
    assert json.loads((out / "seeds.json").read_text()) == summary
    assert main(["train", "--seeds", "2", "--resume", str(out / "seed-0")]) == 2
    assert "--auto-resume" in capsys.readouterr().err
