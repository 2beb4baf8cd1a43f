"""Command line: ``mnist-addition train|evaluate|report|export|predict|tune``: parses, calls the
package, prints. Train flags are generated from TrainConfig. Only the standard library and the
config module are imported up front (torch loads inside ``main``), so every failure, Ctrl-C
while torch loads included, is one line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from .config import INT_RANGES, SMOKE_OVERRIDES, ConfigError, TrainConfig, flag
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, Interrupted, UserError, shown


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (no usage dump) and exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; defaults are suppressed so we know what the user typed."""
    hints = typing.get_type_hints(TrainConfig)
    groups = {False: parser.add_argument_group("training (hyperparameters)"),
              True: parser.add_argument_group("infrastructure (do not change the maths)")}
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        if typing.get_origin(kind) is not None:  # Optional[X] -> X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        meta = f.metadata
        if kind is bool:  # a switch: --cpu, --deterministic, --compile
            groups[meta["infra"]].add_argument(flag(f.name), dest=f.name, action="store_true",
                                               default=argparse.SUPPRESS, help=meta["help"])
            continue
        default = "preset's" if f.name not in ("preset", "seed", "data_dir", "output_dir") else f.default
        groups[meta["infra"]].add_argument(
            flag(f.name), dest=f.name, type=kind, choices=meta["choices"], default=argparse.SUPPRESS,
            metavar=None if meta["choices"] else f.name.split("_")[-1].upper(),
            help=f"{meta['help']} (default: {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mnist-addition", description="Digit and digit+number classification on MNIST.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a model and write a run folder",
                           description="Train a model. Precedence: preset < --config file < --smoke < flags.")
    train.add_argument("--config", type=Path, help="JSON file of TrainConfig fields (e.g. a run's config.json)")
    train.add_argument("--smoke", action="store_true",
                       help=f"single-CPU smoke test: {', '.join(f'{k}={v}' for k, v in SMOKE_OVERRIDES.items())}")
    train.add_argument("--overwrite", action="store_true", help="replace the run already in --output-dir")
    train.add_argument("--no-download", action="store_true", help="never try to download MNIST")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR",
                       help="continue an interrupted run from its newest valid checkpoint")
    add_config_flags(train)

    ev = sub.add_parser("evaluate", help="re-evaluate a saved model on the test set")
    ev.add_argument("run_dir", type=Path, help="a run folder written by 'mnist-addition train'")
    ev.add_argument("--data-dir", help="folder with MNIST/raw/*-ubyte (default: the run's, then $MNIST_ADDITION_DATA)")
    ev.add_argument("--all-numbers", action="store_true", help="pair every test image with all ten numbers (100,000 pairs)")
    ev.add_argument("--json", action="store_true", help="print metrics as JSON")
    ev.add_argument("--no-download", action="store_true", help="never try to download MNIST")
    rp = sub.add_parser("report", help="(re)draw a run's pictures: confusion matrices, samples, mistakes")
    rp.add_argument("run_dir", type=Path, help="a run folder written by 'mnist-addition train'")
    rp.add_argument("--data-dir", help="folder with MNIST/raw/*-ubyte (default: the run's, then $MNIST_ADDITION_DATA)")
    rp.add_argument("--no-download", action="store_true", help="never try to download MNIST")

    ex = sub.add_parser("export", help="export a run's model (ONNX: image and number batches in, both logits out)")
    ex.add_argument("run_dir", type=Path, help="a run folder written by 'mnist-addition train'")
    ex.add_argument("--format", default="onnx", help="export format (only 'onnx')")
    ex.add_argument("--output", type=Path, help="output file (default: RUN_DIR/model.onnx)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    pr = sub.add_parser("predict", help="digit and sum for an image (or a folder of images) and a number",
                        description="Predict the digit in IMAGE and IMAGE's digit + NUMBER. IMAGE may be any size, "
                                    "grayscale or colour, dark ink on white or light ink on black.")
    pr.add_argument("run_dir", type=Path, help="a run folder written by 'mnist-addition train'")
    pr.add_argument("image", type=Path, help="an image file (PNG/JPEG/BMP...), or a folder of them")
    pr.add_argument("number", nargs="?", type=_number, help="the number to add, 0..9 (single image)")
    pr.add_argument("--numbers", type=_number_list, help="for a folder: one number per image in sorted file order, e.g. 3,7,1")
    pr.add_argument("--random-numbers", action="store_true", help="for a folder: a seeded random number per image")
    pr.add_argument("--seed", type=_seed, default=0, help="seed for --random-numbers (default: 0)")
    pr.add_argument("--csv", type=Path, help="also write file,number,digit,sum,digit_prob,sum_prob rows here")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")
    pr.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_tune_parser(sub)
    return parser


