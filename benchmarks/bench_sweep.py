"""The sweep benchmark (not a test): an ASHA sweep on real MNIST, Ray's overhead, and the best
config retrained on the official test set.

    python benchmarks/bench_sweep.py --data-dir ../shared/mnist --num-samples 8 --seeds 3
    python benchmarks/bench_sweep.py --data-dir ../shared/mnist --space wide --search optuna --num-samples 16 --seeds 3
    python benchmarks/bench_sweep.py --data-dir ../shared/mnist --space speed --search optuna --scheduler fifo \
        --metric val_both_acc --metric train_seconds --pick "val_both_acc>=0.993" --num-samples 20 --seeds 3
    python benchmarks/bench_sweep.py --data-dir ../shared/mnist --space pbt --scheduler pbt --num-samples 6 --seeds 3
    python benchmarks/bench_sweep.py --data-dir ../shared/mnist --space wide --search optuna --num-samples 16 \
        --cpus-per-trial 2 --cpus-per-trial 1 --seeds 0          # the same sweep by CPUs per trial
    python benchmarks/bench_sweep.py --data-dir ../shared/mnist --space cpu_default --search optuna --scheduler fifo \
        --num-samples 16 --seeds 3 --baseline                   # how the CPU default is chosen
    python benchmarks/bench_sweep.py --data-dir ../shared/mnist --space gpu_recipe --scheduler fifo \
        --num-samples 10 --seeds 3 --baseline launch/gpu_recipe.json   # how the GPU recipe is chosen

1. Runs ``mnist-addition tune`` over ``--space`` (default ``tune/default.yaml``) with a local Ray,
   ASHA and ``--search`` (random or Optuna's TPE).
2. Prints where the sweep's wall time went: training (sum of the trials' own ``train_seconds``,
   the baseline), the rest of each trial (start-up, data loading, validation, checkpoints), and
   Ray (scheduling, actor start-up, result handling: wall time minus the trials' time; exact only
   when trials run one at a time). With ``--cpus-per-trial`` given more than once, the same sweep
   runs once per value and a last table compares their trials and epochs per hour.
3. Retrains ``best_config.json`` as ``mnist-addition train --config`` would, for ``--seeds`` seeds
   (seed 0 is the config the sweep selected), and scores the official 10k test set, which the
   sweep never saw; ``--baseline [CONFIG]`` retrains the ``fast`` default (or CONFIG) for the same
   seeds beside it; ``--refit`` also retrains it with ``--val-size 0`` (all 60,000 training
   images: the final refit of the recipe the sweep chose on validation). ``--parallel K`` runs K of
   these trainings at once, each in its own process with its share of the CPU's cores (two 1-thread
   trainings do ~1.7x the work of one 2-thread training on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mnist_addition.core.config import TrainConfig
from mnist_addition.core.data import PairedMnist, load_mnist, make_splits
from mnist_addition.rundir.names import BEST_FILE
from mnist_addition.sweep import SweepOptions, find_space, run_sweep
from mnist_addition.sweep.options import trial_threads
from mnist_addition.training.loop import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--space", default="default")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--search", choices=("random", "optuna"), default="random")
    parser.add_argument("--grace-epochs", type=int, default=1, help="ASHA's grace period")
    parser.add_argument("--scheduler", choices=("asha", "fifo", "pbt"), default="asha")
    parser.add_argument("--perturbation-epochs", type=int, default=2, help="pbt: epochs between perturbations")
    parser.add_argument("--metric", action="append", help="repeat for a multi-objective sweep (default: val_both_acc)")
    parser.add_argument("--pick", help="the rule that picks best_config.json, e.g. val_both_acc>=0.993")
    parser.add_argument("--seed", type=int, default=0, help="the sweep's sampler seed")
    parser.add_argument("--cpus-per-trial", type=float, action="append",
                        help="repeat to run the same sweep once per value and compare them (default: tune's)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for retraining each best config (0: none)")
    parser.add_argument("--baseline", nargs="?", const="fast", metavar="CONFIG",
                        help="also retrain a baseline for the same seeds, side by side: the `fast` default, "
                             "or a config file (e.g. launch/gpu_recipe.json)")
    parser.add_argument("--refit", action="store_true",
                        help="also retrain best_config.json on all 60,000 training images (--val-size 0)")
    parser.add_argument("--parallel", type=int, default=1, metavar="K",
                        help="retrain K configs/seeds at once, each in its own process with cores/K threads")
    parser.add_argument("--storage-path", default="runs/bench-sweeps")
    parser.add_argument("--json", type=Path, help="also write all figures here")
    args = parser.parse_args()
    console = Console(width=150)

    runs = []
    for cpus in args.cpus_per_trial or [SweepOptions.cpus_per_trial]:
        summary, command_seconds = sweep(args, cpus, console)
        time_table(summary, command_seconds, console)
        retrained = retrain(Path(summary["uri"]), args, console) if args.seeds else None
        runs.append({"cpus_per_trial": cpus, "sweep": summary, "sweep_command_seconds": command_seconds,
                     "retrained": retrained})
    if len(runs) > 1:
        compare_table(runs, console)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


def sweep(args: argparse.Namespace, cpus: float, console: Console) -> tuple[dict, float]:
    """One sweep with these CPUs per trial; its summary and the whole command's seconds."""
    name = time.strftime("bench-%Y%m%d-%H%M%S") + f"-{cpus:g}cpu"
    options = SweepOptions(space=str(find_space(args.space)), num_samples=args.num_samples, data_dir=args.data_dir,
                           storage_path=args.storage_path, name=name, cpus_per_trial=cpus,
                           search=args.search, seed=args.seed, grace_epochs=args.grace_epochs,
                           scheduler=args.scheduler, metric=tuple(args.metric or ("val_both_acc",)), pick=args.pick,
                           perturbation_epochs=args.perturbation_epochs)
    started = time.perf_counter()
    summary = run_sweep(options, console)
    return summary, time.perf_counter() - started


