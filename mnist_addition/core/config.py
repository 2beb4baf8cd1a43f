"""TrainConfig: the single source of truth for a run.

CLI flags are generated from the fields (``commands/flags.py``), a Tune search space is checked against
the field names, and the resolved config is written into every run folder as ``config.json``.
Presets only change defaults: ``TrainConfig.from_preset("seed", epochs=3)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import stat
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError, shown

PRESETS = ("fast", "seed")
STEMS = ("pool", "stride")  # model.FastNet's first layer
TTA_VIEWS = (1, 5, 9)  # model.TTA_SHIFTS's keys (this module imports no torch)
DEPTHS = (4, 5, 6)  # model.DEPTHS
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
# The experiment trackers Accelerate speaks to (its LoggerType names); `--log-with` takes any of them,
# comma-separated. Each is an extra of the same name: pip install -e ".[mlflow]".
TRACKERS = ("tensorboard", "mlflow", "wandb", "aim", "comet_ml", "clearml", "dvclive", "swanlab", "trackio")


class ConfigError(UserError, ValueError):
    """A config value is out of range or unknown; the message names the flag and the fix."""


_UNSET = object()


def _f(default: Any, help: str, choices: tuple | None = None, *, infra: bool = False, resumable: bool = False,
       sweep: str | None = None, smoke: Any = _UNSET, sweep_smoke: Any = _UNSET, factory: Any = None,
       shown: str | None = None) -> Any:
    """A TrainConfig field and its roles, declared once (read by the CLI, resume, spaces and smoke modes):

    * ``infra``: plumbing, not maths (how and where it runs): the CLI lists it apart;
    * ``resumable``: may change when a run resumes (``training/resume.py``): where things are, how often to
      log or save; everything else is the run's, fixed by its config.json;
    * ``sweep``: set by ``mnist-addition tune`` for every trial, from the flag named here; a search
      space may not set it;
    * ``smoke``: its value under ``train --smoke``; ``sweep_smoke`` under ``tune --smoke`` (the
      smoke value unless given);
    * ``factory``: the default is ``factory()`` (a list), not ``default``;
    * ``shown``: what ``--help`` says the default is, where None would not tell (else the value, and
      each preset's own: ``preset_values``).
    """
    meta = {"help": help, "choices": choices, "infra": infra or resumable, "resumable": resumable, "sweep": sweep,
            "shown": shown}
    if smoke is not _UNSET:
        meta["smoke"] = smoke
        meta["sweep_smoke"] = smoke if sweep_smoke is _UNSET else sweep_smoke
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are the ``fast`` preset."""

    # --- what is trained ---------------------------------------------------------------------
    preset: str = _f("fast", "model and recipe preset: 'fast' (our default) or 'seed' (the 6.4M reference)", PRESETS)
    width: int = _f(16, "channels of the first conv layer; later layers use 2x and 4x (fast only; seed is fixed at 32)")
    stem: str = _f("pool", "the fast net's first layer: 'pool' (a conv at 28x28, then a 2x2 max-pool) or 'stride' "
                           "(a stride-2 conv: the same weights' shapes, ~1.3x faster steps on a CPU; fast only)",
                   STEMS)
    crop: int = _f(0, "pixels cut from each side of the 28x28 image before the first layer (fast only): MNIST's "
                      "digits sit in a 20x20 box in the middle, so 3 keeps 22x22 (99% of the ink) at about half "
                      "the compute; at most 4")
    depth: int = _f(4, "conv layers of the fast net: 4, 5 (a second conv at 14x14) or 6 (also a third at 7x7); "
                       "each extra layer costs about as much as the last conv", DEPTHS)
    dropout: float = _f(0.0, "fraction of the digit classifier's inputs zeroed at random while training (fast only; "
                             "0 = off)")
    tta: int = _f(1, "views of each image the net averages when it evaluates or predicts (test-time augmentation, "
                     "fast only): 1 (the image), 5 (also shifted one pixel up, down, left, right) or 9 (every shift "
                     "of up to one pixel); training is unchanged", TTA_VIEWS)
    # --- optimisation ------------------------------------------------------------------------
    epochs: int = _f(2, "passes over the training images (55,000; 60,000 with --val-size 0)", smoke=1, sweep_smoke=2)
    batch_size: int = _f(256, "images per optimizer step (global, summed over processes)", smoke=128)
    lr: float = _f(8e-3, "peak learning rate")
    optimizer: str = _f("adamw", "optimizer", ("adamw", "sgd"))
    momentum: float = _f(0.9, "SGD momentum (AdamW beta1)")
    weight_decay: float = _f(5e-4, "decoupled weight decay on conv/linear weights")
    schedule: str = _f("onecycle", "learning-rate schedule", ("onecycle", "constant"))
    warmup: float = _f(0.2, "fraction of the steps spent warming up (onecycle only)")
    sum_weight: float = _f(0.5, "loss = (1 - w) * CE(digit) + w * CE(sum); 0.5 is the seed's plain average")
    label_smoothing: float = _f(0.1, "label smoothing for both cross-entropies")
    shift: int = _f(1, "random translation of training images by up to this many pixels (0 = off)")
    rotate: float = _f(0.0, "random rotation of training images by up to this many degrees (0 = off)")
    scale: float = _f(0.0, "random scaling of training images by up to this fraction, e.g. 0.1: 90%..110% (0 = off)")
    elastic: float = _f(0.0, "random elastic distortion of training images: a smooth field of displacements of up "
                             "to this many pixels, e.g. 2 (0 = off)")
    ema: float = _f(0.0, "decay of a moving average of the weights (EMA) that the run evaluates, checkpoints and "
                         "saves instead of its last weights, e.g. 0.9995 (about the last 2,000 steps); training is "
                         "unchanged (0 = off)")
    seed: int = _f(0, "seed for initialisation, data order, training numbers and augmentation")
    # a list: set in a --config file (no flag); see hparams.py
    hparam_schedule: list[dict[str, Any]] = _f(None, "changes of lr, weight_decay, sum_weight, label_smoothing from "
                                                     "the start of an epoch on, e.g. [{\"epoch\": 3, \"lr\": 0.004}] "
                                                     "(what tune --scheduler pbt finds; set in a --config file)",
                                               sweep="--scheduler pbt", factory=list)
    # --- data sizes --------------------------------------------------------------------------
    val_size: int = _f(5000, "images held out of the official training set for validation (0 = none: the final "
                             "refit of a recipe chosen on validation, on all 60,000 images)")
    train_limit: int = _f(0, "use only the first N training images (0 = all); for smoke tests", smoke=10_000)
    eval_limit: int = _f(0, "evaluate on only the first N validation/test images (0 = all)", smoke=1000)
    # --- infrastructure (do not change the maths) ---------------------------------------------
    cpu: bool = _f(False, "train on the CPU even where a GPU exists (also set by accelerate launch's use_cpu)", infra=True)
    deterministic: bool = _f(False, "bit-identical reruns and resumes on a GPU (deterministic kernels, no autotuning; "
                                    "slower); the CPU is deterministic without it", infra=True)
    compile: bool = _f(False, "torch.compile the training step (CUDA graphs on GPUs); costs a minute of compiling, "
                              "so it pays off on GPUs, not on a small CPU", infra=True)
    mixed_precision: str = _f("auto", "'auto' = bf16 where the hardware runs it natively, else 'no'", MIXED_PRECISION, infra=True)
    gradient_accumulation_steps: int = _f(1, "split each batch into K micro-batches", infra=True)
    eval_batch_size: int = _f(1000, "images per evaluation forward pass", resumable=True)
    log_every: int = _f(20, "refresh progress (one CPU-GPU sync) every N steps", resumable=True)
    log_with: str = _f("none", "experiment trackers, comma-separated: " + ", ".join(TRACKERS) + " (each an extra "
                               "of that name; see docs/tracking.md); 'none' logs only to the run folder",
                       resumable=True, sweep="--log-with")
    checkpoint_every: int = _f(0, "also save the full training state every N steps (0 = at epoch ends only)",
                               resumable=True)
    keep_checkpoints: int = _f(2, "keep the newest N checkpoints in the run folder", resumable=True)
    # 5 minutes: far above any wait of a healthy run (a checkpoint, an evaluation, a slow machine reading
    # or downloading MNIST's 11 MB before the first collective), far below torch's 30 min (gloo) / 10 min
    # (NCCL) for which a lost machine would hold every other one's GPUs. See docs/distributed.md.
    dist_timeout: int = _f(300, "seconds a process waits for the others in a collective before it stops, saying a "
                                "peer stopped answering (data-parallel runs)", resumable=True)
    data_dir: str | None = _f(None, "folder with MNIST/raw/*-ubyte", resumable=True, sweep="--data-dir",
                              shown="$MNIST_ADDITION_DATA or ~/.cache/mnist-addition")
    # the run folder itself: a resumed run keeps its own (training/resume.py), a trial's is the sweep's
    output_dir: str | None = _f(None, "run folder", infra=True, sweep="--storage-path/--name",
                                shown="runs/<timestamp>")

    def __post_init__(self) -> None:
        self._coerce_types()
        self._check()

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, preset: str = "fast", **overrides: Any) -> "TrainConfig":
        """Preset defaults, then ``overrides`` (unknown keys are an error)."""
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}: use --preset {' or --preset '.join(PRESETS)}")
        check_keys(overrides, "override")
        return cls(**{**PRESET_DEFAULTS[preset], **overrides, "preset": preset})

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a dict such as a ``config.json``; extra bookkeeping keys are ignored."""
        data = {k: v for k, v in data.items() if k not in BOOKKEEPING_KEYS}
        check_keys(data, source)
        preset = data.pop("preset", "fast")
        return cls.from_preset(preset, **data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        """Read a JSON config file (as written into a run folder, or by a sweep)."""
        path = Path(path)
        data = read_json_file(path, "config file", "check the path given to --config")
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a JSON object of TrainConfig fields")
        if "config" in data and isinstance(data["config"], dict):  # a run folder's config.json
            data = data["config"]
        return cls.from_dict(data, source=str(path))

    @classmethod
    def resolve(cls, config_file: str | os.PathLike | None = None, smoke: bool = False,
                flags: dict[str, Any] | None = None) -> "TrainConfig":
        """A new run's config: preset defaults < ``config_file`` < ``smoke`` < ``flags`` (what was typed)."""
        values: dict[str, Any] = cls.load(config_file).to_dict() if config_file else {}
        if smoke:
            values.update(smoke_overrides())
        values.update(flags or {})
        return cls.from_dict(values, source="the command line")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def replace(self, **changes: Any) -> "TrainConfig":
        check_keys(changes, "replace")
        return dataclasses.replace(self, **changes)

    @property
    def net(self) -> dict[str, Any]:
        """What ``model.build_model`` and ``model.parameter_count`` take: ``build_model(**config.net)``."""
        return {"preset": self.preset, "width": self.width, "stem": self.stem, "crop": self.crop,
                "dropout": self.dropout, "tta": self.tta, "depth": self.depth}

    @property
    def trackers(self) -> tuple[str, ...]:
        """``--log-with`` as tracker names (none for 'none')."""
        return tracker_names(self.log_with)

    # -- checks ---------------------------------------------------------------------------------
    def _coerce_types(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind, optional = field_kinds()[f.name]
            if value is None:
                if optional:
                    continue
                raise ConfigError(f"{flag(f.name)} needs a value")
            if kind is list and isinstance(value, tuple):
                value = list(value)
            if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                value = float(value)
                if not math.isfinite(value):  # --lr inf, or NaN/Infinity in a JSON config
                    raise ConfigError(f"{flag(f.name)} must be a finite number, got {value!r}")
            elif kind is int and isinstance(value, float) and value.is_integer():
                value = int(value)  # 1e3 in a JSON file; 1e23 is refused by its range below
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"{flag(f.name)} must be {kind.__name__}, got {shown(value)}")
            object.__setattr__(self, f.name, value)

    def _check(self) -> None:
        def need(ok: bool, name: str, what: str, fix: str) -> None:
            if not ok:
                raise ConfigError(f"{flag(name)} {what} (got {shown(getattr(self, name))}): {fix}")

        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                need(False, f.name, "is not a known choice", "use one of " + ", ".join(map(str, choices)))
        for name, (low, high, example) in INT_RANGES.items():  # what the code can use: no overflow anywhere
            value = getattr(self, name)
            need(value >= low, name, f"must be {'at least 1' if low == 1 else f'>= {low}'}",
                 f"use a value in {low}..{high}, e.g. {flag(name)} {example}")
            need(value <= high, name, f"must be in {low}..{high}", f"use e.g. {flag(name)} {example}")
        need(self.lr > 0, "lr", "must be > 0", "use e.g. --lr 0.004")
        need(self.lr <= MAX_LR, "lr", f"must be in (0, {MAX_LR:g}]", "use e.g. --lr 0.004")
        need(self.preset != "seed" or self.width == 32, "width", "is fixed at 32 for the seed preset",
             "drop --width, or use --preset fast")
        need(self.preset != "seed" or self.stem == "pool", "stem", "is fixed for the seed preset",
             "drop --stem, or use --preset fast")
        need(self.preset != "seed" or self.crop == 0, "crop", "is fixed at 0 for the seed preset",
             "drop --crop, or use --preset fast")
        need(self.preset != "seed" or self.dropout == 0.0, "dropout", "is fixed at 0 for the seed preset",
             "drop --dropout, or use --preset fast")
        need(self.preset != "seed" or self.depth == 4, "depth", "is fixed for the seed preset",
             "drop --depth, or use --preset fast")
        need(self.preset != "seed" or self.tta == 1, "tta", "is fixed at 1 for the seed preset",
             "drop --tta, or use --preset fast")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)", "use 0 to turn it off, e.g. --dropout 0.2")
        need(0.0 <= self.ema < 1.0, "ema", "must be in [0, 1)", "use 0 to turn it off, e.g. --ema 0.9995")
        need(0.0 <= self.sum_weight <= 1.0, "sum_weight", "must be in [0, 1]", "use e.g. --sum-weight 0.5")
        need(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)", "use e.g. --momentum 0.9")
        need(0 <= self.weight_decay <= MAX_WEIGHT_DECAY, "weight_decay", f"must be in [0, {MAX_WEIGHT_DECAY:g}]",
             "use 0 to turn it off, e.g. --weight-decay 0.0005")
        need(0.0 < self.warmup < 1.0, "warmup", "must be in (0, 1)", "use e.g. --warmup 0.2")
        need(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)", "use 0 to turn it off")
        need(0.0 <= self.rotate <= 180.0, "rotate", "must be in [0, 180] degrees", "use 0 to turn it off, e.g. --rotate 10")
        need(0.0 <= self.scale <= 0.5, "scale", "must be in [0, 0.5]", "use 0 to turn it off, e.g. --scale 0.1")
        need(0.0 <= self.elastic <= 8.0, "elastic", "must be in [0, 8] pixels", "use 0 to turn it off, e.g. --elastic 2")
        need(self.batch_size % self.gradient_accumulation_steps == 0, "gradient_accumulation_steps",
             f"must divide --batch-size {self.batch_size}", "pick a divisor of the batch size")
        unknown = [name for name in self.trackers if name not in TRACKERS]
        need(self.log_with == "none" or (self.trackers and not unknown and len(set(self.trackers)) == len(self.trackers)),
             "log_with", f"is not a list of trackers{f' ({unknown[0]!r} is unknown)' if unknown else ''}",
             "use 'none' or comma-separated names of " + ", ".join(TRACKERS) + ", e.g. --log-with mlflow,tensorboard")
        for name in ("data_dir", "output_dir"):
            value = getattr(self, name)
            need(value is None or bool(value.strip()), name, "is empty", f"name a folder, or leave {flag(name)} out")
        self._check_schedule()

    def _check_schedule(self) -> None:
        """Each change of ``hparam_schedule`` is well formed and its values pass the fields' own checks."""
        from . import hparams

        if not self.hparam_schedule:
            return
        problem = hparams.check_schedule(self)
        if problem:
            raise ConfigError(f"--hparam-schedule {problem}: fix the config file")
        changes = []
        for i, change in enumerate(self.hparam_schedule, 1):
            values = {k: float(v) for k, v in change.items() if k != "epoch"}
            try:
                dataclasses.replace(self, **values, hparam_schedule=[])
            except ConfigError as e:
                raise ConfigError(f"--hparam-schedule entry {i} (epoch {change['epoch']}): {e}") from None
            changes.append({"epoch": change["epoch"], **values})
        object.__setattr__(self, "hparam_schedule", changes)