def add_tune_parser(sub: Any) -> None:
    """``mnist-addition tune``; defaults are suppressed so --resume can tell what was typed."""
    from .sweep import METRICS, SCHEDULERS, SEARCHERS, SweepOptions

    d = SweepOptions()
    tu = sub.add_parser(
        "tune", help="hyperparameter sweep with Ray Tune (ASHA early stopping; selects on validation)",
        description="Sample training configs from a search space, train each with the same fit() as 'train', "
                    "report validation accuracy every epoch, stop bad trials early, and write the best config "
                    "for 'mnist-addition train --config'. Needs the [tune] extra.", argument_default=argparse.SUPPRESS)
    tu.add_argument("--space", help="YAML search space, or the name of a shipped one (tune/): default, smoke, wide "
                                    "(default: default; smoke with --smoke)")
    tu.add_argument("--num-samples", type=int, help=f"trials to sample (default: {d.num_samples}; 4 with --smoke)")
    tu.add_argument("--data-dir", help="folder with MNIST/raw/*-ubyte, the same path on every node "
                                       "(default: $MNIST_ADDITION_DATA or ~/.cache/mnist-addition)")
    tu.add_argument("--smoke", action="store_true", help="tiny trials: 10,000 training images, 2 epochs")
    tu.add_argument("--no-download", action="store_true", help="never try to download MNIST")
    where = tu.add_argument_group("where it runs")
    where.add_argument("--address", help="an existing Ray cluster, e.g. 127.0.0.1:6379 (default: $RAY_ADDRESS, "
                                         "else start a local Ray on this machine's CPUs)")
    where.add_argument("--storage-path", help=f"folder or s3://... URI for sweeps (default: {d.storage_path})")
    where.add_argument("--name", help="sweep name: a folder in --storage-path (default: tune-<timestamp>)")
    where.add_argument("--resume", action="store_true", help="continue the interrupted sweep --name; finished "
                                                              "trials are kept, unfinished ones resume from checkpoints")
    where.add_argument("--cpus-per-trial", type=float, help=f"CPUs per trial (default: {d.cpus_per_trial:g})")
    where.add_argument("--gpus-per-trial", type=float, help="GPUs per trial: a fraction shares a GPU (0.25: 4 trials "
                                                            "per GPU); above 1 the trial is data-parallel with one Ray "
                                                            "Train worker per GPU (default: the cluster's GPUs shared "
                                                            "evenly by as many trials as the CPUs fit; 0 without GPUs)")
    where.add_argument("--workers-per-trial", type=int, help="data-parallel workers per trial (Ray Train + "
                                                             "Accelerate); CPUs and GPUs are split between them")
    where.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as resources allow)")
    where.add_argument("--max-failures", type=int, help=f"retries of a crashed trial, each from its last checkpoint "
                                                        f"(default: {d.max_failures})")
    where.add_argument("--dashboard", action="store_true", help="start the Ray dashboard on 127.0.0.1 (local Ray only)")
    how = tu.add_argument_group("how it searches")
    how.add_argument("--scheduler", choices=SCHEDULERS, help=f"asha stops bad trials early (default: {d.scheduler})")
    how.add_argument("--grace-epochs", type=int, help="asha: epochs every trial trains before it may be stopped; "
                                                      f"its rungs are at 1, 2, 4... times this (default: {d.grace_epochs})")
    how.add_argument("--search", choices=SEARCHERS, help=f"random sampling or Optuna's TPE (default: {d.search})")
    how.add_argument("--metric", choices=list(METRICS), help=f"validation metric to select on (default: {d.metric})")
    how.add_argument("--mode", choices=("max", "min"), help="max for accuracies, min for val_loss (default: follows --metric)")
    how.add_argument("--seed", type=int, help="seed of the sampler (every trial trains with the space's seed, "
                                              "default 0, so configs are compared on equal terms)")
    how.add_argument("--top", type=int, help=f"rows in the results table (default: {d.top})")


