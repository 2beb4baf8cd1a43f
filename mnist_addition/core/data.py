"""MNIST raw IDX files -> in-memory tensors; the paired (image, number) task; batching.

The whole dataset lives in memory (on the training device) as one tensor: a batch is a slice of a
seeded permutation, augmentation is batch-wise, and there is no per-sample Python in the hot path.
Only torch (and torchvision, lazily, for the download) is needed here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from .config import ConfigError
from .errors import EXIT_FAILED, UserError, first_line

ENV_DATA_DIR = "MNIST_ADDITION_DATA"
DEFAULT_DATA_DIR = "~/.cache/mnist-addition"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MEAN, STD = 0.1307, 0.3081  # of the official training images, the usual MNIST normalisation

# Fixed seeds, independent of the run's --seed, so that every model (every seed, every sweep
# trial) is validated on the same 5,000 images and tested on the same (image, number) pairs.
SPLIT_SEED = 20_231_129
VAL_NUMBERS_SEED = 1
TEST_NUMBERS_SEED = 2

_IDX_DTYPES = {0x08: torch.uint8}
# The official training images are 47 MB; 1 GiB is room for any MNIST-like set (EMNIST's largest
# split is 0.6 GB) and refuses a huge or sparse file before it is read into memory.
MAX_IDX_BYTES = 1 << 30


class DataError(UserError):
    """The data folder or a file in it is unusable; the message names it and says what to do."""

    exit_code = EXIT_FAILED


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $MNIST_ADDITION_DATA, else ~/.cache/mnist-addition."""
    if data_dir is not None and not str(data_dir).strip():  # '' would silently mean the default folder
        raise ConfigError("--data-dir is empty: name the folder that holds MNIST/raw/*-ubyte, or leave --data-dir out")
    chosen = data_dir or os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser()


def find_raw_dir(root: Path) -> Path | None:
    """The folder holding the four IDX files: root/MNIST/raw (torchvision's layout), root/raw or root."""
    for candidate in (root / "MNIST" / "raw", root / "raw", root):
        if all((candidate / name).is_file() for name in FILES.values()):
            return candidate
    return None


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read one IDX file (the MNIST format: magic, big-endian dims, raw bytes) into a uint8 tensor.

    The header is read and checked against the file's size first: a file that promises more (or
    less) than it holds, or more than ``MAX_IDX_BYTES``, is refused before its data is read.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or not 1 <= head[3] <= 4:
                raise DataError(f"{path} is not an MNIST IDX file (bad magic number {head.hex() or 'empty'}): "
                                "replace it with the original file")
            ndim = head[3]
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DataError(f"{path} is truncated (header cut short): replace it with the original file")
            dims = [int.from_bytes(dims_raw[4 * i: 4 * i + 4], "big") for i in range(ndim)]
            header = 4 + 4 * ndim
            promised = math.prod(dims)
            if size != header + promised:
                raise DataError(f"{path} has {size - header:,} data bytes but its header promises {promised:,} "
                                f"(shape {tuple(dims)}): the file is truncated or corrupt, replace it with the original")
            if promised > MAX_IDX_BYTES:
                raise DataError(f"{path} holds {promised:,} bytes of data (shape {tuple(dims)}), more than any "
                                f"MNIST-like file ({MAX_IDX_BYTES:,} at most): pass the original files")
            data = bytearray(promised)
            if f.readinto(data) != promised:
                raise DataError(f"{path} changed while it was read: try again")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    return torch.frombuffer(data, dtype=_IDX_DTYPES[head[2]]).reshape(dims) if promised else \
        torch.zeros(dims, dtype=_IDX_DTYPES[head[2]])


def download_mnist(root: Path) -> None:
    """Fetch the official files with torchvision into root/MNIST/raw, one process at a time."""
    from filelock import FileLock  # several processes or trials may start at once

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".mnist-download.lock")):
        if find_raw_dir(root) is not None:  # another process finished while we waited
            return
        from torchvision.datasets import MNIST

        for train in (True, False):
            MNIST(str(root), train=train, download=True)


