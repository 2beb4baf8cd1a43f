"""A sweep's ranking, statuses, GPU shares and result files, as pure functions: no Ray here."""

from __future__ import annotations

import json
import math

import pytest
from rich.console import Console

from mnist_addition.config import TrainConfig
from mnist_addition.sweep.options import NoUsableTrial, SweepError, SweepOptions, gpu_share
from mnist_addition.sweep.results import rank, trial_status, write_results
from mnist_addition.sweep.storage import Store


def row(trial_id: str, status: str, both: float | None, epochs_run: int = 2, budget: int = 2, **extra) -> dict:
    return {"trial_id": trial_id, "lr": 0.01, "status": status, "epochs_run": epochs_run, "budget_epochs": budget,
            "val_digit_acc": both, "val_sum_acc": both, "val_both_acc": both, "val_loss": 0.1, "images_per_s": 1.0,
            "train_seconds": 1.0, "trial_seconds": 2.0, "processes": 1, "resumed_from_epoch": 0, "node_id": "n",
            "gpu_ids": "", "curve": [{"epoch": 1, "val_both_acc": both or 0.0}], **extra}


@pytest.mark.parametrize("ray_status, errored, run, budget, expected", [
    ("TERMINATED", False, 4, 4, "finished"),
    ("TERMINATED", False, 2, 4, "stopped early"),  # ASHA stopped it: never "finished"
    ("TERMINATED", False, 1, 1, "finished"),  # a trial whose own (searched) epochs were 1
    ("TERMINATED", True, 4, 4, "error"),
    ("ERROR", False, 1, 4, "error"),
    ("PAUSED", False, 1, 4, "unfinished"),
    ("PENDING", False, 0, 4, "unfinished"),
])
def test_trial_status(ray_status, errored, run, budget, expected):
    assert trial_status(ray_status, errored, run, budget) == expected


def test_ranking_skips_errored_unfinished_and_nan_trials():
    trials = [row("err", "error", 0.99), row("nan", "finished", math.nan), row("none", "finished", None),
              row("half", "unfinished", 0.98), row("ok", "finished", 0.90), row("good", "finished", 0.95)]
    assert [t["trial_id"] for t in rank(trials, "val_both_acc", "max")] == ["good", "ok"]


def test_finished_trials_outrank_stopped_ones_and_mode_min_puts_the_lowest_first():
    trials = [row("stopped", "stopped early", 0.99, epochs_run=1, budget=4), row("a", "finished", 0.95),
              row("b", "finished", 0.97)]
    assert [t["trial_id"] for t in rank(trials, "val_both_acc", "max")] == ["b", "a", "stopped"]
    assert [t["trial_id"] for t in rank(trials, "val_both_acc", "min")] == ["a", "b", "stopped"]
    only_stopped = [row("s1", "stopped early", 0.9, 1, 4), row("s2", "stopped early", 0.8, 2, 4)]
    assert [t["trial_id"] for t in rank(only_stopped, "val_both_acc", "max")] == ["s1", "s2"]


@pytest.mark.parametrize("cpus, gpus, per_trial, share", [
    (16, 0, 2, 0.0),  # no GPUs: CPU trials
    (16, 1, 2, 0.125),  # 8 trials fit the CPUs: 8 per GPU
    (4, 1, 1, 0.25),
    (16, 8, 2, 1.0),  # one GPU each
    (64, 8, 2, 0.25),  # 32 trials on 8 GPUs
    (12, 1, 2, 0.1666),  # 6 per GPU, rounded down so that 6 fit
    (1, 2, 2, 1.0),  # fewer CPUs than one trial asks for: still one GPU a trial, not more
])
def test_the_default_gpu_share_fills_the_gpus(cpus, gpus, per_trial, share):
    got = gpu_share(cpus, gpus, per_trial)
    assert got == pytest.approx(share)
    if got:
        assert int(1 / got) * got <= 1.0


@pytest.mark.parametrize("changes, message", [
    ({"gpus_per_trial": 1.5}, "whole number of GPUs"),
    ({"gpus_per_trial": -1.0}, "must be >= 0"),
    ({"gpus_per_trial": 1e-6}, "below Ray's smallest GPU share"),
    ({"gpus_per_trial": 0.5, "workers_per_trial": 2}, "cannot split a fraction of a GPU"),
    ({"gpus_per_trial": 2.0, "workers_per_trial": 3}, "must equal --gpus-per-trial 2"),
    ({"cpus_per_trial": math.inf}, "--cpus-per-trial must be > 0"),
])
def test_bad_gpu_and_worker_options_are_refused(changes, message):
    with pytest.raises(SweepError, match=message):
        SweepOptions(**changes).check()
    SweepOptions(gpus_per_trial=0.25).check()  # 4 trials per GPU is fine


def _write(tmp_path, trials):
    options = SweepOptions(name="s", metric="val_both_acc", num_samples=len(trials))
    store = Store(str(tmp_path / "s"))
    return write_results(trials, options, ["lr", "epochs"], {"width": 8}, 4, store, 10.0,
                         Console(file=open(tmp_path / "out.txt", "w")))


def test_the_best_config_is_the_winners_own_epochs(tmp_path):
    trials = [row("long", "finished", 0.97, 4, 4, epochs=4), row("short", "finished", 0.96, 1, 1, epochs=1),
              row("cut", "stopped early", 0.99, 2, 4, epochs=4)]
    summary = _write(tmp_path, trials)
    best = TrainConfig.load(tmp_path / "s" / "best_config.json")
    assert summary["best_trial"] == "long" and best.epochs == 4 and best.width == 8
    assert summary["best"]["epochs_run"] == summary["best"]["budget_epochs"] == 4
    lines = (tmp_path / "s" / "trials.csv").read_text().splitlines()
    assert lines[0].startswith("trial_id,lr,epochs,status,epochs_run,budget_epochs,")
    assert [line.split(",")[0] for line in lines[1:]] == ["long", "short", "cut"]  # ranked


def test_a_sweep_without_a_usable_trial_writes_no_best_config(tmp_path):
    trials = [row("a", "error", 0.5), row("b", "finished", math.nan)]
    with pytest.raises(NoUsableTrial) as error:
        _write(tmp_path, trials)
    assert error.value.exit_code == 1 and "no trial produced a usable val_both_acc (1 failed" in str(error.value)
    assert "\n" not in str(error.value)
    folder = tmp_path / "s"
    assert not (folder / "best_config.json").exists()
    assert json.loads((folder / "summary.json").read_text())["best_trial"] is None
    assert len((folder / "trials.csv").read_text().splitlines()) == 3  # the failures are still listed


def test_earlier_nodes_name_where_a_moved_trial_ran_before():
    import pandas as pd

    from mnist_addition.sweep.results import earlier_nodes

    assert earlier_nodes(pd.DataFrame({"node_id": ["a", "a", "b", "b"]})) == ["a"]
    assert earlier_nodes(pd.DataFrame({"node_id": ["a", "a"]})) == []
    assert earlier_nodes(pd.DataFrame({"epoch": [1]})) == [] and earlier_nodes(None) == []