# The range of every whole-number field, (lowest, highest, an example): beyond them something
# overflows (a seed above 2**32 - 1 in NumPy's generator, a width whose parameter count exceeds
# int64) or nothing sensible can run (1e23 epochs). crop's 4 is model.MAX_CROP (this module imports no torch).
INT_RANGES: dict[str, tuple[int, int, int]] = {
    "width": (1, 65_536, 16), "crop": (0, 4, 3), "epochs": (1, 100_000, 2), "batch_size": (1, 1_000_000, 256),
    "shift": (0, 8, 1), "seed": (0, 2**32 - 1, 0), "val_size": (0, 10_000_000, 5000),
    "train_limit": (0, 1_000_000_000, 0), "eval_limit": (0, 1_000_000_000, 0),
    "gradient_accumulation_steps": (1, 1_000_000, 1), "eval_batch_size": (1, 1_000_000, 1000),
    "log_every": (1, 1_000_000_000, 20), "checkpoint_every": (0, 1_000_000_000, 0),
    "keep_checkpoints": (1, 1_000_000, 2), "dist_timeout": (1, 86_400, 300),
}
MAX_SEEDS = 64  # train --seeds, tune --seeds: K seeds of one config (training/seeds.py)
# Float hyperparameters go into float32 tensors: --lr 1e308 overflows there. Far above any useful value.
MAX_LR = 1000.0
MAX_WEIGHT_DECAY = 1000.0
# A config file is a few kB; one of megabytes is not a config (and would only be slow to refuse).
MAX_CONFIG_BYTES = 1 << 20


