"""A sweep's ranking, statuses, GPU shares and result files, as pure functions: no Ray here."""

from __future__ import annotations

import json
import math

import pytest
from rich.console import Console

from mnist_addition.core.config import TrainConfig
from mnist_addition.sweep.options import NoUsableTrial, SweepError, SweepOptions, gpu_share, trial_threads
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


@pytest.mark.parametrize("cpus, threads", [(0.25, 1), (1, 1), (1.5, 1), (2, 2), (0.6 * 5, 3), (8, 8)])
def test_a_trial_computes_with_the_whole_cpus_it_reserved(cpus, threads):
    assert trial_threads(cpus) == threads


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


# -- multi-objective sweeps: the Pareto front and --pick, as pure functions ---------------------

def cost(trial_id: str, both: float, seconds: float, status: str = "finished", **extra) -> dict:
    return row(trial_id, status, both, train_seconds=seconds, **extra)


def test_the_pareto_front_is_the_trials_no_other_beats_on_both_metrics():
    from mnist_addition.sweep.results import pareto_front

    trials = [cost("fast", 0.980, 5.0), cost("best", 0.995, 20.0), cost("middle", 0.990, 10.0),
              cost("dominated", 0.985, 12.0),  # slower and worse than middle
              cost("tie", 0.990, 10.0),  # the same point as middle: neither dominates the other
              cost("cut", 0.999, 1.0, status="stopped early", epochs_run=1),  # never trained to its end
              cost("broken", math.nan, 1.0), cost("failed", 0.999, 1.0, status="error")]
    front = pareto_front(trials, ("val_both_acc", "train_seconds"), ("max", "min"))
    assert [t["trial_id"] for t in front] == ["best", "middle", "tie", "fast"]  # best first on the first metric
    # only stopped trials: they are the pool (the best there is to show)
    stopped = [cost("a", 0.98, 3.0, status="stopped early"), cost("b", 0.97, 4.0, status="stopped early")]
    assert [t["trial_id"] for t in pareto_front(stopped, ("val_both_acc", "train_seconds"), ("max", "min"))] == ["a"]
    # three metrics: a trial best on any one of them is on the front
    three = [cost("x", 0.99, 9.0, val_loss=0.3), cost("y", 0.98, 9.5, val_loss=0.1), cost("z", 0.98, 9.6, val_loss=0.2)]
    assert {t["trial_id"] for t in pareto_front(three, ("val_both_acc", "train_seconds", "val_loss"),
                                                ("max", "min", "min"))} == {"x", "y"}


def test_pick_takes_the_cheapest_trial_that_meets_the_rule_and_names_the_closest_when_none_does():
    from mnist_addition.sweep.results import NoTrialMeetsRule, choose

    trials = [cost("slow", 0.995, 20.0), cost("quick", 0.993, 8.0), cost("fastest", 0.980, 3.0),
              cost("cut", 0.999, 2.0, status="stopped early", epochs_run=1)]
    both = ("val_both_acc", "train_seconds")
    assert choose(trials, SweepOptions(metric=both))["trial_id"] == "slow"  # no rule: the best on the first
    assert choose(trials, SweepOptions(metric=both, pick="val_both_acc>=0.993"))["trial_id"] == "quick"
    assert choose(trials, SweepOptions(metric=both, pick="train_seconds <= 10"))["trial_id"] == "quick"
    with pytest.raises(NoTrialMeetsRule) as error:
        choose(trials, SweepOptions(metric=both, pick="val_both_acc>=0.9999"))
    assert error.value.exit_code == 1
    assert "the closest is slow with val_both_acc 0.995 (train_seconds 20)" in str(error.value)  # finished first


def test_a_k_seed_sweep_picks_the_cheapest_trial_whose_worst_seed_meets_the_rule(tmp_path):
    """The mean alone would take "lucky": its mean meets the rule, its worst seed does not."""
    trials = [cost("steady", 0.994, 9.0, val_both_acc_min=0.993, val_both_acc_std=0.001, seeds=3),
              cost("lucky", 0.994, 5.0, val_both_acc_min=0.985, val_both_acc_std=0.006, seeds=3),
              cost("slow", 0.996, 20.0, val_both_acc_min=0.995, val_both_acc_std=0.001, seeds=3)]
    options = SweepOptions(name="s", metric=("val_both_acc", "train_seconds"), pick="val_both_acc_min>=0.993",
                           num_samples=3, seeds=3)
    assert options.pick_rule()[3] == "train_seconds"  # by the cost, not by the mean of the metric it names
    summary = write_results(trials, options, ["lr"], {"width": 8}, 2, Store(str(tmp_path / "s")), 10.0,
                            Console(file=open(tmp_path / "out.txt", "w")))
    assert summary["best_trial"] == "steady" and summary["best"]["val_both_acc_min"] == 0.993
    assert json.loads((tmp_path / "s" / "best_config.json").read_text())["seeds"] == 3
    assert TrainConfig.load(tmp_path / "s" / "best_config.json").width == 8  # train --config reads it
    header = (tmp_path / "s" / "trials.csv").read_text().splitlines()[0].split(",")
    assert {"seeds", "val_both_acc_std", "val_both_acc_min"} <= set(header)
    assert "val_both_acc_std" in (tmp_path / "s" / "pareto.csv").read_text().splitlines()[0]