def time_table(summary: dict, command_seconds: float, console: Console) -> None:
    """Where the time went. Trials' rows are shares of the trials' summed time, the rest shares of
    the sweep's wall time. Ray's own time is the wall time less the trials' only when trials ran
    one at a time; when they overlapped, the table says how many ran at once on average instead."""
    wall, in_trials, training = summary["wall_seconds"], summary["sum_trial_seconds"], summary["sum_train_seconds"]
    n = summary["trials"]
    table = Table(title=f"Where a {n}-trial sweep's time went ({summary['epochs_run']} epochs run)")
    for col in ("", "seconds", "per trial", "share"):
        table.add_column(col, justify="left" if not col else "right")
    for label, seconds in (("training (baseline: the trials' own train_seconds)", training),
                           ("rest of the trials: start-up, data, validation, checkpoints, uploads", in_trials - training)):
        table.add_row(label, f"{seconds:.1f}", f"{seconds / n:.1f}", f"{100 * seconds / in_trials:.1f}% of trials")
    if in_trials <= wall:
        table.add_row("Ray: scheduling, actor start-up, results", f"{wall - in_trials:.1f}",
                      f"{(wall - in_trials) / n:.1f}", f"{100 * (wall - in_trials) / wall:.1f}% of wall")
    else:  # overlapping trials: wall - in_trials would be negative, not Ray's time
        table.add_row(f"Ray: not separable, {in_trials / wall:.2f} trials ran at once on average", "-", "-", "-")
    for label, seconds in (("sweep wall time (Tuner.fit)", wall),
                           ("whole command (data check, Ray start and stop, result files)", command_seconds)):
        table.add_row(label, f"{seconds:.1f}", f"{seconds / n:.1f}", f"{100 * seconds / wall:.1f}% of wall")
    console.print(table)