# The seed recipe: SGD lr 0.01 momentum 0.7, batch 128, 25 epochs, plain average of the losses,
# no augmentation, no weight decay, constant learning rate.
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "fast": {},
    "seed": dict(width=32, epochs=25, batch_size=128, lr=0.01, optimizer="sgd", momentum=0.7,
                 weight_decay=0.0, schedule="constant", sum_weight=0.5, label_smoothing=0.0, shift=0,
                 mixed_precision="no"),
}

# Written next to the config in a run folder's config.json, or (seeds: how many seeds a sweep
# trial was scored over) in a sweep's best_config.json; ignored when a config is read back.
BOOKKEEPING_KEYS = frozenset({"versions", "git_commit", "setup", "created", "seeds"})

def smoke_overrides(sweep: bool = False) -> dict[str, Any]:
    """What ``train --smoke`` (or, ``sweep``, ``tune --smoke``) sets: a small subset, short training.
    Explicit flags still win."""
    key = "sweep_smoke" if sweep else "smoke"
    return {f.name: f.metadata[key] for f in dataclasses.fields(TrainConfig) if key in f.metadata}


def tracker_names(log_with: str) -> tuple[str, ...]:
    """``--log-with`` (of ``train`` or ``tune``) as tracker names: none for 'none'."""
    return () if log_with == "none" else tuple(name.strip() for name in log_with.split(","))


