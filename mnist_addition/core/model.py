"""The two model presets: (image, number) -> (digit_logits, sum_logits). Pure torch, no device code.

* ``seed``: the original reference network, reproduced exactly (6,384,925 parameters).
* ``fast``: our default. A small BatchNorm CNN for the digit, and an *adder* head that learns a
  (digit x number) -> sum table from data instead of an MLP on concatenated logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_DIGITS = 10
NUM_SUMS = 19  # 0 + 0 .. 9 + 9


class SeedNet(nn.Module):
    """The reference network: a 7-conv VGG-style digit classifier and an MLP on [logits, one-hot r]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv4 = nn.Conv2d(128, 256, 3, padding=1)
        self.conv5 = nn.Conv2d(256, 512, 3)
        self.conv6 = nn.Conv2d(512, 1024, 3)
        self.conv7 = nn.Conv2d(1024, NUM_DIGITS, 3)
        self.fc1 = nn.Linear(NUM_DIGITS + 10, 128)
        self.fc2 = nn.Linear(128, NUM_SUMS)

    def forward(self, images: torch.Tensor, numbers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.conv1(images))  # (B, 32, 28, 28)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 64, 14, 14)
        x = F.relu(self.conv3(x))  # (B, 128, 14, 14)
        x = F.max_pool2d(F.relu(self.conv4(x)), 2)  # (B, 256, 7, 7)
        x = F.relu(self.conv5(x))  # (B, 512, 5, 5)
        x = F.relu(self.conv6(x))  # (B, 1024, 3, 3)
        digit_logits = self.conv7(x).flatten(1)  # (B, 10)
        one_hot = F.one_hot(numbers, 10).to(digit_logits.dtype)
        h = F.relu(self.fc1(torch.cat([digit_logits, one_hot], dim=1)))  # (B, 128)
        return digit_logits, self.fc2(h)  # (B, 10), (B, 19)


IMAGE_SIZE = 28
DEPTHS = (4, 5, 6)  # the fast net's conv layers (TrainConfig.DEPTHS says the same; config imports no torch)
MAX_CROP = 4  # MNIST's digits are scaled into a 20x20 box in the middle; config.INT_RANGES["crop"] says the same


class Crop(nn.Module):
    """Cuts ``pixels`` from each side of the image: (B, C, H, W) -> (B, C, H - 2p, W - 2p)."""

    def __init__(self, pixels: int) -> None:
        super().__init__()
        self.pixels = pixels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.pixels
        return images[:, :, p:-p, p:-p]

    def extra_repr(self) -> str:
        return f"pixels={self.pixels}"


# The shifts (down, right; pixels) of each image a net evaluates with ``tta`` views (TrainConfig.TTA_VIEWS)
TTA_SHIFTS = {1: ((0, 0),), 5: ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)),
              9: tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))}