def compare_table(runs: list[dict], console: Console) -> None:
    """The same sweep with different CPUs per trial, side by side; ratios against the first run."""
    table = Table(title="The same sweep, by CPUs per trial (ratios against the first row)")
    for col in ("CPUs (threads) per trial", "at a time", "epochs run", "wall s", "trials/hour", "epochs/hour",
                "vs first", "training s per epoch", "best val both %"):
        table.add_column(col, justify="right")
    first = None
    for run in runs:
        s = run["sweep"]
        per_hour = 3600 * s["epochs_run"] / s["wall_seconds"]
        first = first or per_hour
        table.add_row(f"{run['cpus_per_trial']:g} ({trial_threads(run['cpus_per_trial'])})",
                      str(max(1, int((os.cpu_count() or 1) // run["cpus_per_trial"]))), str(s["epochs_run"]),
                      f"{s['wall_seconds']:.0f}", f"{3600 * s['trials'] / s['wall_seconds']:.1f}", f"{per_hour:.0f}",
                      f"{per_hour / first:.2f}x", f"{s['sum_train_seconds'] / s['epochs_run']:.1f}",
                      f"{100 * s['best']['val_both_acc']:.2f}" if s.get("best") else "-")
    console.print(table)


def retrain(sweep_dir: Path, args: argparse.Namespace, console: Console) -> dict:
    """best_config.json retrained for --seeds seeds, scored on the official test set (and with
    --baseline, the `fast` default or the given config for the same seeds; with --refit, also on
    all 60,000 images), one after another in this process or --parallel K at a time."""
    best = TrainConfig.load(sweep_dir / BEST_FILE)
    searched = {k: getattr(best, k) for k in json.loads((sweep_dir / "sweep.json").read_text())["space"]["search"]}
    label = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in searched.items()) \
        + ("" if "epochs" in searched else f" epochs={best.epochs}")
    configs, baseline = {label: best}, f"{args.baseline} (baseline)"
    if args.baseline:
        fast = args.baseline == "fast"
        configs[baseline] = TrainConfig.from_preset("fast") if fast else TrainConfig.load(args.baseline)
    refit = f"{label} (refit, --val-size 0)"
    if args.refit:
        configs[refit] = best.replace(val_size=0)
    retrain_started = time.perf_counter()
    results = {name: [] for name in configs}
    jobs = [(name, config.replace(seed=seed, data_dir=args.data_dir))
            for seed in range(args.seeds) for name, config in configs.items()]
    for name, row in _run_all(jobs, args.parallel):
        results[name].append(row)
        val = "-" if row["val_both"] is None else f"{100 * row['val_both']:.2f}%"
        console.print(f"{name}, seed {row['seed']}: val both {val}  test digit "
                      f"{100 * row['digit']:.2f}%  sum {100 * row['sum']:.2f}%  ({row['seconds']:.0f} s)")
    for rows in results.values():
        rows.sort(key=lambda r: r["seed"])

    table = Table(title=f"Best config retrained ({args.seeds} seeds; official 10k test set, never used by the sweep)")
    for col in ("config", "val both %", "test digit %", "test sum %", "test both %", "train s"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for name, rows in results.items():
        table.add_row(name, *(_mean_std([r[key] * 100 for r in rows if r[key] is not None])
                              for key in ("val_both", "digit", "sum", "both")),
                      _mean_std([r["seconds"] for r in rows]))
    console.print(table)
    if best.hparam_schedule:  # PBT: the schedule retrained is the winner's, replayed from scratch
        console.print(f"schedule replayed: {best.lr:.3g} lr, {best.sum_weight:.3g} sum weight, {best.weight_decay:.3g} "
                      f"weight decay from epoch 1, then {json.dumps(best.hparam_schedule)}")
    retrain_seconds = time.perf_counter() - retrain_started
    console.print(f"retraining {retrain_seconds / 60:.1f} min on this machine")
    return {"seconds": retrain_seconds, "rows": results[label], "baseline": results.get(baseline),
            "refit": results.get(refit)}


def _run_all(jobs: list[tuple[str, TrainConfig]], parallel: int):
    """(name, row) for each job as it finishes: one after another here, or ``parallel`` at a time in
    processes of their own, each with its share of the cores (``--parallel``)."""
    if parallel <= 1:
        yield from ((name, _train(config)) for name, config in jobs)
        return
    threads = max(1, len(os.sched_getaffinity(0)) // parallel)
    with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_use_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(_train, config): (name, config.seed) for name, config in jobs}
        for future in as_completed(futures):
            try:
                yield futures[future][0], future.result()
            except BrokenProcessPool:  # killed (out of memory, a signal): its own error died with it
                name, seed = futures[future]
                raise SystemExit(f"bench_sweep: the process retraining {name!r} seed {seed} died without a word (out "
                                 "of memory, or killed): rerun with --parallel 1 to see its error") from None


def _use_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


_SPLITS: dict[tuple[str, int], PairedMnist] = {}  # MNIST read once per process and split size


def _train(config: TrainConfig) -> dict:
    """One retraining, scored on the official test set: the row of the results table."""
    key = (config.data_dir, config.val_size)
    if key not in _SPLITS:
        _SPLITS[key] = make_splits(load_mnist(config.data_dir, download=False), config.val_size)
    final = fit(config, data=_SPLITS[key], progress=False)
    return {"seed": config.seed, "digit": final["test"]["digit_acc"], "sum": final["test"]["sum_acc"],
            "both": final["test"]["both_acc"], "val_both": (final["val"] or {}).get("both_acc"),
            "seconds": final["train_seconds"]}


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.fmean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


if __name__ == "__main__":
    main()
