"""Configs side by side over K seeds: ``mnist-addition train --seeds K`` of each, one after another in
this run, and one table of their test accuracies (mean ± std and the worst seed) and training time
against the first (the baseline: the default config unless told). Not a test: the figures behind
the README's rows.

    python benchmarks/train_seeds.py --data-dir ../shared/mnist --seeds 5 --config launch/cpu_fastest.json
    # the default is run first as the baseline; --no-baseline leaves it out
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("test_digit_acc", "test_sum_acc")


def train_seeds(config: str | None, seeds: int, data_dir: str, out: Path) -> dict:
    """One ``train --seeds`` of ``config`` (None: the default); its seeds.json."""
    command = [sys.executable, "-m", "mnist_addition", "train", "--seeds", str(seeds), "--data-dir", data_dir,
               "--no-download", "--output-dir", str(out), *(["--config", config] if config else [])]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"train --seeds of {config or 'the default'} failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads((out / "seeds.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--config", action="append", default=[], help="a config file (repeatable)")
    parser.add_argument("--no-baseline", action="store_true", help="leave the default config out")
    args = parser.parse_args()
    configs = ([] if args.no_baseline else [None]) + args.config
    print(f"{args.seeds} seeds each, one config after another; {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}")
    header = f"{'config':<32} {'test digit':>16} {'test sum':>16} {'worst digit':>11} {'worst sum':>9} " \
             f"{'training':>14} {'ratio':>6}"
    print(header)
    base = None
    with tempfile.TemporaryDirectory() as folder:
        for i, config in enumerate(configs):
            result = train_seeds(config, args.seeds, args.data_dir, Path(folder) / f"config-{i}")
            mean, std, worst = result["mean"], result["std"], result["worst"]
            base = base or mean["train_seconds"]
            cells = [f"{100 * mean[k]:.2f} ± {100 * std[k]:.2f}%" for k in KEYS]
            print(f"{config or 'default':<32} {cells[0]:>16} {cells[1]:>16} {100 * worst[KEYS[0]]:>10.2f}% "
                  f"{100 * worst[KEYS[1]]:>8.2f}% {mean['train_seconds']:>6.2f} ± {std['train_seconds']:.2f} s "
                  f"{mean['train_seconds'] / base:>6.2f}")


if __name__ == "__main__":
    main()
