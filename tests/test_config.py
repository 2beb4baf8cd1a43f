"""TrainConfig: validation, presets, JSON round trip."""

from __future__ import annotations

import json

import pytest

from mnist_addition.core.config import ConfigError, TrainConfig


@pytest.mark.parametrize("overrides,match", [
    (dict(lr=0.0), r"--lr must be > 0"),
    (dict(lr=-1e-3), r"--lr must be > 0"),
    (dict(width=0), r"--width must be at least 1"),
    (dict(sum_weight=1.5), r"--sum-weight must be in \[0, 1\]"),
    (dict(sum_weight=-0.1), r"--sum-weight must be in \[0, 1\]"),
    (dict(epochs=0), r"--epochs must be at least 1"),
    (dict(batch_size=0), r"--batch-size must be at least 1"),
    (dict(optimizer="lbfgs"), r"--optimizer is not a known choice.*adamw, sgd"),
    (dict(shift=9), r"--shift must be in 0..8"),
    (dict(tta=3), r"--tta is not a known choice.*use one of 1, 5, 9"),
    (dict(depth=3), r"--depth is not a known choice.*use one of 4, 5, 6"),
    (dict(dropout=1.0), r"--dropout must be in \[0, 1\).*--dropout 0.2"),
    (dict(elastic=8.5), r"--elastic must be in \[0, 8\] pixels"),
    (dict(elastic=-1.0), r"--elastic must be in \[0, 8\] pixels.*--elastic 2"),
    (dict(batch_size=100, gradient_accumulation_steps=3), r"--gradient-accumulation-steps must divide"),
    (dict(epochs="three"), r"--epochs must be int, got 'three'"),
    (dict(epochs=True), r"--epochs must be int"),
    (dict(mixed_precision="fp8"), r"--mixed-precision is not a known choice"),
])
def test_bad_values_are_rejected_with_the_flag_name(overrides, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**overrides)


def test_unknown_preset():
    with pytest.raises(ConfigError, match=r"unknown preset 'huge'"):
        TrainConfig.from_preset("huge")
    with pytest.raises(ConfigError, match=r"--preset is not a known choice"):
        TrainConfig(preset="huge")


def test_seed_preset_is_the_reference_recipe():
    c = TrainConfig.from_preset("seed")
    assert (c.optimizer, c.lr, c.momentum, c.batch_size, c.epochs, c.sum_weight, c.shift, c.schedule) == \
        ("sgd", 0.01, 0.7, 128, 25, 0.5, 0, "constant")
    with pytest.raises(ConfigError, match="fixed at 32 for the seed preset"):
        TrainConfig.from_preset("seed", width=16)
    with pytest.raises(ConfigError, match="--stem is fixed for the seed preset"):
        TrainConfig.from_preset("seed", stem="stride")
    with pytest.raises(ConfigError, match="--crop is fixed at 0 for the seed preset"):
        TrainConfig.from_preset("seed", crop=2)
    with pytest.raises(ConfigError, match="--tta is fixed at 1 for the seed preset"):
        TrainConfig.from_preset("seed", tta=5)
    with pytest.raises(ConfigError, match="--depth is fixed for the seed preset"):
        TrainConfig.from_preset("seed", depth=6)
    with pytest.raises(ConfigError, match="--dropout is fixed at 0 for the seed preset"):
        TrainConfig.from_preset("seed", dropout=0.2)


def test_crop_is_at_most_the_border_around_the_digits():
    assert TrainConfig(crop=4).net == {"preset": "fast", "width": 16, "stem": "pool", "crop": 4, "dropout": 0.0, "tta": 1,
                                    "depth": 4}
    with pytest.raises(ConfigError, match=r"--crop must be in 0..4 \(got 5\): use e.g. --crop 3"):
        TrainConfig(crop=5)
    with pytest.raises(ConfigError, match=r"--crop must be >= 0"):
        TrainConfig(crop=-1)


def test_overrides_win_over_preset():
    assert TrainConfig.from_preset("seed", epochs=2).epochs == 2


def test_json_round_trip(tmp_path):
    c = TrainConfig.from_preset("fast", lr=0.02, width=24, sum_weight=0.3, seed=7, data_dir="/data")
    path = tmp_path / "c.json"
    path.write_text(c.to_json())
    assert TrainConfig.load(path) == c


def test_run_folder_config_json_loads(tmp_path):
    c = TrainConfig(epochs=5)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": c.to_dict(), "setup": {"num_processes": 1}, "git_commit": None}))
    assert TrainConfig.load(path) == c


def test_integers_for_floats_are_accepted():
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)


@pytest.mark.parametrize("text,match", [
    ('{"lr": 0.1, "learning_rate": 3}', r"unknown config key 'learning_rate'"),
    ("{not json", r"is not valid JSON"),
    ("[1, 2]", r"must hold a JSON object"),
])
def test_bad_config_files(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        TrainConfig.load(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist"):
        TrainConfig.load(tmp_path / "nope.json")


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null"])
def test_a_config_that_is_not_a_regular_file_is_never_read(path):
    with pytest.raises(ConfigError, match=f"config file {path} is not a regular file"):
        TrainConfig.load(path)


def test_each_fields_role_is_declared_once_on_the_field():
    """Resume, the sweep, both smoke modes and the CLI's grouping read the roles from TrainConfig."""
    import dataclasses

    from mnist_addition.core.config import resumable_fields, smoke_overrides, sweep_owned

    assert resumable_fields() == {"data_dir", "log_every", "eval_batch_size", "checkpoint_every", "keep_checkpoints",
                                  "dist_timeout", "log_with"}
    assert smoke_overrides() == {"epochs": 1, "batch_size": 128, "train_limit": 10_000, "eval_limit": 1000}
    assert smoke_overrides(sweep=True) == {**smoke_overrides(), "epochs": 2}  # ASHA needs two epochs to decide
    assert sweep_owned() == {"data_dir": "--data-dir", "output_dir": "--storage-path/--name", "log_with": "--log-with",
                             "hparam_schedule": "--scheduler pbt"}
    infra = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["infra"]}
    assert resumable_fields() <= infra and "lr" not in infra and {"cpu", "mixed_precision"} <= infra


def test_a_new_runs_config_is_preset_then_file_then_smoke_then_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 5, "lr": 0.02, "width": 12}))
    config = TrainConfig.resolve(path, smoke=True, flags={"lr": 0.03})
    assert (config.epochs, config.lr, config.width, config.train_limit) == (1, 0.03, 12, 10_000)
    assert TrainConfig.resolve() == TrainConfig()
