"""Search-space files: parsed and checked without Ray, errors name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mnist_addition.config import TrainConfig
from mnist_addition.spaces import SpaceError, load_space, parse_space

REPO = Path(__file__).resolve().parents[1]


def _space(tmp_path: Path, data) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", ["default", "smoke"])
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
    ([1, 2], "must be a mapping"),
])
def test_bad_spaces_are_rejected_naming_the_key(tmp_path, data, message):
    path = _space(tmp_path, data)
    with pytest.raises(SpaceError) as error:
        load_space(path)
    assert message in str(error.value)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_unreadable_space_files(tmp_path):
    with pytest.raises(SpaceError, match="does not exist: pass e.g. --space tune/default.yaml"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(SpaceError, match="is not valid YAML at line 3"):
        load_space(_space(tmp_path, "search:\n  lr: {uniform: [0.1, 0.2]\n  width: 3\n"))
    with pytest.raises(SpaceError, match="not a text file"):
        load_space(tmp_path)


def test_parse_space_round_trips_what_the_sweep_saves():
    space = load_space(REPO / "tune" / "default.yaml")
    saved = {"fixed": space.fixed, "search": {k: {p.kind: list(p.values)} for k, p in space.search.items()}}
    assert parse_space(saved, "sweep.json") == parse_space(saved, "sweep.json")
    assert parse_space(saved, "x").search == space.search
