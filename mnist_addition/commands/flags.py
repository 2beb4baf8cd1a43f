"""The command line's flags: one parser for ``mnist-addition``, every flag of ``train`` from a
TrainConfig field and every flag of ``tune`` from a SweepOptions field. Standard library, the config
and the sweep's options only: neither torch nor Ray loads before a command runs.
A bad flag is one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from ..core.config import (
    INT_RANGES,
    MAX_SEEDS,
    TTA_VIEWS,
    TrainConfig,
    field_kinds,
    flag,
    preset_values,
    smoke_overrides,
)
from ..core.errors import EXIT_USAGE, shown
from ..sweep.options import SweepOptions, shipped_spaces
from .catalog import NUMERIC_DESCENDING, SORT_KEYS

RUN_DIR_HELP = "a run folder written by 'mnist-addition train'"


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (no usage dump) and exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; defaults are suppressed so we know what the user typed."""
    groups = {False: parser.add_argument_group("training (hyperparameters)"),
              True: parser.add_argument_group("infrastructure (do not change the maths)")}
    for f in dataclasses.fields(TrainConfig):
        kind, meta = field_kinds()[f.name][0], f.metadata
        group = groups[meta["infra"]]
        if kind is list:  # a list (hparam_schedule) is set in a --config file
            continue
        if kind is bool:  # a switch: --cpu, --deterministic, --compile
            group.add_argument(flag(f.name), dest=f.name, action="store_true", default=argparse.SUPPRESS,
                               help=meta["help"])
            continue
        default = meta["shown"] or "; ".join([str(f.default), *(f"{value} with --preset {preset}" for preset, value
                                                                 in preset_values(f.name).items())])
        group.add_argument(flag(f.name), dest=f.name, type=kind, choices=meta["choices"], default=argparse.SUPPRESS,
                           metavar=_metavar(f.name, meta), help=_help(meta["help"], default))


