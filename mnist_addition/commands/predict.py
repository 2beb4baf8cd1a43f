"""Predict from any image file: MNIST-style preprocessing, a model from a run folder, both heads.

Preprocessing follows how MNIST itself was made: the digit is cropped to its ink, scaled so its
longer side is 20 pixels (keeping the aspect ratio), and placed in a 28x28 field so that its
centre of mass is at the centre. Dark ink on a light background (how people draw) is inverted
first. A 28x28 image that already looks like MNIST (light ink on a dark border) is used unchanged.
Pure torch + Pillow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.data import MEAN, STD
from ..core.errors import UserError, first_line, shown
from ..rundir.contents import load_run

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MIN_SIDE = 8  # pixels: anything smaller cannot hold a legible digit
BATCH = 256  # images through the net at once (a folder of 10,000 in one batch took 1.8 GB)


class ImageError(UserError, ValueError):
    """An input image is unusable; the message names the file and what to do."""


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu", tta: int | None = None) -> nn.Module:
    """The trained model of a run folder (weights from safetensors only; no pickle), in eval mode;
    ``tta`` views instead of the run's own, if given."""
    return load_run(run_dir, device, tta).model


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file -> float (H, W) in [0, 1], 1 = white, as a person sees it on screen.

    Any mode Pillow opens: 8-bit grey or colour, 1-bit, palette, CMYK, 16-bit (scaled by 65,535,
    not clipped at 255), 32-bit integer and float (scaled by their range); transparency is
    composited on white; of several frames (GIF, TIFF) the first.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if not path.exists():
            raise ImageError(f"{path} does not exist: check the path")
        if path.is_dir():
            raise ImageError(f"{path} is a folder, not an image: pass a file, or use --numbers/--random-numbers "
                             "for a folder")
        if not path.is_file():
            raise ImageError(f"{path} is not a regular file (a device, pipe or socket): pass an image file")
    except OSError as e:  # a name too long for the filesystem, a link loop
        raise ImageError(f"{shown(str(path))} cannot be opened ({e.strerror or e}): check the path") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                gray = _as_gray(_upright(img))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{path} is too large to open safely (over {Image.MAX_IMAGE_PIXELS:,} pixels, Pillow's "
                         "decompression-bomb limit): scale it down first") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image Pillow can read: pass a PNG, JPEG or BMP file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path} is damaged or truncated ({first_line(e, 80)}): re-export the image") from None
    if min(gray.shape) < MIN_SIDE:
        raise ImageError(f"{path} is only {gray.shape[1]}x{gray.shape[0]} pixels: a digit needs at least "
                         f"{MIN_SIDE}x{MIN_SIDE}; pass a larger image")
    return gray


def _upright(img: Any) -> Any:
    """The image turned as its EXIF orientation says (a phone's photo is stored sideways and shown
    upright); one whose EXIF cannot be read, as it is stored."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError):
        return img


def _as_gray(img: Any) -> torch.Tensor:
    """A loaded Pillow image -> float (H, W) in [0, 1]: the brightness a viewer would show."""
    import numpy as np
    from PIL import Image

    if img.mode.startswith("I;16"):  # 16-bit grey
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 65535.0)
    if img.mode in ("I", "F"):  # 32-bit integer or float: 8- or 16-bit data as such, else its own range
        data = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(data)
        if not finite.any():
            raise ValueError("no pixel holds a number (all NaN or infinite)")
        # a NaN or infinite pixel is a hole in the data, not ink: it takes the image's typical shade
        data = np.where(finite, data, np.median(data[finite]))
        lo, hi = float(data.min()), float(data.max())
        if img.mode == "I" and lo >= 0 and hi <= 255:  # 8-bit values stored in 32 bits
            data = data / 255.0
        elif img.mode == "I" and lo >= 0 and hi <= 65535:
            data = data / 65535.0
        elif not (img.mode == "F" and lo >= 0 and hi <= 1):
            data = (data - lo) / (hi - lo) if hi > lo else np.zeros_like(data)
        return torch.from_numpy(data.astype(np.float32))
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if img.mode not in ("L", "RGB", "RGBA", "1", "P"):  # CMYK, YCbCr, LAB, HSV...: through RGB
        img = img.convert("RGB")
    gray = img.convert("L")
    return torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).float().div(255.0).reshape(gray.size[1],
                                                                                                  gray.size[0])


def to_mnist(gray: torch.Tensor, name: str = "image") -> torch.Tensor:
    """(H, W) in [0, 1] -> normalised (1, 28, 28) in MNIST's format: light ink on black, centred."""
    border = torch.cat([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.median() > 0.5:  # light background: dark ink on paper
        gray = 1.0 - gray
        border = 1.0 - border
    span = gray.max() - gray.min()
    if span < 0.1:
        raise ImageError(f"{name} is blank (all one shade): draw a digit, darker or lighter than its background")
    if gray.shape == (28, 28):  # already an MNIST-style image: leave it exactly as it is
        return ((gray - MEAN) / STD).unsqueeze(0)
    ink = (gray - border.median()).clamp(min=0)
    ink = ink / ink.max()
    rows, cols = torch.nonzero(ink > 0.2, as_tuple=True)
    if len(rows) == 0:
        raise ImageError(f"{name} has no digit that stands out from its background: pass a clearer image")
    ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]  # crop to the ink
    h, w = ink.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    digit = torch.nn.functional.interpolate(ink[None, None], size=size, mode="area" if scale < 1 else "bilinear",
                                            **({} if scale < 1 else {"align_corners": False}))[0, 0]
    # Centre of mass at the centre of the 28x28 field, as in MNIST.
    total = digit.sum()
    ys = torch.arange(size[0], dtype=digit.dtype)
    xs = torch.arange(size[1], dtype=digit.dtype)
    com_y = (digit.sum(1) * ys).sum() / total
    com_x = (digit.sum(0) * xs).sum() / total
    top = int(round(13.5 - com_y.item()))
    left = int(round(13.5 - com_x.item()))
    top, left = min(max(top, 0), 28 - size[0]), min(max(left, 0), 28 - size[1])
    field = torch.zeros(28, 28)
    field[top:top + size[0], left:left + size[1]] = digit
    return ((field - MEAN) / STD).unsqueeze(0)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file -> the (1, 28, 28) normalised tensor the model expects."""
    return to_mnist(read_image(path), name=str(path))


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, numbers: torch.Tensor | list[int]) -> list[dict[str, Any]]:
    """Digit and sum for each (image (1, 28, 28), number) pair, with both heads' probabilities."""
    device = next(model.parameters()).device
    numbers = torch.as_tensor(numbers, dtype=torch.long, device=device)
    if numbers.numel() and (numbers.min() < 0 or numbers.max() > 9):
        raise ValueError("numbers must be integers in 0..9")
    model.eval()
    digit_logits, sum_logits = model(images.to(device), numbers)
    digit_p, sum_p = digit_logits.float().softmax(1), sum_logits.float().softmax(1)
    out = []
    for i in range(len(numbers)):
        out.append({"number": int(numbers[i]), "digit": int(digit_p[i].argmax()), "sum": int(sum_p[i].argmax()),
                    "digit_prob": float(digit_p[i].max()), "sum_prob": float(sum_p[i].max()),
                    "digit_probs": [round(float(p), 6) for p in digit_p[i]],
                    "sum_probs": [round(float(p), 6) for p in sum_p[i]]})
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """``predict``'s rows as CSV: file, number, digit, sum and both heads' probabilities."""
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "number", "digit", "sum", "digit_prob", "sum_prob"])
        for r in rows:
            writer.writerow([r["file"], r["number"], r["digit"], r["sum"], f"{r['digit_prob']:.6f}", f"{r['sum_prob']:.6f}"])


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as e:
        raise ImageError(f"cannot list {folder} ({e.strerror or e}): check the folder") from None


