"""A synthetic MNIST in torchvision's layout: real IDX files of learnable fake digits, written in
milliseconds. The tests and benchmarks train on it; a user can try every command offline with it
(``write_mnist(Path("fake"))``, then ``--data-dir fake``). Nothing like real MNIST's accuracy."""

from __future__ import annotations

from pathlib import Path

import torch

from .data import FILES


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
    """``root/MNIST/raw/``: the four IDX files of a synthetic MNIST, ``n_train`` and ``n_test`` images."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train_x, train_y = synthetic_digits(n_train, seed=1)
    test_x, test_y = synthetic_digits(n_test, seed=2)
    for key, tensor in (("train_images", train_x), ("train_labels", train_y),
                        ("test_images", test_x), ("test_labels", test_y)):
        write_idx(raw / FILES[key], tensor)
    return root