def preset_values(name: str) -> dict[str, Any]:
    """The presets that give field ``name`` a value of their own, and that value."""
    return {preset: values[name] for preset, values in PRESET_DEFAULTS.items() if name in values}


def resumable_fields() -> frozenset[str]:
    """The fields a resumed run may change (where things are, how often to log or save)."""
    return frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resumable"])


def sweep_owned() -> dict[str, str]:
    """The fields a sweep sets for every trial, and the ``tune`` flag that sets each."""
    return {f.name: f.metadata["sweep"] for f in dataclasses.fields(TrainConfig) if f.metadata["sweep"]}


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def flag(name: str) -> str:
    """``batch_size`` -> ``--batch-size``: how users see a field."""
    return "--" + name.replace("_", "-")


def did_you_mean(key: Any) -> str:
    """`` (did you mean 'lr'?)`` for a near-miss of a TrainConfig field, else ``''``."""
    if not isinstance(key, str) or len(key) > 64:  # difflib is quadratic in the key's length
        return ""
    close = difflib.get_close_matches(key, field_names(), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(data: dict[str, Any], source: str) -> None:
    """Reject keys that are not TrainConfig fields, naming the first one."""
    known = set(field_names())
    for key in data:
        if key not in known:
            raise ConfigError(f"unknown config key {shown(key)} in {source}{did_you_mean(key)}: remove it; "
                              "known keys are TrainConfig fields")


def check_batch(config: TrainConfig, train_images: int, processes: int = 1) -> None:
    """Refuse a batch the processes and accumulation steps cannot split evenly, or larger than the
    training set; needs the data size and the launch, so it is checked at start, not in __post_init__."""
    micro = config.gradient_accumulation_steps
    if config.batch_size % (processes * micro):
        raise ConfigError(f"--batch-size {config.batch_size} is not divisible by {processes} processes x "
                          f"{micro} accumulation steps: pick a multiple of {processes * micro}")
    if train_images < config.batch_size:
        raise ConfigError(f"--batch-size {config.batch_size} is larger than the {train_images} training images: "
                          "use a smaller batch")


def check_model_fits(config: TrainConfig, params: int, free_bytes: int, where: str, training: bool = True) -> None:
    """Refuse a model whose weights (and, to train it, gradients and optimizer state: 16 bytes a
    parameter) do not fit in ``free_bytes``, before anything is allocated."""
    need = params * (16 if training else 4)
    if need > free_bytes:
        fix = "use a smaller --width" if config.preset == "fast" else "free some memory"
        raise ConfigError(f"--width {config.width} makes {params:,} parameters, about {need / 2**30:,.1f} GiB "
                          f"{'to train' if training else 'of weights'}, more than the {free_bytes / 2**30:,.1f} GiB "
                          f"free on {where}: {fix}")


def read_small_file(path: Path, what: str, limit: int, fix: str, error: type[ConfigError] | None = None) -> str:
    """The text of a small file the user named, every way it can fail as one ``error``: missing,
    unreadable (a link loop, a name too long, below a file), not a regular file, over ``limit``
    bytes (refused before it is read), not UTF-8."""
    error = error or ConfigError
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):  # a folder, device or pipe is never read
            raise error(f"{what} {path} is not a regular file: {fix}")
        if info.st_size > limit:
            raise error(f"{what} {path} is {info.st_size:,} bytes, too large for a {what} (at most {limit:,}): {fix}")
        return path.read_bytes().decode()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist: {fix}") from None
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not a text file (not UTF-8): {fix}") from None
    except OSError as e:
        raise error(f"cannot read {what} {shown(str(path))} ({e.strerror or e}): {fix}") from None


def read_json_file(path: Path, what: str, fix: str) -> Any:
    """A small JSON file (``read_small_file``), or one line saying why it is not JSON."""
    text = read_small_file(path, what, MAX_CONFIG_BYTES, fix)
    try:
        return json.loads(text)
    except RecursionError:
        raise ConfigError(f"{what} {path} is nested too deeply to be a config: fix or regenerate it") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid JSON ({e}): fix or regenerate it") from None


@functools.cache
def field_kinds() -> dict[str, tuple[type, bool]]:
    """Each field's type and whether it may be None (``int | None`` -> ``(int, True)``); computed once:
    a search space is checked by building thousands of configs."""
    kinds = {}
    for name, kind in typing.get_type_hints(TrainConfig).items():
        optional = _is_optional(kind)
        if optional:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        kinds[name] = (typing.get_origin(kind) or kind, optional)  # list[dict[...]] -> list
    return kinds


def _is_optional(kind: Any) -> bool:
    origin = typing.get_origin(kind)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)
