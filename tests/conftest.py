"""Shared fixtures (helpers: ``helpers.py``): tiny, learnable, synthetic MNIST written as real IDX files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Every Ray this session starts in its own process binds and connects on 127.0.0.1 only. Ray reads
# the variable once, when it is first imported, and a test module collected before test_sweep.py
# that imported Ray would otherwise put the shared clusters on this machine's own address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402

from mnist_addition.commands.cli import main
from mnist_addition.core.synthetic import write_mnist

from .helpers import SEED_ARGS, TINY, crashed_run_args, train_and_kill, train_to_the_end


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """A data folder in torchvision's layout holding synthetic IDX files (600 train, 200 test)."""
    return write_mnist(tmp_path_factory.mktemp("mnist"))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run where CUDA is present and skip, with the reason, elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here); runs on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _own_config_folder(tmp_path_factory):
    """Sweeps sign their state with a key in $XDG_CONFIG_HOME/mnist-addition: the tests' own, never
    the developer's (set for the session, so subprocesses and Ray drivers see it too)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
        yield


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    # Tests never pick up a developer's $MNIST_ADDITION_DATA (or a launcher's CPU switch) by accident.
    monkeypatch.delenv("MNIST_ADDITION_DATA", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)


@pytest.fixture(scope="session")
def seed_one_process(mnist_dir, tmp_path_factory):
    """The seed network trained by one process (SEED_ARGS): what every data-parallel run must equal."""
    run = tmp_path_factory.mktemp("seed-one") / "run"
    assert main(["train", *SEED_ARGS, "--data-dir", str(mnist_dir), "--output-dir", str(run)]) == 0
    return run


@pytest.fixture(scope="session")
def uninterrupted(mnist_dir, tmp_path_factory):
    return train_to_the_end(crashed_run_args(mnist_dir), tmp_path_factory.mktemp("full") / "run")

@pytest.fixture(scope="session")
def crashed(mnist_dir, tmp_path_factory):
    return train_and_kill(crashed_run_args(mnist_dir), tmp_path_factory.mktemp("crash") / "run")


@pytest.fixture(scope="session")
def run_dir(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run1"
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path | None:
    """An empty MLflow sqlite store whose tables are made once (MLflow's migrations take seconds);
    None without the [mlflow] extra."""
    try:
        import mlflow
    except ImportError:
        return None
    path = tmp_path_factory.mktemp("mlflow") / "template.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_db(_mlflow_template, tmp_path) -> str:
    """This test's own MLflow store, a sqlite file as a user's MLFLOW_TRACKING_URI names (a copy of
    the empty template: the same tables and default experiment)."""
    if _mlflow_template is not None:
        shutil.copy(_mlflow_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
