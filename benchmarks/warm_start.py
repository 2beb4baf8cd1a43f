"""Does ``tune --warm-start`` reach a good config in fewer trials? Not a test: a measurement.

On a tiny space (1 epoch on 3,000 training images; lr over two decades, where most of the range
trains badly), one earlier sweep of 12 random trials is the prior. Then, for each of a few seeds,
a cold Optuna sweep and one warm-started from the prior, each of 8 trials, and for each the first
trial (in the order Optuna suggested them) whose validation accuracy reaches the target: the
third-best trial of the earlier sweep. Every sweep is a real ``mnist-addition tune`` process.

    python benchmarks/warm_start.py --data-dir ../shared/mnist [--seeds 3] [--trials 8]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"fixed": {"epochs": 1, "train_limit": 3000, "val_size": 1000, "width": 8, "batch_size": 64},
         "search": {"lr": {"loguniform": [0.0003, 0.3]}, "sum_weight": {"uniform": [0.05, 0.95]}}}


def sweep(storage: Path, name: str, data_dir: str, trials: int, seed: int, *extra: str) -> list[dict[str, str]]:
    """Run one sweep; its trials in the order they were suggested."""
    command = [sys.executable, "-m", "mnist_addition", "tune", "--space", str(storage / "space.yaml"),
               "--data-dir", data_dir, "--no-download", "--storage-path", str(storage), "--name", name,
               "--num-samples", str(trials), "--scheduler", "fifo", "--seed", str(seed), *extra]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{name} failed: {done.stderr.strip().splitlines()[-1]}")
    with (storage / name / "trials.csv").open() as f:
        return sorted(csv.DictReader(f), key=lambda t: t["trial_id"])


def first_reaching(trials: list[dict[str, str]], target: float) -> int | None:
    return next((i + 1 for i, t in enumerate(trials) if t["val_both_acc"] and float(t["val_both_acc"]) >= target),
                None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--prior-trials", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        storage = Path(folder)
        (storage / "space.yaml").write_text(yaml.safe_dump(SPACE))
        began = time.perf_counter()
        old = sweep(storage, "prior", args.data_dir, args.prior_trials, 100)
        scores = sorted((float(t["val_both_acc"]) for t in old if t["val_both_acc"]), reverse=True)
        target = scores[min(2, len(scores) - 1)]
        print(f"prior: {len(old)} random trials, best val both {scores[0]:.4f}; target: {target:.4f} "
              "(its third best)")
        print(f"{'seed':>4}  {'cold: trials to target':>22}  {'warm: trials to target':>22}  {'cold best':>9}  "
              f"{'warm best':>9}")
        totals = {"cold": [], "warm": []}
        for seed in range(args.seeds):
            cold = sweep(storage, f"cold-{seed}", args.data_dir, args.trials, seed, "--search", "optuna")
            warm = sweep(storage, f"warm-{seed}", args.data_dir, args.trials, seed, "--search", "optuna",
                         "--warm-start", str(storage / "prior"))
            row = []
            for kind, trials in (("cold", cold), ("warm", warm)):
                reached = first_reaching(trials, target)
                totals[kind].append(reached or args.trials + 1)
                row.append(str(reached) if reached else f"not in {args.trials}")
            best = [max(float(t["val_both_acc"]) for t in trials if t["val_both_acc"]) for trials in (cold, warm)]
            print(f"{seed:>4}  {row[0]:>22}  {row[1]:>22}  {best[0]:>9.4f}  {best[1]:>9.4f}")
        mean = {k: sum(v) / len(v) for k, v in totals.items()}
        print(f"mean trials to target (a miss counted as {args.trials + 1}): cold {mean['cold']:.1f}, "
              f"warm {mean['warm']:.1f}; {time.perf_counter() - began:.0f} s in all")


if __name__ == "__main__":
    main()