@dataclass
class Mnist:
    """The official MNIST arrays: uint8 images (N, 28, 28) and int64 labels (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> Mnist:
    """Read (downloading first, if allowed and needed) the four MNIST files into memory."""
    root = resolve_data_dir(data_dir)
    raw = find_raw_dir(root)
    if raw is None and download:
        try:
            download_mnist(root)
        except Exception as e:  # offline, proxy, disk full...: all end the same way for the user
            raise DataError(_missing_message(root, f"download failed: {first_line(e)}")) from None
        raw = find_raw_dir(root)
    if raw is None:
        raise DataError(_missing_message(root, "download disabled" if not download else "download gave no files"))
    arrays = {key: read_idx(raw / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
            raise DataError(f"{raw / FILES[split + '_images']} holds shape {tuple(images.shape)}, not N x 28 x 28: "
                            "replace it with the original file")
        if labels.dim() != 1 or len(labels) != len(images):
            raise DataError(f"{raw / FILES[split + '_labels']} has {labels.numel()} labels for {len(images)} images: "
                            "the image and label files do not belong together")
        if len(images) == 0:
            raise DataError(f"{raw / FILES[split + '_images']} holds no images: replace it with the original file")
        if len(labels) and int(labels.max()) > 9:
            raise DataError(f"{raw / FILES[split + '_labels']} has labels above 9: replace it with the original file")
        arrays[f"{split}_labels"] = labels.long()
    return Mnist(**arrays)


def _missing_message(root: Path, why: str) -> str:
    return (f"MNIST not found in {root} (looked for MNIST/raw/train-images-idx3-ubyte and the other 3 files; {why}): "
            f"pass --data-dir pointing to a folder that holds MNIST/raw/*-ubyte, or set {ENV_DATA_DIR}")


# ------------------------------------------------------------------------------------------------
# The paired task
# ------------------------------------------------------------------------------------------------
@dataclass
class Split:
    """One split on one device: normalised images (N, 1, 28, 28), digits (N,), numbers (N,) or None."""

    images: torch.Tensor
    digits: torch.Tensor
    numbers: torch.Tensor | None  # None for train: drawn fresh every epoch

    def __len__(self) -> int:
        return len(self.digits)

    def to(self, device: torch.device | str) -> "Split":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Split(move(self.images), move(self.digits), move(self.numbers))


@dataclass
class PairedMnist:
    train: Split
    val: Split
    test: Split

    def limited(self, train_limit: int = 0, eval_limit: int = 0) -> "PairedMnist":
        """The first ``train_limit`` training and ``eval_limit`` val/test pairs (0 = all)."""
        def head(split: Split, k: int) -> Split:
            if not k or k >= len(split):
                return split
            return Split(split.images[:k], split.digits[:k], None if split.numbers is None else split.numbers[:k])

        return PairedMnist(head(self.train, train_limit), head(self.val, eval_limit), head(self.test, eval_limit))


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), zero mean / unit variance over MNIST."""
    return ((images_u8.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def fixed_numbers(n: int, seed: int) -> torch.Tensor:
    """The same number r in 0..9 for image i every time (val/test): every model sees the same pairs."""
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


def train_numbers(n: int, seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Fresh numbers for every training image every epoch, reproducible from (seed, epoch), drawn on ``device``."""
    return torch.randint(0, 10, (n,), generator=epoch_generator(seed, epoch, stream=1, device=device), device=device)


def epoch_generator(seed: int, epoch: int, stream: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """An independent generator on ``device`` per (seed, epoch, stream): order, numbers and shifts don't interact.

    A generator on the training device draws there: nothing random crosses from host to device.
    The same seed gives other numbers on a GPU than on the CPU (another algorithm), but always the
    same ones on the same kind of device.
    """
    return torch.Generator(device=device).manual_seed(((seed * 1_000_003 + epoch) * 8 + stream) % (2**63))


def make_splits(mnist: Mnist, val_size: int = 5000, train_limit: int = 0, eval_limit: int = 0) -> PairedMnist:
    """55,000 train / 5,000 val (fixed split of the official train set) and the official test set.

    ``val_size`` 0 leaves the validation split empty: every training image trains (a refit).
    """
    n = len(mnist.train_labels)
    if val_size >= n:
        raise ConfigError(f"--val-size {val_size} leaves no training images (the training file has {n}): "
                          "use a smaller value, e.g. --val-size 5000")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    val_idx, train_idx = order[:val_size], order[val_size:]
    splits = PairedMnist(
        train=Split(normalize(mnist.train_images[train_idx]), mnist.train_labels[train_idx], None),
        val=Split(normalize(mnist.train_images[val_idx]), mnist.train_labels[val_idx],
                  fixed_numbers(val_size, VAL_NUMBERS_SEED)),
        test=Split(normalize(mnist.test_images), mnist.test_labels,
                   fixed_numbers(len(mnist.test_labels), TEST_NUMBERS_SEED)),
    )
    return splits.limited(train_limit, eval_limit)


# ------------------------------------------------------------------------------------------------
# Batching
# ------------------------------------------------------------------------------------------------
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # images, numbers, digits, sums


SHIFT_CHUNK = 1024  # images shifted at once: their padded copies and indices stay in a CPU's cache


def random_shift(images: torch.Tensor, offsets: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate image i by (offsets[0, i], offsets[1, i]) - max_shift pixels, filling with background.

    Batch-wise, ``SHIFT_CHUNK`` images at a time (each image on its own, so the chunks change no
    value): pad, then one gather of each image's shifted window from its flattened padded copy, with
    per-image offsets in [0, 2 * max_shift] (a tensor on the images' device). In chunks, an epoch's
    shifts take 0.13 s on 2 CPU threads where one pass over the epoch with a gather per axis took
    0.35 s (the same values: the temporaries stay in cache); on a GPU, a few dozen launches an epoch.
    """
    if max_shift == 0:
        return images
    out = torch.empty_like(images)
    for lo in range(0, len(images), SHIFT_CHUNK):
        hi = min(lo + SHIFT_CHUNK, len(images))
        out[lo:hi] = _shift(images[lo:hi], offsets[:, lo:hi], max_shift)
    return out


def _shift(images: torch.Tensor, offsets: torch.Tensor, max_shift: int) -> torch.Tensor:
    b, c, h, w = images.shape  # (B, 1, 28, 28)
    background = images.amin(dim=(1, 2, 3), keepdim=True)  # normalised black
    padded = torch.nn.functional.pad(images - background, (max_shift,) * 4) + background  # (B, C, H', W')
    wide = w + 2 * max_shift
    window = (torch.arange(h, device=images.device)[:, None] * wide + torch.arange(w, device=images.device)).flatten()
    corner = offsets[0] * wide + offsets[1]  # (B,): where each image's window starts in its padded copy
    index = (window[None, :] + corner[:, None])[:, None, :].expand(b, c, h * w)  # (B, C, H * W)
    return padded.flatten(2).gather(2, index).view(b, c, h, w)


AFFINE_CHUNK = 4096  # images warped at once: bounds the sampling grid's memory (~25 MB a chunk)
ELASTIC_GRID = 4  # control points a side of the elastic displacement field (about one every 9 pixels)


def random_warp(images: torch.Tensor, params: torch.Tensor, max_rotate: float, max_scale: float,
                field: torch.Tensor | None = None, max_elastic: float = 0.0) -> torch.Tensor:
    """Rotate image i by ``params[0, i] * max_rotate`` degrees and scale it by ``1 + params[1, i] *
    max_scale`` about its centre (``params`` in [-1, 1], on the images' device), and, with
    ``max_elastic`` > 0, distort it elastically: ``field[i]`` (2 x ELASTIC_GRID x ELASTIC_GRID, in
    [-1, 1]) holds random displacements of up to ``max_elastic`` pixels at a coarse grid of control
    points, interpolated bicubically to every pixel (a smooth random field: the control-point form
    of Simard et al.'s elastic distortion, as the ``elasticdeform`` package draws it). One bilinear
    resampling for all of it, filling with background. Off (the images themselves) when all maxima are 0."""
    elastic = field is not None and max_elastic > 0
    if not max_rotate and not max_scale and not elastic:
        return images
    angle = params[0] * (max_rotate * math.pi / 180.0)
    scale = 1.0 + params[1] * max_scale
    cos, sin, zero = torch.cos(angle) / scale, torch.sin(angle) / scale, torch.zeros_like(angle)
    # affine_grid maps output to input coordinates: the inverse of rotating by angle and scaling by scale
    theta = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1)  # (B, 2, 3)
    background = images.amin(dim=(1, 2, 3), keepdim=True)
    out = torch.empty_like(images)
    h, w = images.shape[-2:]
    # pixels -> grid units (the image spans 2 of them along x and along y)
    to_grid = 2.0 * max_elastic / torch.tensor([w, h], device=images.device) if elastic else None
    for lo in range(0, len(images), AFFINE_CHUNK):
        hi = min(lo + AFFINE_CHUNK, len(images))
        grid = torch.nn.functional.affine_grid(theta[lo:hi], list(images[lo:hi].shape), align_corners=False)
        if elastic:  # (B, 2, G, G) control points -> (B, 2, H, W) -> (B, H, W, 2), like the grid
            pixels = torch.nn.functional.interpolate(field[lo:hi], size=(h, w), mode="bicubic", align_corners=True)
            grid = grid + pixels.permute(0, 2, 3, 1) * to_grid
        out[lo:hi] = torch.nn.functional.grid_sample(images[lo:hi] - background[lo:hi], grid, mode="bilinear",
                                                     padding_mode="zeros", align_corners=False) + background[lo:hi]
    return out


def train_batches(split: Split, batch_size: int, seed: int, epoch: int, shift: int = 0,
                  rank: int = 0, world: int = 1, start_step: int = 0, rotate: float = 0.0,
                  scale: float = 0.0, elastic: float = 0.0) -> Iterator[Batch]:
    """One epoch of shuffled training batches; order, numbers, shifts, rotations, scalings and
    elastic distortions are fresh per (seed, epoch).

    With ``world`` processes each global batch of ``batch_size`` is cut into ``world`` equal shards
    and this process yields shard ``rank``: all processes step in lock-step on disjoint images.
    Everything random is drawn up front for the whole epoch, so ``start_step`` (resuming mid-epoch)
    skips batches without changing the ones that follow. The last partial batch is dropped.

    The whole epoch of this process's shard is gathered, rotated, scaled and distorted (``rotate``
    degrees, ``scale`` a fraction, ``elastic`` pixels: ``random_warp``) and shifted at once, on the
    training device (airbench's way): each step is then a slice, with no kernel and no host work of its own.
    """
    n = len(split)
    device = split.images.device
    perm = torch.randperm(n, generator=epoch_generator(seed, epoch, 0, device), device=device)
    numbers = train_numbers(n, seed, epoch, device)
    offsets = torch.randint(0, 2 * shift + 1, (2, n), generator=epoch_generator(seed, epoch, 2, device), device=device)
    warps = torch.rand((2, n), generator=epoch_generator(seed, epoch, 3, device), device=device) * 2 - 1 \
        if rotate or scale else None
    fields = torch.rand((n, 2, ELASTIC_GRID, ELASTIC_GRID), generator=epoch_generator(seed, epoch, 4, device),
                        device=device) * 2 - 1 if elastic else None
    steps, per_rank = n // batch_size, batch_size // world
    if start_step >= steps:
        return
    # Positions in the permutation that are this process's, from start_step on: (steps, world, per_rank)[:, rank]
    positions = torch.arange(steps * batch_size, device=device).view(steps, world, per_rank)[start_step:, rank].flatten()
    idx = perm[positions]
    images = split.images[idx]
    if warps is not None or fields is not None:  # an elastic field alone warps with rotation 0 and scale 1
        params = warps[:, positions] if warps is not None else images.new_zeros((2, len(positions)))
        images = random_warp(images, params, rotate, scale, None if fields is None else fields[positions], elastic)
    images = random_shift(images, offsets[:, positions], shift)
    digits, r = split.digits[idx], numbers[idx]
    sums = digits + r
    for lo in range(0, len(idx), per_rank):
        hi = lo + per_rank
        yield images[lo:hi], r[lo:hi], digits[lo:hi], sums[lo:hi]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps per epoch (the last partial batch is dropped)."""
    return n // batch_size


def eval_batches(split: Split, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
    """The split in order, each process taking a disjoint contiguous shard (no sample twice)."""
    n = len(split)
    lo, hi = n * rank // world, n * (rank + 1) // world
    assert split.numbers is not None, "evaluation splits carry fixed numbers"
    for start in range(lo, hi, batch_size):
        end = min(start + batch_size, hi)
        digits, r = split.digits[start:end], split.numbers[start:end]
        yield split.images[start:end], r, digits, digits + r