def _number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 9 or str(value) != text.strip():
        raise argparse.ArgumentTypeError(f"NUMBER must be a whole number from 0 to 9, got {text!r}")
    return value


def _seed(text: str) -> int:
    low, high, _ = INT_RANGES["seed"]
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"--seed must be a whole number in {low}..{high}, got {shown(text)}")
    return value


def _number_list(text: str) -> list[int]:
    return [_number(part.strip()) for part in text.split(",")]


# Flags that may change on --resume: where things are and how often to log or save, not the maths.
RESUMABLE = frozenset({"data_dir", "log_every", "eval_batch_size", "checkpoint_every", "keep_checkpoints"})


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """preset defaults < --config file < --smoke < explicit flags; or the run's own config on --resume."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    explicit = {k: v for k, v in vars(args).items() if k in names}
    if args.resume:
        for option in ("config", "smoke", "overwrite"):
            if getattr(args, option):
                raise ConfigError(f"--{option} cannot be combined with --resume: a resumed run keeps its own config")
        if "output_dir" in explicit:
            raise ConfigError(f"--output-dir cannot be combined with --resume: the run continues in its own folder "
                              f"{args.resume}; drop --output-dir (copy the folder first to continue it elsewhere)")
        changed = sorted(set(explicit) - RESUMABLE)
        if changed:
            raise ConfigError(f"{flag(changed[0])} cannot change when resuming (the run's config.json fixes it): "
                              "drop the flag, or start a new run with --config RUN/config.json")
        from .runfolder import check_resumable
        from .runs import read_run_config

        check_resumable(args.resume)
        values = read_run_config(args.resume)[0].to_dict()
        values.update({k: v for k, v in explicit.items() if k in RESUMABLE}, output_dir=str(args.resume))
        return TrainConfig.from_dict(values, source=str(args.resume / "config.json"))
    values: dict[str, Any] = TrainConfig.load(args.config).to_dict() if args.config else {}
    if args.smoke:
        values.update(SMOKE_OVERRIDES)
    values.update(explicit)
    return TrainConfig.from_dict(values, source="the command line")


def cmd_train(args: argparse.Namespace) -> int:
    from accelerate.utils import broadcast_object_list
    from rich.console import Console

    from .data import load_mnist, make_splits
    from .runfolder import check_run_dir
    from .runs import default_run_dir
    from .backends import set_deterministic_env
    from .train import fit, process_state  # Accelerate is imported here, not for --help

    config = config_from_args(args)
    if config.deterministic:
        set_deterministic_env()  # before CUDA starts
    state = process_state(config.cpu)
    # Every process must write to the same folder: the main process picks the default name.
    run_dir = Path(broadcast_object_list([str(config.output_dir or default_run_dir())])[0])
    if not args.resume:
        check_run_dir(run_dir, overwrite=args.overwrite)  # early, before the data is read; fit checks again
    data = make_splits(load_mnist(config.data_dir, download=not args.no_download), config.val_size)
    config = config.replace(output_dir=str(run_dir))
    console = Console(stderr=True, quiet=not state.is_main_process, soft_wrap=True)  # one line per message

    def printer(row: dict[str, Any]) -> None:
        console.print(f"epoch {row['epoch']}/{config.epochs}  train loss {row['train_loss']:.4f}  "
                      f"val digit {100 * row['val_digit_acc']:.2f}%  sum {100 * row['val_sum_acc']:.2f}%  "
                      f"{row['images_per_s']:,.0f} img/s")

    console.print(f"[bold]{'resuming' if args.resume else 'training'}[/] preset={config.preset} width={config.width} "
                  f"epochs={config.epochs} batch={config.batch_size} lr={config.lr:g} seed={config.seed} "
                  f"processes={state.num_processes} -> {run_dir}")
    final = fit(config, report=printer, data=data, resume=bool(args.resume), overwrite=args.overwrite,
                warn=lambda line: console.print(line, markup=False, highlight=False))
    _print_results(Console(quiet=not state.is_main_process), final, run_dir)
    return 0


def _print_results(console: Any, final: dict[str, Any], run_dir: Path | None) -> None:
    from rich.table import Table

    table = Table(title="Results" + (f" - {run_dir}" if run_dir else ""))
    table.add_column("split")
    for col in ("digit acc", "sum acc", "both acc", "sum right, digit wrong", "loss", "images"):
        table.add_column(col, justify="right")
    for split in ("val", "test"):
        m = final.get(split)
        if m:
            table.add_row(split, f"{100 * m['digit_acc']:.2f}%", f"{100 * m['sum_acc']:.2f}%",
                          f"{100 * m['both_acc']:.2f}%", str(m["sum_right_digit_wrong"]), f"{m['loss']:.4f}",
                          f"{m['n']:,}")
    console.print(table)
    if "params" in final:
        console.print(f"{final['params']:,} parameters, {final['train_seconds']:.1f} s of training "
                      f"({final['images_per_s']:,.0f} img/s, {final['setup']['mixed_precision']} precision)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .backends import numerics
    from .evaluate import evaluate_all_numbers, evaluate_counts
    from .metrics import summarize
    from .runs import load_run

    config, model, setup = load_run(args.run_dir)
    device = _training_device(setup)
    model.to(device)
    test = _test_split(args, config).to(device)
    with numerics(cuda=device == "cuda", deterministic=False), _training_precision(setup, device):
        counts = (evaluate_all_numbers if args.all_numbers else evaluate_counts)(
            model, test, config.eval_batch_size, config.sum_weight)
    metrics = summarize(counts)
    if args.json:
        print(json.dumps({"test": metrics, "all_numbers": args.all_numbers}))
    else:
        pairs = "every test image x all 10 numbers" if args.all_numbers else "official test set, fixed numbers"
        _print_results(Console(), {"test": metrics}, None)
        Console().print(f"{pairs}: {metrics['n']:,} pairs")
    return 0


def _test_split(args: argparse.Namespace, config: TrainConfig) -> Any:
    """The test pairs the run was scored on: its data folder (unless --data-dir) and its
    --eval-limit (a --smoke run scored 1,000 pairs), so the figures match its metrics.json."""
    from .data import load_mnist, make_splits

    data_dir = args.data_dir if args.data_dir is not None else config.data_dir
    return make_splits(load_mnist(data_dir, download=not args.no_download), config.val_size,
                       eval_limit=config.eval_limit).test


def _training_device(setup: dict[str, Any]) -> str:
    """Where the run trained, if this machine has it: the same kernels give the same figures as
    metrics.json. A GPU run is scored on the CPU where there is no GPU."""
    import torch

    return "cuda" if str(setup.get("device", "cpu")).startswith("cuda") and torch.cuda.is_available() else "cpu"


def _training_precision(setup: dict[str, Any], device: str):
    """Autocast as in training (bf16 or not), so re-scored figures match the run's metrics.json."""
    import torch

    return torch.autocast(device, dtype=torch.bfloat16, enabled=setup.get("mixed_precision") == "bf16")


def cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .report import REPORT_FILES, write_report
    from .runs import load_run, write_failed

    config, model, setup = load_run(args.run_dir)
    test = _test_split(args, config)
    try:
        with _training_precision(setup, "cpu"):
            summary = write_report(model, test, args.run_dir, config.eval_batch_size)
    except OSError as e:
        raise write_failed(e, "") from None  # the pictures belong in the run folder: nothing else to choose
    Console().print(f"wrote {', '.join(REPORT_FILES)} to {args.run_dir} "
                    f"({summary['mistakes']} of {summary['n']} test pairs wrong)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import contextlib
    import io

    from .export import FORMATS, export_onnx
    from .runs import RunError, check_output_file, run_files

    if args.format not in FORMATS:
        raise RunError(f"unknown export format {shown(args.format)}: use --format {' or '.join(FORMATS)}")
    output = check_output_file(args.output or args.run_dir / f"model.{args.format}", args.overwrite, "--output",
                               protected=run_files(args.run_dir))
    with contextlib.redirect_stdout(io.StringIO()):  # torch's exporter narrates every stage
        export_onnx(args.run_dir, output)
    print(f"wrote {output}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from .predict import ImageError, image_files, load_image, load_model, predict, write_csv
    from .runs import check_output_file, replace_file, run_files

    try:
        folder = args.image.is_dir()
    except OSError as e:  # a name too long for the filesystem, a link loop
        raise ImageError(f"{shown(str(args.image))} cannot be opened ({e.strerror or e}): check the path") from None
    if folder:
        if args.number is not None:
            raise ImageError(f"{args.image} is a folder: give --numbers or --random-numbers instead of NUMBER")
        if (args.numbers is None) == (not args.random_numbers):
            raise ImageError(f"{args.image} is a folder: pass exactly one of --numbers 3,7,... or --random-numbers")
        files = image_files(args.image)
        if not files:
            raise ImageError(f"{args.image} holds no image files ({', '.join(s.lstrip('.') for s in ('.png', '.jpg', '.bmp'))}, ...)")
        if args.numbers is not None and len(args.numbers) != len(files):
            raise ImageError(f"--numbers has {len(args.numbers)} values for {len(files)} images in {args.image}: "
                             "give one per image, in sorted file order")
        numbers = args.numbers or torch.randint(0, 10, (len(files),),
                                                generator=torch.Generator().manual_seed(args.seed)).tolist()
    else:
        if args.numbers is not None or args.random_numbers:
            raise ImageError("--numbers and --random-numbers are for a folder of images: for one image give NUMBER")
        if args.number is None:
            raise ImageError("missing NUMBER: give a number from 0 to 9 after the image")
        files, numbers = [args.image], [args.number]
    if args.csv is not None:
        check_output_file(args.csv, args.overwrite, "--csv", protected=(*run_files(args.run_dir), *files))
    images = torch.stack([load_image(f) for f in files])  # every file is checked before any output
    model = load_model(args.run_dir)
    rows = [{"file": str(f), **r} for f, r in zip(files, predict(model, images, numbers))]
    if args.csv is not None:
        replace_file(args.csv, lambda tmp: write_csv(rows, tmp), "--csv")
    if args.json:
        print(json.dumps(rows if folder else rows[0]))
        return 0
    table = Table(title=f"Predictions - {args.run_dir}")
    for col in ("file", "number", "digit", "sum", "top digits", "top sums"):
        table.add_column(col, justify="left" if col.startswith(("file", "top")) else "right",
                         no_wrap=col.startswith("top"))
    for r in rows:
        top = lambda probs: " ".join(f"{i}:{100 * p:.0f}%" for p, i in  # noqa: E731
                                     sorted(((p, i) for i, p in enumerate(probs)), reverse=True)[:3])
        table.add_row(Path(r["file"]).name, str(r["number"]), str(r["digit"]), str(r["sum"]),
                      top(r["digit_probs"]), top(r["sum_probs"]))
    Console().print(table)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .sweep import SweepError, SweepOptions, find_space, run_sweep

    given = {k: v for k, v in vars(args).items() if k != "command"}
    if "no_download" in given:
        given["download"] = not given.pop("no_download")
    if given.get("resume"):
        changed = [k for k in SweepOptions.SWEEP_DEFINING if k in given]
        if changed:
            raise SweepError(f"{flag(changed[0])} cannot change when resuming (the sweep's sweep.json fixes it): "
                             "drop the flag, or start a new sweep under another --name")
    else:
        given["space"] = str(find_space(given.get("space") or ("smoke" if given.get("smoke") else "default")))
        if given.get("smoke") and "num_samples" not in given:
            given["num_samples"] = 4
    # a log file gets the whole results table, not 80 columns of it
    console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
    summary = run_sweep(SweepOptions(**given), console)
    return EXIT_INTERRUPTED if summary.get("unfinished") else 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # the tune flags load the sweep package (and torch)
    except KeyboardInterrupt:
        print("mnist-addition: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        return {"train": cmd_train, "evaluate": cmd_evaluate, "report": cmd_report,
                "export": cmd_export, "predict": cmd_predict, "tune": cmd_tune}[args.command](args)
    except Interrupted as e:  # Ctrl-C in training: what is left, and the command that goes on
        print(f"mnist-addition {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except UserError as e:  # every expected failure: one line, its exit code
        print(f"mnist-addition {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # anywhere else (loading torch, evaluating, predicting): nothing was written
        print(f"mnist-addition {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
