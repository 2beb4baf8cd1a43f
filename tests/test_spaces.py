"""Search-space files: parsed and checked without Ray, errors name the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mnist_addition.core.config import TrainConfig
from mnist_addition.sweep.spaces import SpaceError, load_space, parse_space

REPO = Path(__file__).resolve().parents[1]


def _space(tmp_path: Path, data) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", ["default", "smoke", "wide"])
def test_shipped_spaces_load_and_search_lr_width_and_sum_weight(name):
    space = load_space(REPO / "tune" / f"{name}.yaml")
    assert {"lr", "width", "sum_weight"} <= set(space.search)
    assert space.search["lr"].kind == "loguniform" and space.search["width"].kind == "choice"
    assert space.search["sum_weight"].kind == "uniform"
    TrainConfig.from_dict(space.fixed)  # the fixed part is a valid config on its own


def test_a_space_is_parsed_into_distributions(tmp_path):
    space = load_space(_space(tmp_path, "fixed:\n  epochs: 3\nsearch:\n  lr: {loguniform: [1e-3, 1e-2]}\n"
                                        "  width: {choice: [8, 16]}\n  batch_size: {randint: [64, 256]}\n"))
    assert space.fixed == {"epochs": 3}
    assert space.search["lr"].values == (1e-3, 1e-2)  # YAML reads 1e-3 as a string: accepted as a number
    assert space.search["width"].values == (8, 16)
    assert space.search["batch_size"].values == (64, 256)
    assert space.base({"epochs": 1, "width": 4, "train_limit": 10}) == {"epochs": 1, "train_limit": 10}


@pytest.mark.parametrize("data, message", [
    ({"search": {"learning_rate": {"uniform": [0.1, 0.2]}}}, "unknown key 'learning_rate'"),
    ({"search": {"lrr": {"uniform": [0.1, 0.2]}}}, "did you mean 'lr'"),
    ({"fixed": {"epoch": 2}, "search": {"lr": {"uniform": [0.1, 0.2]}}}, "unknown key 'epoch'"),
    ({"search": {"data_dir": {"choice": ["a"]}}}, "'data_dir' is set by the sweep"),
    ({"fixed": {"lr": 0.1}, "search": {"lr": {"uniform": [0.1, 0.2]}}}, "'lr' is both fixed and searched"),
    ({"fixed": {"epochs": 2}}, "searches nothing"),
    ({"search": {"lr": {"normal": [0.1, 0.2]}}}, "'lr' needs exactly one distribution"),
    ({"search": {"lr": 0.1}}, "'lr' needs exactly one distribution"),
    ({"search": {"lr": {"uniform": [0.2, 0.1]}}}, "lr: uniform needs low < high"),
    ({"search": {"lr": {"uniform": [0.1]}}}, "lr: uniform needs two numbers"),
    ({"search": {"lr": {"loguniform": [0, 0.1]}}}, "loguniform needs low > 0"),
    ({"search": {"lr": {"loguniform": [-1, 0.1]}}}, "loguniform needs low > 0"),
    ({"search": {"width": {"uniform": [8, 32]}}}, "width is a int: use randint or choice"),
    ({"search": {"lr": {"randint": [1, 3]}}}, "lr is a float: use uniform or loguniform"),
    ({"search": {"width": {"choice": [8, 8]}}}, "lists a value twice"),
    ({"search": {"sum_weight": {"uniform": [0.5, 1.5]}}}, "sum_weight=1.5 is not a valid training config: --sum-weight must be in [0, 1]"),
    ({"search": {"width": {"choice": [0, 16]}}}, "width=0 is not a valid training config: --width must be at least 1"),
    ({"search": {"optimizer": {"choice": ["adamw", "lion"]}}}, "--optimizer is not a known choice"),
    ({"fixed": {"epochs": 0}, "search": {"lr": {"uniform": [0.1, 0.2]}}}, "the fixed values is not a valid"),
    ({"fixed": {"preset": "seed"}, "search": {"width": {"choice": [16, 32]}}}, "width is fixed at 32"),
    ({"sweep": {"lr": 1}}, "unknown section 'sweep'"),
    ({"seeds": 0, "search": {"lr": {"uniform": [0.1, 0.2]}}}, "'seeds:' must be a whole number in 1..64 (got 0)"),
    ({"seeds": True, "search": {"lr": {"uniform": [0.1, 0.2]}}}, "'seeds:' must be a whole number"),
    ([1, 2], "must be a mapping"),
])
def test_bad_spaces_are_rejected_naming_the_key(tmp_path, data, message):
    path = _space(tmp_path, data)
    with pytest.raises(SpaceError) as error:
        load_space(path)
    assert message in str(error.value)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_space_sets_the_seeds_of_every_trial_and_the_flag_wins(tmp_path):
    from mnist_addition.sweep.folder import open_sweep
    from mnist_addition.sweep.options import SweepOptions

    path = _space(tmp_path, {"seeds": 3, "search": {"lr": {"uniform": [0.1, 0.2]}}})
    space = load_space(path)
    assert space.seeds == 3 and load_space(path).to_dict()["seeds"] == 3
    for flag, seeds in ((None, 3), (5, 5)):
        sweep = open_sweep(SweepOptions(space=str(path), storage_path=str(tmp_path / "s"), seeds=flag))
        sweep.close()
        assert sweep.options.seeds == seeds


def test_unreadable_space_files(tmp_path):
    with pytest.raises(SpaceError, match="does not exist: pass e.g. --space tune/default.yaml"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(SpaceError, match="is not valid YAML at line 3"):
        load_space(_space(tmp_path, "search:\n  lr: {uniform: [0.1, 0.2]\n  width: 3\n"))
    with pytest.raises(SpaceError, match="is not a regular file"):
        load_space(tmp_path)
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpaceError, match="not a text file"):
        load_space(tmp_path / "binary.yaml")
    deep = "search:\n  lr: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n"  # thousands of levels
    with pytest.raises(SpaceError, match="nested too deeply"):
        load_space(_space(tmp_path, deep))
    with pytest.raises(SpaceError, match="nested too deeply"):
        load_space(_space(tmp_path, "lr: " + "[" * 5000 + "]" * 5000 + "\n"))


def test_the_speed_space_searches_what_training_time_depends_on():
    space = load_space(REPO / "tune" / "speed.yaml")
    assert {"epochs", "width", "batch_size", "lr"} <= set(space.search) and space.largest("epochs", 0) == 3
    TrainConfig.from_dict(space.fixed)


@pytest.mark.parametrize("name", ["default", "smoke", "wide", "speed"])
def test_parse_space_round_trips_what_the_sweep_saves(name):
    space = load_space(REPO / "tune" / f"{name}.yaml")
    saved = json.loads(json.dumps(space.to_dict()))  # as sweep.json holds it
    again = parse_space(saved, space.path)
    assert again == space and again.search and again.fixed == space.fixed


def test_the_tune_folder_is_the_packaged_one():
    from mnist_addition.sweep import find_space, shipped_spaces

    assert set(shipped_spaces()) == {p.stem for p in (REPO / "tune").glob("*.yaml")} >= {"default", "smoke", "wide"}
    assert find_space("wide").read_text() == (REPO / "tune" / "wide.yaml").read_text()


@pytest.mark.parametrize("search, message", [
    # each key is fine alone; together train would refuse them
    ({"preset": {"choice": ["fast", "seed"]}, "width": {"choice": [16, 32]}},
     "preset='seed', width=16 is not a valid training config: --width is fixed at 32"),
    ({"batch_size": {"choice": [96, 130]}, "gradient_accumulation_steps": {"choice": [1, 4]}},
     "batch_size=130, gradient_accumulation_steps=4 is not a valid training config"),
])
def test_combinations_that_train_refuses_are_rejected_before_any_trial(tmp_path, search, message):
    with pytest.raises(SpaceError) as error:
        load_space(_space(tmp_path, {"search": search}))
    assert message in str(error.value), str(error.value)


def test_extremes_cover_every_combination_of_bounds_and_choices(tmp_path):
    space = load_space(_space(tmp_path, {"search": {"lr": {"loguniform": [0.001, 0.01]},
                                                    "width": {"choice": [8, 16, 24]},
                                                    "epochs": {"randint": [2, 5]}}}))
    combos = list(space.extremes())
    assert len(combos) == 2 * 3 * 2 and len({tuple(sorted(c.items())) for c in combos}) == 12
    assert {c["epochs"] for c in combos} == {2, 5} and {c["width"] for c in combos} == {8, 16, 24}
    assert space.largest("epochs", 1) == 5 and space.largest("width", 1) == 24
    assert space.largest("seed", 7) == 7  # not searched: the base config's value


def test_many_keys_are_checked_in_pairs(tmp_path, monkeypatch):
    import mnist_addition.sweep.spaces as spaces

    monkeypatch.setattr(spaces, "MAX_COMBINATIONS", 4)
    space = load_space(_space(tmp_path, {"search": {"lr": {"uniform": [0.001, 0.01]},
                                                    "width": {"choice": [8, 16]},
                                                    "shift": {"choice": [0, 1, 2]}}}))
    pairs = list(space.extremes())
    assert all(len(p) == 2 for p in pairs)
    assert len(pairs) == 2 * 2 + 2 * 3 + 2 * 3  # (lr, width), (lr, shift), (width, shift)
