"""The command line, ``mnist-addition train|evaluate|report|export|predict|tune|runs|compare``: it parses flags
(``flags.py``), calls the package and prints. Every rule lives in the module that owns it
(``training/run.py``, ``training/resume.py``, ``evaluate.py``, ``predict.py``, ``sweep/options.py``), so the
Python API obeys the same ones. Only the standard library, the config and the sweep's options load
up front (torch inside a command): every failure, Ctrl-C while torch loads included, is one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from ..core.config import ConfigError, TrainConfig, field_kinds
from ..core.errors import EXIT_INTERRUPTED, Interrupted, UserError, exit_with
from .flags import build_parser


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..training.resume import NEW_RUN_OPTIONS, resumed_config
    from ..training.run import start_of, train  # Accelerate is imported here, not for --help
    from .tables import epoch_line, results, start_line

    if args.resume and args.seeds > 1:
        raise ConfigError("--resume continues one run folder; K seeds continue with the same command and "
                          "--output-dir DIR --auto-resume (each seed from its own checkpoint)")
    typed = {k: v for k, v in vars(args).items() if k in field_kinds()}
    config = resumed_config(args.resume, typed, {k: getattr(args, k) for k in NEW_RUN_OPTIONS}) if args.resume \
        else TrainConfig.resolve(args.config, args.smoke, typed)
    console = Console(stderr=True, soft_wrap=True)  # one line per message; quiet but on the main process

    def started(run: Any) -> None:
        console.quiet = not run.main
        if run.mode == "finished":
            console.print(f"{run.config.output_dir} already holds this run, finished (metrics.json): nothing to do")
        else:
            console.print(start_line(run.config, run.mode == "resume", run.processes))

    if args.seeds > 1:
        return _train_seeds(args, config, console)
    outcome = train(config, lambda row: console.print(epoch_line(row, config.epochs)),
                    start=start_of(bool(args.resume), args.overwrite, args.auto_resume), download=not args.no_download,
                    warn=lambda line: console.print(line, markup=False, highlight=False), on_start=started)
    if outcome.final is not None:
        Console(quiet=not outcome.main).print(*results(outcome.final, outcome.config.output_dir), sep="\n")
    return 0


def _train_seeds(args: argparse.Namespace, config: TrainConfig, console: Any) -> int:
    """``train --seeds K``: K seeds in OUTPUT_DIR/seed-<s> (``training/seeds.py``), one line per
    epoch over the seeds, then each seed's results and their mean, spread and worst (seeds.json)."""
    from rich.console import Console

    from ..rundir.contents import default_run_dir, write_json
    from ..rundir.names import SEEDS_FILE
    from ..training.run import start_of
    from ..training.seeds import over_seeds, seed_configs, summary, train_seeds
    from .tables import epoch_line, seeds_table

    parent = str(config.output_dir or default_run_dir())
    configs = seed_configs(config, args.seeds, parent)
    console.print(f"[bold]training {args.seeds} seeds[/] {', '.join(str(c.seed) for c in configs)} of preset="
                  f"{config.preset} width={config.width} epochs={config.epochs} one after another -> {parent}/seed-*")
    start = start_of(False, args.overwrite, args.auto_resume)
    outcomes = train_seeds(configs, lambda rows: console.print(epoch_line(over_seeds(rows), config.epochs)),
                           starts=[start] * args.seeds, download=not args.no_download, progress=False,
                           warn=lambda line: console.print(line, markup=False, highlight=False))
    result = summary(outcomes)
    write_json(Path(parent) / SEEDS_FILE, result)
    Console(soft_wrap=True).print(seeds_table(result, parent))  # the results, on stdout as one run's are
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .evaluate import evaluate_run
    from .tables import results

    metrics = evaluate_run(args.run_dir, args.data_dir, args.all_numbers, download=not args.no_download, tta=args.tta,
                           split=args.split)
    if args.json:
        print(json.dumps({args.split: metrics, "all_numbers": args.all_numbers, "tta": args.tta}))
        return 0
    Console().print(*results({args.split: metrics}, None), sep="\n")
    split = "official test set" if args.split == "test" else "validation split (held out of the training file)"
    numbers = "every image x all 10 numbers" if args.all_numbers else "fixed numbers"
    Console().print(f"{split}, {numbers}: {metrics['n']:,} pairs")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..rundir.names import REPORT_FILES
    from ..rundir.pictures import redraw

    summary = redraw(args.run_dir, args.data_dir, download=not args.no_download)
    print(f"wrote {', '.join(REPORT_FILES)} to {args.run_dir} ({summary['mistakes']} of {summary['n']} test pairs wrong)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    print(f"wrote {export(args.run_dir, args.format, args.output, args.overwrite, args.tta)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .predict import inputs, predict_files
    from .tables import predictions_table

    files, numbers = inputs(args.image, args.number, args.numbers, args.random_numbers, args.seed)
    rows = predict_files(args.run_dir, files, numbers, args.csv, args.overwrite, args.tta)
    if args.json:
        print(json.dumps(rows if files != [args.image] else rows[0]))
        return 0
    Console().print(predictions_table(rows, args.run_dir))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..sweep import SweepOptions, run_sweep

    options = SweepOptions.from_flags({k: v for k, v in vars(args).items() if k != "command"})
    # a log file gets the whole results table, not 80 columns of it
    console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
    summary = run_sweep(options, console)
    return EXIT_INTERRUPTED if summary.get("unfinished") and not summary.get("time_budget_spent") else 0


def _wide_console() -> Any:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)  # a pipe or a log gets the whole table


def cmd_runs(args: argparse.Namespace) -> int:
    from .catalog import catalog
    from .tables import runs_table

    rows = catalog(args.folders, args.sort)
    if args.json:
        print(json.dumps(rows, allow_nan=False))
        return 0
    where = ", ".join(str(f) for f in args.folders)
    _wide_console().print(runs_table(rows, f"runs and sweeps under {where}: {len(rows)} (sorted by {args.sort})"))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .catalog import compare
    from .tables import compare_tables

    result = compare(args.run_dirs, args.output, args.overwrite)
    if args.json:
        print(json.dumps(result, allow_nan=False))
        return 0
    _wide_console().print(*compare_tables(result), sep="\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("mnist-addition: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        return {"train": cmd_train, "evaluate": cmd_evaluate, "report": cmd_report,
                "export": cmd_export, "predict": cmd_predict, "tune": cmd_tune, "runs": cmd_runs,
                "compare": cmd_compare}[args.command](args)
    except Interrupted as e:  # Ctrl-C in training: what is left, and the command that goes on
        print(f"mnist-addition {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except UserError as e:  # every expected failure: one line, its exit code
        print(f"mnist-addition {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # anywhere else (loading torch, evaluating, predicting): nothing was written
        print(f"mnist-addition {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> typing.NoReturn:
    """The program: ``main``, then exit with its code (``errors.exit_with``)."""
    code = main()
    exit_with(code, next((w for w in sys.argv[1:] if not w.startswith("-")), ""))


if __name__ == "__main__":
    run()
