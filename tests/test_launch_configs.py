"""The files in launch/: accelerate configs, recipes and the SLURM script parse and hold what they claim."""

from __future__ import annotations

import json
import subprocess

import pytest

from .helpers import LAUNCH


@pytest.mark.parametrize("name", sorted(p.name for p in LAUNCH.glob("*.yaml")))
def test_launch_yaml_parses_with_accelerates_loader(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(LAUNCH / name))
    assert config.num_processes >= 1 and config.num_machines >= 1
    assert config.num_processes % config.num_machines == 0


def test_gpu_recipe_is_a_valid_config():
    from mnist_addition.core.config import TrainConfig

    config = TrainConfig.load(LAUNCH / "gpu_recipe.json")
    assert config.preset == "fast" and config.batch_size > TrainConfig().batch_size and not config.compile


@pytest.mark.parametrize("name", ["cpu_fastest.json", "cpu_fastest_every_seed.json"])
def test_cpu_fastest_recipes_are_valid_configs(name):
    from mnist_addition.core.config import TrainConfig
    from mnist_addition.sweep import find_space

    config = TrainConfig.load(LAUNCH / name)
    assert (config.preset, config.stem) == ("fast", "stride") and config.crop > 0
    assert config.epochs <= TrainConfig().epochs
    if name == "cpu_fastest_every_seed.json":  # a trial of the fastest space (docs/experiments/seeds-per-trial.md)
        import yaml

        space = yaml.safe_load(find_space("fastest").read_text())
        assert all(getattr(config, k) == v for k, v in space["fixed"].items())
        assert all(getattr(config, k) in spec["choice"] for k, spec in space["search"].items() if "choice" in spec)


def test_cpu_accurate_recipe_is_the_accurate_space_with_its_winners_values():
    import yaml

    from mnist_addition.core.config import TrainConfig
    from mnist_addition.sweep import find_space

    config = TrainConfig.load(LAUNCH / "cpu_accurate.json")
    space = yaml.safe_load(find_space("accurate").read_text())
    assert all(getattr(config, k) == v for k, v in space["fixed"].items())  # the net, budget, augmentation, views
    assert set(space["search"]) <= set(json.loads((LAUNCH / "cpu_accurate.json").read_text()))


def test_slurm_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(LAUNCH / "slurm_multinode.sbatch")]).returncode == 0
