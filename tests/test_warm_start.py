"""tune --warm-start (sweep/warm.py, sweep/warm_search.py) without running a sweep: which earlier
trials become Optuna's prior observations, and that they change what Optuna suggests first."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from mnist_addition.sweep.options import SweepError
from mnist_addition.sweep.spaces import parse_space
from mnist_addition.sweep.warm import load_prior, resolve

SPACE = {"fixed": {"epochs": 2, "width": 8}, "search": {"lr": {"loguniform": [0.001, 0.1]},
                                                        "batch_size": {"choice": [32, 64]}}}


def old_sweep(folder: Path, rows: list[dict], space: dict = SPACE) -> Path:
    """A sweep folder as tune leaves it, as far as a warm start reads it: sweep.json and trials.csv."""
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"options": {"space": "old.yaml", "smoke": False},
                                                   "space": space}))
    columns = sorted({k for r in rows for k in r})
    with (folder / "trials.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return folder


def finished(lr: float, batch: int, both: float, **extra) -> dict:
    return {"trial_id": f"t{random.random()}", "lr": lr, "batch_size": batch, "status": "finished",
            "val_both_acc": both, "train_seconds": 10 * lr, **extra}


def test_only_trials_the_new_sweep_could_have_trained_are_taken_and_the_rest_are_counted(tmp_path):
    space = parse_space(SPACE, "new.yaml")
    good = [finished(0.01, 32, 0.9), finished(0.05, 64, 0.8, status="stopped early")]
    rows = [*good, finished(0.01, 32, 0.7, status="error"),  # never ran to a result
            finished(0.5, 32, 0.9),  # lr outside the new bounds
            finished(0.01, 128, 0.9),  # a batch size the new space does not offer
            finished(0.01, 32, float("nan"))]  # no usable metric
    source = resolve(str(old_sweep(tmp_path / "old", rows)), str(tmp_path))
    prior = load_prior((source,), space, space.base(), ("val_both_acc",))
    assert prior.points == [{"lr": 0.01, "batch_size": 32}, {"lr": 0.05, "batch_size": 64}]
    assert prior.values == [[0.9], [0.8]]
    assert prior.skipped == {"did not finish": 1, "outside the space": 2, "without val_both_acc": 1}
    assert "2 trial(s)" in prior.line((source,)) and "skipped 4" in prior.line((source,))
    # another fixed config (width 16): the same sampled values trained something else
    other = old_sweep(tmp_path / "wider", good, {**SPACE, "fixed": {"epochs": 2, "width": 16}})
    with pytest.raises(SweepError, match="2 trained another fixed config"):
        load_prior((resolve(str(other), str(tmp_path)),), space, space.base(), ("val_both_acc",))
    with pytest.raises(SweepError, match="5 without val_both_acc_min"):  # a one-seed sweep has no worst seed
        load_prior((source,), space, space.base(), ("val_both_acc_min",))
    assert resolve("old", str(tmp_path)) == source  # a name in --storage-path
    with pytest.raises(SweepError, match="--warm-start missing: no sweep at"):
        resolve("missing", str(tmp_path))


def suggestions(prior, metrics: tuple[str, ...], n: int = 3) -> list[dict]:
    from ray.tune.search.optuna import OptunaSearch

    from mnist_addition.sweep.driver import _param_space
    from mnist_addition.sweep.warm_search import WarmOptunaSearch

    multi = {} if len(metrics) == 1 else {"metric": list(metrics), "mode": ["max", "min"]}
    searcher = WarmOptunaSearch(prior, seed=0, **multi) if prior else OptunaSearch(seed=0, **multi)
    space = _param_space(parse_space(SPACE, "new.yaml"))
    assert searcher.set_search_properties(metrics[0] if len(metrics) == 1 else None,
                                          "max" if len(metrics) == 1 else None, space)
    if prior:
        assert len(searcher._ot_study.trials) == len(prior.points)  # the observations are in the study
    return [searcher.suggest(f"trial-{i}") for i in range(n)]


@pytest.mark.parametrize("metrics", [("val_both_acc",), ("val_both_acc", "train_seconds")])
def test_a_warm_searcher_suggests_otherwise_than_a_cold_one_with_the_same_seed(tmp_path, metrics):
    """12 earlier trials (Optuna's TPE samples at random until 10 trials are complete: the prior
    ones count), the best ones at a small lr with batch 64: the warm searcher's first suggestions
    differ from a cold one's, and lean to where the good trials were."""
    rng = random.Random(1)
    rows = [finished(lr, batch, (0.95 if batch == 64 and lr < 0.005 else 0.5) + 0.01 * rng.random())
            for lr, batch in [(10 ** rng.uniform(-3, -1), rng.choice([32, 64])) for _ in range(10)]
            + [(0.002, 64), (0.003, 64)]]
    space = parse_space(SPACE, "new.yaml")
    prior = load_prior((resolve(str(old_sweep(tmp_path / "old", rows)), str(tmp_path)),), space, space.base(),
                       metrics)
    cold, warm = suggestions(None, metrics), suggestions(prior, metrics)
    assert cold == suggestions(None, metrics)  # seeded: the comparison is fair
    assert warm != cold
    if len(metrics) == 1:
        assert sum(s["batch_size"] == 64 for s in warm) >= 2


def test_a_warm_start_needs_optuna():
    from mnist_addition.sweep.options import SweepOptions

    with pytest.raises(SweepError, match="--warm-start gives earlier trials to Optuna.*add --search optuna"):
        SweepOptions(warm_start=("old",)).check()
    SweepOptions(warm_start=("old",), search="optuna").check()


def test_resume_refuses_a_new_space_or_metric_naming_the_warm_start_and_lets_the_sweep_grow():
    from mnist_addition.sweep.options import SweepOptions

    for flag, value in (("metric", ("val_loss",)), ("space", "wide")):
        with pytest.raises(SweepError, match="cannot change when resuming.*with --warm-start old to begin from"):
            SweepOptions.from_flags({"resume": True, "name": "old", flag: value})
    grown = SweepOptions.from_flags({"resume": True, "name": "old", "num_samples": 20})
    assert grown.num_samples == 20  # checked against the sweep's own (sweep/folder.py) once it is read
    assert SweepOptions.from_flags({"resume": True, "name": "old"}).num_samples is None  # sweep.json's
    assert SweepOptions().num_samples == 8