def test_a_one_seed_sweep_writes_the_columns_and_best_config_it_always_did(tmp_path):
    _write(tmp_path, [row("a", "finished", 0.9, epochs=2)])
    header = (tmp_path / "s" / "trials.csv").read_text().splitlines()[0]
    assert header == ("trial_id,lr,epochs,status,epochs_run,budget_epochs,val_digit_acc,val_sum_acc,val_both_acc,"
                      "val_loss,images_per_s,train_seconds,trial_seconds,processes,threads,resumed_from_epoch,node_id,"
                      "gpu_ids,moved_from,continued_from")
    assert (tmp_path / "s" / "best_config.json").read_text() == \
        TrainConfig.load(tmp_path / "s" / "best_config.json").replace().to_json() + "\n"


@pytest.mark.parametrize("changes, message", [
    (dict(metric=("val_both_acc_min", "train_seconds")), "is the worst of a trial's seeds, and a trial has one"),
    (dict(metric=("val_both_acc", "train_seconds"), pick="val_both_acc_min>=0.99"), "add --seeds 3"),
    (dict(seeds=0), "--seeds must be a whole number in 1..64"),
    (dict(seeds=2, workers_per_trial=2), "--seeds trains its seeds in one process"),
    (dict(metric=("val_both_acc", "val_both_acc")), "is given twice"),
    (dict(metric=("val_both_acc", "train_seconds"), mode=("max",)), "once per --metric"),
    (dict(metric=("val_both_acc", "train_seconds"), mode=("max", "max")), "--mode max with --metric train_seconds"),
    (dict(metric=("val_both_acc", "train_seconds"), pick="val_both_acc > 0.99"), "is not a rule"),
    (dict(metric=("val_both_acc", "train_seconds"), pick="speed>=3"), "is not a rule"),
    (dict(metric=("val_both_acc", "train_seconds"), pick="val_both_acc>=high"), "is not a rule"),
    (dict(pick="val_both_acc>=0.99"), "needs another --metric to pick the best by"),
])
def test_bad_metric_mode_and_pick_options_are_refused(changes, message):
    with pytest.raises(SweepError, match=message):
        SweepOptions(**changes).check()


def test_the_worst_seed_and_the_time_limits_are_flags_of_tune(capsys):
    from mnist_addition.commands.cli import main

    assert main(["tune", "--metric", "val_both_acc_min", "--metric", "train_seconds"]) == 2  # the flag parses ...
    assert "is the worst of a trial's seeds, and a trial has one: add --seeds 3" in capsys.readouterr().err
    SweepOptions(metric=("val_both_acc_min", "train_seconds"), seeds=5, trial_timeout=60, time_budget=3600).check()
    for option, value in (("trial_timeout", -1.0), ("time_budget", float("nan"))):
        with pytest.raises(SweepError, match=f"--{option.replace('_', '-')} must be a number of seconds >= 0"):
            SweepOptions(**{option: value}).check()
    assert main(["tune", "--resume", "--name", "x", "--trial-timeout", "inf"]) == 2  # --resume may change it: checked
    assert "--trial-timeout must be a number of seconds >= 0 (got inf)" in capsys.readouterr().err


def test_a_multi_objective_sweep_writes_its_front_and_marks_it_in_trials_csv(tmp_path):
    import csv

    trials = [cost("slow", 0.995, 20.0), cost("quick", 0.993, 8.0), cost("worse", 0.990, 9.0)]
    options = SweepOptions(name="s", metric=("val_both_acc", "train_seconds"), pick="val_both_acc>=0.993",
                           num_samples=3)
    summary = write_results(trials, options, ["lr"], {"width": 8}, 2, Store(str(tmp_path / "s")), 10.0,
                            Console(file=open(tmp_path / "out.txt", "w")))
    folder = tmp_path / "s"
    assert summary["pareto"] == ["slow", "quick"] and summary["best_trial"] == "quick"
    with (folder / "trials.csv").open() as f:
        assert {r["trial_id"]: r["pareto"] for r in csv.DictReader(f)} == {"slow": "yes", "quick": "yes", "worse": ""}
    with (folder / "pareto.csv").open() as f:
        assert [r["trial_id"] for r in csv.DictReader(f)] == ["slow", "quick"]
    assert (folder / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((folder / "best_config.json").read_text())["width"] == 8
    # the same trials under a rule none meets: exit 1, the results files but no best_config.json
    options.pick, options.name = "val_both_acc>=0.999", "t"
    with pytest.raises(NoUsableTrial, match="no trial meets --pick val_both_acc>=0.999: the closest is slow"):
        write_results(trials, options, ["lr"], {"width": 8}, 2, Store(str(tmp_path / "t")), 10.0,
                      Console(file=open(tmp_path / "out.txt", "w")))
    assert (tmp_path / "t" / "pareto.csv").exists() and not (tmp_path / "t" / "best_config.json").exists()


def test_one_metric_sweeps_write_what_they_wrote_before(tmp_path):
    summary = _write(tmp_path, [row("a", "finished", 0.9, epochs=2), row("b", "finished", 0.95, epochs=2)])
    header = (tmp_path / "s" / "trials.csv").read_text().splitlines()[0]
    assert "pareto" not in header and not (tmp_path / "s" / "pareto.csv").exists()
    assert summary["best_trial"] == "b" and summary["metric"] == "val_both_acc"
