"""Shared fixtures: tiny, learnable, synthetic MNIST written as real IDX files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mnist_addition.core.config import TrainConfig
from mnist_addition.core.data import FILES

REAL_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "mnist"


def write_idx(path: Path, data: torch.Tensor) -> None:
    """The IDX format: 0x00 0x00, dtype 0x08 (ubyte), ndim, big-endian dims, raw bytes."""
    header = bytes([0, 0, 0x08, data.dim()]) + b"".join(int(d).to_bytes(4, "big") for d in data.shape)
    path.write_bytes(header + data.to(torch.uint8).contiguous().numpy().tobytes())


def synthetic_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n 28x28 uint8 images of 10 classes: a fixed random 5x5 glyph per class, drawn 4x large at a
    random offset, plus noise. Learnable in a few epochs by a small CNN; nothing like real MNIST."""
    glyphs = torch.rand(10, 5, 5, generator=torch.Generator().manual_seed(1234)) > 0.5  # same for all splits
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    big = glyphs.float().repeat_interleave(4, 1).repeat_interleave(4, 2)  # (10, 20, 20)
    images = torch.zeros(n, 28, 28)
    offsets = torch.randint(0, 9, (n, 2), generator=g)
    for i in range(n):  # fixture code, not the hot path
        y, x = offsets[i].tolist()
        images[i, y:y + 20, x:x + 20] = big[labels[i]]
    images = (images * 200 + torch.rand(n, 28, 28, generator=g) * 55).clamp(0, 255)
    return images.to(torch.uint8), labels.to(torch.uint8)


def write_mnist(root: Path, n_train: int = 600, n_test: int = 200) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train_x, train_y = synthetic_digits(n_train, seed=1)
    test_x, test_y = synthetic_digits(n_test, seed=2)
    for key, tensor in (("train_images", train_x), ("train_labels", train_y),
                        ("test_images", test_x), ("test_labels", test_y)):
        write_idx(raw / FILES[key], tensor)
    return root


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


def tiny_config(mnist_dir: Path, preset: str = "fast", **overrides) -> TrainConfig:
    """The debug config the integration tests drive: width 8, 100 val images, small batches, fp32.

    It runs on whatever device the machine has; tests that need the CPU pass ``cpu=True``.
    """
    base = dict(data_dir=str(mnist_dir), width=8, epochs=3, batch_size=32, lr=0.01, val_size=100,
                mixed_precision="no", log_every=5)
    return TrainConfig.from_preset(preset, **{**base, **overrides})