def shifted_views(images: torch.Tensor, shifts: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """(B, C, H, W) -> (V * B, C, H, W): every image moved by each (down, right) of ``shifts`` (at
    most one pixel), view by view; the pixels moved in are the image's background (its minimum)."""
    h, w = images.shape[-2:]
    background = images.amin(dim=(1, 2, 3), keepdim=True)
    padded = F.pad(images - background, (1, 1, 1, 1)) + background  # (B, C, H + 2, W + 2)
    return torch.cat([padded[:, :, 1 - dy:1 - dy + h, 1 - dx:1 - dx + w] for dy, dx in shifts])


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    # bias=False: BatchNorm's shift makes a conv bias redundant
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class AdderHead(nn.Module):
    """Sum logits from digit probabilities and the number: a learned (number, digit) -> sum table.

    ``sum_logits[b] = scale * sum_d p(d | image_b) * table[r_b, d] + bias``. All 100 (digit, number)
    cells are seen in the first few hundred steps, so the head learns addition as fast as the digit
    head learns digits, and the sum loss in turn teaches the digit head (digit = sum - r).
    The fixed ``scale`` lets a table initialised at zero reach confident logits in a few hundred steps.
    """

    def __init__(self, scale: float = 10.0) -> None:
        super().__init__()
        self.scale = scale
        self.table = nn.Parameter(torch.zeros(10, NUM_DIGITS, NUM_SUMS))  # (number, digit, sum)
        self.bias = nn.Parameter(torch.zeros(NUM_SUMS))

    def forward(self, digit_logits: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        probs = digit_logits.float().softmax(dim=1)  # (B, 10); fp32 even under autocast
        # One-hot matmul rather than self.table[numbers]: the backward of indexing is a scatter-add,
        # whose order (and so whose float rounding) varies between CPU runs; a matmul's does not.
        one_hot = F.one_hot(numbers, 10).to(self.table.dtype)  # (B, 10)
        rows = (one_hot @ self.table.flatten(1)).view(-1, NUM_DIGITS, NUM_SUMS)  # (B, 10, 19)
        return self.scale * torch.bmm(probs.unsqueeze(1), rows).squeeze(1) + self.bias  # (B, 19)


class FastNet(nn.Module):
    """Our default: 4 conv-BN-ReLU layers (width, 2x, 4x, 4x channels), a 3x3 max-pooled map, a linear
    digit classifier and the AdderHead.

    Pooling early keeps the 28x28 stage to a single cheap conv (1 input channel), so most of the
    compute runs at 14x14 and 7x7. The classifier sees the 3x3 map rather than a global pool: where a
    stroke is matters for digits, and keeping it was worth ~0.1% test accuracy at no cost in speed.

    ``stem`` is how the 28x28 image becomes the (w, 14, 14) map: ``"pool"``, a conv at full size,
    BatchNorm, ReLU, then a 2x2 max-pool; ``"stride"``, a stride-2 conv, so BatchNorm and ReLU (and
    their backward passes) run on a quarter of the values. On a 2-core CPU the full-size stage was
    two thirds of a step's time: ``"stride"`` steps 1.3x faster there (docs/training.md). The
    weights have the same shapes; their names differ (no pooling layer), so one stem's weights
    never load into the other's net.

    ``dropout`` zeroes that fraction of the classifier's inputs while training (each value of the
    flattened map on its own); evaluation, predict and ONNX see no dropout.

    ``tta`` (1, 5 or 9) is test-time augmentation: in evaluation (``eval()``: validation, test,
    predict, the ONNX graph) the net scores each image also shifted by one pixel (``TTA_SHIFTS``)
    and returns the views' mean log-probabilities for the digit and the sum; training is unchanged.

    ``depth`` is the number of conv layers: 4 as above; 5 adds a second 2w-channel conv before the
    14x14 map is pooled, 6 also a third 4w-channel conv at 7x7. Each extra layer costs about as many
    multiply-adds as the last conv: depth 5 has about 1.5x, depth 6 about 2x those of depth 4.
    Depth 4 builds the same layers under the same names as before the option existed; the layers
    after an extra one are renumbered, so one depth's weights never load into another's net.

    ``crop`` cuts that many pixels from each side of the image before the first layer: MNIST's
    digits are scaled into a 20x20 box and centred in the 28x28 image, so the border is almost
    always background (1% of the ink lies outside the central 22x22), and every layer's map
    shrinks with it: crop 3 (22x22 -> 11, 5, 2x2) costs about half of crop 0 (28x28 -> 14, 7, 3x3).
    Crops of 3 and 4 leave a 2x2 map, so the classifier is smaller; any crop adds a ``Crop`` layer
    at the front, so a cropped net's weights never load into an uncropped one (shapes or names differ).
    """

    def __init__(self, width: int = 16, stem: str = "pool", crop: int = 0, dropout: float = 0.0,
                 tta: int = 1, depth: int = 4) -> None:
        super().__init__()
        if tta not in TTA_SHIFTS:
            raise ValueError(f"tta must be one of {', '.join(map(str, TTA_SHIFTS))} views, got {tta!r}")
        self.tta = tta
        w = width
        if stem not in ("pool", "stride"):  # config.STEMS
            raise ValueError(f"unknown stem {stem!r}: use 'pool' or 'stride'")
        if not 0 <= crop <= MAX_CROP:
            raise ValueError(f"crop must be in 0..{MAX_CROP} pixels, got {crop!r}")
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {', '.join(map(str, DEPTHS))} conv layers, got {depth!r}")
        side = IMAGE_SIZE - 2 * crop  # 28 .. 20, always even: the stride-2 conv and the pool give side // 2
        first = [*_conv_bn_relu(1, w), nn.MaxPool2d(2)] if stem == "pool" else _conv_bn_relu(1, w, stride=2)
        self.features = nn.Sequential(
            *([Crop(crop)] if crop else []),  # (B, 1, side, side)
            *first,  # (B, w, side/2, side/2): 14x14 uncropped
            *_conv_bn_relu(w, 2 * w),  # (B, 2w, side/2, side/2)
            *(_conv_bn_relu(2 * w, 2 * w) if depth >= 5 else []),
            nn.MaxPool2d(2),  # (B, 2w, side/4, side/4): 7x7
            *_conv_bn_relu(2 * w, 4 * w),  # (B, 4w, side/4, side/4)
            *_conv_bn_relu(4 * w, 4 * w),  # (B, 4w, side/4, side/4)
            *(_conv_bn_relu(4 * w, 4 * w) if depth >= 6 else []),
            nn.MaxPool2d(2), nn.Flatten(),  # (B, 4w * 3 * 3), (B, 4w * 2 * 2) from crop 3 on
        )
        self.dropout = dropout  # a function in forward, not a layer: the weights' names stay those of dropout 0
        self.classifier = nn.Linear(4 * w * (side // 8) ** 2, NUM_DIGITS)
        self.adder = AdderHead()

    def forward(self, images: torch.Tensor, numbers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training or self.tta == 1:
            return self._forward(images, numbers)
        # test-time augmentation: one forward per view, the batch's size (a 5x larger batch was 1.4x
        # slower per image on a 2-core CPU), the views' log-probabilities averaged in fp32
        digit_sum, total_sum = 0.0, 0.0
        for shift in TTA_SHIFTS[self.tta]:
            digit_logits, sum_logits = self._forward(shifted_views(images, (shift,)), numbers)
            digit_sum = digit_sum + digit_logits.float().log_softmax(dim=1)
            total_sum = total_sum + sum_logits.float().log_softmax(dim=1)
        return digit_sum / self.tta, total_sum / self.tta

    def _forward(self, images: torch.Tensor, numbers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(images)
        if self.dropout:
            features = F.dropout(features, self.dropout, self.training)
        digit_logits = self.classifier(features)  # (B, 10)
        return digit_logits, self.adder(digit_logits, numbers)


def build_model(preset: str, width: int = 16, stem: str = "pool", crop: int = 0, dropout: float = 0.0,
                tta: int = 1, depth: int = 4) -> nn.Module:
    """The network for a preset (``TrainConfig.net``: preset, width, stem, crop, dropout, tta, depth)."""
    if preset == "seed":
        return SeedNet()
    if preset == "fast":
        return FastNet(width, stem, crop, dropout, tta, depth)
    raise ValueError(f"unknown preset {preset!r}: use 'fast' or 'seed'")


def parameter_count(preset: str, width: int = 16, stem: str = "pool", crop: int = 0, dropout: float = 0.0,
                    tta: int = 1, depth: int = 4) -> int:
    """Parameters of a preset without allocating them (built on the meta device): sizes are checked
    before anything is allocated or written."""
    with torch.device("meta"):
        return count_parameters(build_model(preset, width, stem, crop, dropout, tta, depth))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only: not on biases, BatchNorm or the adder table."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim in (2, 4) and not name.startswith("adder.") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