def add_tune_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per SweepOptions field, in its help group; defaults suppressed (--resume checks what was typed)."""
    groups: dict[str, Any] = {"": parser}
    hints = typing.get_type_hints(SweepOptions)
    for f in dataclasses.fields(SweepOptions):
        meta = f.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        kind = next(a for a in (*typing.get_args(hints[f.name]), hints[f.name]) if a is not type(None))
        if meta["repeat"]:  # --metric A --metric B
            group.add_argument(flag(f.name), dest=f.name, action="append", choices=meta["choices"], help=meta["help"])
            continue
        if kind is bool:
            name = "--no-download" if f.name == "download" else flag(f.name)
            group.add_argument(name, dest=f.name, action="store_false" if f.default else "store_true", help=meta["help"])
            continue
        text = meta["help"] + (f": {', '.join(sorted(shipped_spaces()))}" if f.name == "space" else "")
        group.add_argument(flag(f.name), dest=f.name, type=kind, choices=meta["choices"], metavar=_metavar(f.name, meta),
                           help=_help(text, meta["shown"] or f.default))


def _help(text: str, default: Any) -> str:
    return f"{text} (default: {default})".replace("%", "%%")  # argparse formats help with %


def _metavar(name: str, meta: Any) -> str | None:
    return None if meta["choices"] else name.split("_")[-1].upper()  # --batch-size SIZE


def build_parser() -> argparse.ArgumentParser:
    """Every command and its flags (standard library only: ``runs`` never waits for torch)."""
    parser = _Parser(prog="mnist-addition", description="Digit and digit+number classification on MNIST.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _train_command(sub)
    ev = _run_command(sub, "evaluate", "re-evaluate a saved model on the test set (or its validation split)")
    ev.add_argument("--all-numbers", action="store_true", help="pair every test image with all ten numbers (100,000 pairs)")
    ev.add_argument("--split", choices=("test", "val"), default="test",
                    help="the official test set, or the run's validation split (choose --tta on it, not on test)")
    ev.add_argument("--json", action="store_true", help="print metrics as JSON")
    _tta_flag(ev)
    _run_command(sub, "report", "(re)draw a run's pictures: confusion matrices, samples, mistakes")

    ex = sub.add_parser("export", help="export a run's model (ONNX: image and number batches in, both logits out)")
    ex.add_argument("run_dir", type=Path, help=RUN_DIR_HELP)
    ex.add_argument("--format", default="onnx", help="export format (only 'onnx')")
    ex.add_argument("--output", type=Path, help="output file (default: RUN_DIR/model.onnx)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _tta_flag(ex)

    pr = sub.add_parser("predict", help="digit and sum for an image (or a folder of images) and a number",
                        description="Predict the digit in IMAGE and IMAGE's digit + NUMBER. IMAGE may be any size, "
                                    "grayscale or colour, dark ink on white or light ink on black.")
    pr.add_argument("run_dir", type=Path, help=RUN_DIR_HELP)
    pr.add_argument("image", type=Path, help="an image file (PNG/JPEG/BMP...), or a folder of them")
    pr.add_argument("number", nargs="?", type=_number, help="the number to add, 0..9 (single image)")
    pr.add_argument("--numbers", type=_number_list, help="for a folder: one number per image in sorted file order, e.g. 3,7,1")
    pr.add_argument("--random-numbers", action="store_true", help="for a folder: a seeded random number per image")
    pr.add_argument("--seed", type=_seed, default=0, help="seed for --random-numbers (default: 0)")
    pr.add_argument("--csv", type=Path, help="also write file,number,digit,sum,digit_prob,sum_prob rows here")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")
    pr.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _tta_flag(pr)

    _catalog_commands(sub)
    tune = sub.add_parser(
        "tune", help="hyperparameter sweep with Ray Tune (ASHA early stopping; selects on validation)",
        description="Sample training configs from a search space, train each with the same train() as 'mnist-addition train', "
                    "report validation accuracy every epoch, stop bad trials early, and write the best config "
                    "for 'mnist-addition train --config'. Needs the [tune] extra.", argument_default=argparse.SUPPRESS)
    add_tune_flags(tune)
    return parser


def _train_command(sub: Any) -> None:
    """``train``: its own switches, then one flag per TrainConfig field."""
    train = sub.add_parser("train", help="train a model and write a run folder",
                           description="Train a model. Precedence: preset < --config file < --smoke < flags.")
    train.add_argument("--config", type=Path, help="JSON file of TrainConfig fields (e.g. a run's config.json)")
    train.add_argument("--smoke", action="store_true", help="single-CPU smoke test: " + ", ".join(
        f"{k}={v}" for k, v in smoke_overrides().items()))
    train.add_argument("--overwrite", action="store_true", help="replace the run already in --output-dir")
    train.add_argument("--no-download", action="store_true", help="never try to download MNIST")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR",
                       help="continue an interrupted run from its newest valid checkpoint")
    train.add_argument("--auto-resume", action="store_true", help="with --output-dir: start the run there, or continue "
                       "it, or (finished) do nothing; one command for the first start and every restart")
    train.add_argument("--seeds", type=_whole("--seeds", 1, MAX_SEEDS), default=1, metavar="K",
                       help="train K seeds (--seed and the K-1 after it) in OUTPUT_DIR/seed-<s>, one after another, "
                            "and print their mean, spread and worst seed (seeds.json)")
    add_config_flags(train)


def _catalog_commands(sub: Any) -> None:
    """``runs`` and ``compare``: they read run and sweep folders' JSON files only."""
    rs = sub.add_parser("runs", help="one table of the runs and sweeps under folders (JSON files only: fast)",
                        description="List every run folder (config.json) and sweep (sweep.json) under FOLDERs: status "
                                    "(running, finished, or why it stopped and whether it resumes), recipe, validation "
                                    "and test accuracy, training time, date.")
    rs.add_argument("folders", nargs="*", type=Path, default=[Path("runs")], metavar="FOLDER",
                    help="folders to look in, 4 levels deep (default: runs)")
    rs.add_argument("--sort", choices=SORT_KEYS, default="date",
                    help=f"order of the rows ({', '.join(NUMERIC_DESCENDING)}: highest first; default: date)")
    rs.add_argument("--json", action="store_true", help="print the rows as JSON")
    cp = sub.add_parser("compare", help="runs side by side: the config keys that differ, final metrics, curves",
                        description="Compare two or more run folders: the config keys whose values differ, the final "
                                    "validation and test metrics, and one picture of every run's validation curves.")
    cp.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help=RUN_DIR_HELP + " (two or more)")
    cp.add_argument("--output", type=Path, default=Path("compare.png"), help="the picture (default: compare.png)")
    cp.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    cp.add_argument("--json", action="store_true", help="print the comparison as JSON")


def _run_command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A command that reads a run folder and MNIST's test set."""
    command = sub.add_parser(name, help=help)
    command.add_argument("run_dir", type=Path, help=RUN_DIR_HELP)
    command.add_argument("--data-dir", help="folder with MNIST/raw/*-ubyte (default: the run's, then $MNIST_ADDITION_DATA)")
    command.add_argument("--no-download", action="store_true", help="never try to download MNIST")
    return command


def _tta_flag(command: argparse.ArgumentParser) -> None:
    command.add_argument("--tta", type=int, choices=TTA_VIEWS, help="views of each image to average (1, 5 or 9; "
                         "a fast run only) instead of the run's own (config.json's tta); the weights are the same")


def _whole(what: str, low: int, high: int) -> Any:
    """An argparse type: a whole number in low..high, else one line naming ``what``."""
    def parse(text: str) -> int:
        value = int(text) if text.isascii() and text.strip().lstrip("-").isdigit() else low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number in {low}..{high}, got {shown(text)}")
        return value
    return parse


_number, _seed = _whole("NUMBER", 0, 9), _whole("--seed", *INT_RANGES["seed"][:2])


def _number_list(text: str) -> list[int]:
    return [_number(part.strip()) for part in text.split(",")]