def inputs(image: Path, number: int | None = None, numbers: list[int] | None = None, random_numbers: bool = False,
           seed: int = 0) -> tuple[list[Path], list[int]]:
    """The image files and their numbers for ``predict IMAGE [NUMBER]``: one image and NUMBER, or a
    folder's images (sorted by name) with one of ``numbers`` (one per image) or ``random_numbers``
    (seeded). Every mistake in the combination is one line naming what to give instead."""
    try:
        folder = image.is_dir()
    except OSError as e:  # a name too long for the filesystem, a link loop
        raise ImageError(f"{shown(str(image))} cannot be opened ({e.strerror or e}): check the path") from None
    if not folder:
        if numbers is not None or random_numbers:
            raise ImageError("--numbers and --random-numbers are for a folder of images: for one image give NUMBER")
        if number is None:
            raise ImageError("missing NUMBER: give a number from 0 to 9 after the image")
        return [image], [number]
    if number is not None:
        raise ImageError(f"{image} is a folder: give --numbers or --random-numbers instead of NUMBER")
    if (numbers is None) == (not random_numbers):
        raise ImageError(f"{image} is a folder: pass exactly one of --numbers 3,7,... or --random-numbers")
    found = image_files(image)
    if not found:
        raise ImageError(f"{image} holds no image files (png, jpg, bmp, ...)")
    if numbers is not None and len(numbers) != len(found):
        raise ImageError(f"--numbers has {len(numbers)} values for {len(found)} images in {image}: "
                         "give one per image, in sorted file order")
    if numbers is None:
        numbers = torch.randint(0, 10, (len(found),), generator=torch.Generator().manual_seed(seed)).tolist()
    return found, numbers


def predict_files(run_dir: Path, images: list[Path], numbers: list[int], csv: Path | None = None,
                  overwrite: bool = False, tta: int | None = None) -> list[dict[str, Any]]:
    """``predict``'s rows (with their ``file``) for image files and numbers, using the model of
    ``run_dir``; with ``csv``, also written there (never over a file of the run or an input
    image; an existing file only with ``overwrite``). Every file is checked before any output."""
    from ..rundir.contents import check_output_file, replace_file, run_files

    if csv is not None:
        check_output_file(csv, overwrite, "--csv", protected=(*run_files(run_dir), *images))
    model = load_model(run_dir, tta=tta)
    rows = []
    for start in range(0, len(images), BATCH):  # memory bounded by a batch, whatever the folder holds
        chunk = images[start:start + BATCH]
        batch = torch.stack([load_image(f) for f in chunk])
        rows += [{"file": str(f), **r} for f, r in zip(chunk, predict(model, batch, numbers[start:start + BATCH]))]
    if csv is not None:
        replace_file(csv, lambda tmp: write_csv(rows, tmp), "--csv")
    return rows
