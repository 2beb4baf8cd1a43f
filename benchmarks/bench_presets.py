"""Side-by-side benchmark of the presets on real MNIST, in one process (not a test).

For each configuration and seed it trains with the real ``fit`` and scores the official 10k test
set after every epoch (measurement only: nothing is selected on it), then prints one table:
parameters, training images/s and the ratio to the seed network, the data pipeline's share of a
training step, time to reach the seed's published 99.27% (digit AND sum), and final test accuracy,
as mean +- std over seeds.

    python benchmarks/bench_presets.py --data-dir ../shared/mnist --seeds 3

The seed network's full 25-epoch recipe takes over an hour here, so by default it is only timed
over ``--seed-steps`` steps (throughput); ``--seed-full`` runs the whole recipe.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from mnist_addition.config import TrainConfig
from mnist_addition.data import load_mnist, make_splits, train_batches
from mnist_addition.train import fit

TARGET = 0.9927  # the seed network's published test accuracy (digit 99.27%, sum 99.24%)

CONFIGS: dict[str, dict[str, Any]] = {
    "fast (default)": dict(preset="fast"),
    "fast (default, fp32)": dict(preset="fast", mixed_precision="no"),
    "fast (best)": dict(preset="fast", epochs=16, shift=2, lr=0.005, label_smoothing=0.1),
}


def data_share(split, config: TrainConfig, steps: int, step_seconds: float) -> float:
    """Seconds spent producing batches (permute, gather, shift) per step / seconds per training step."""
    start = time.perf_counter()
    for i, _ in enumerate(train_batches(split, config.batch_size, config.seed, 1, config.shift)):
        if i + 1 == steps:
            break
    return (time.perf_counter() - start) / steps / step_seconds


def mean_std(values: list[float], fmt: str, scale: float = 1.0) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(statistics.stdev(values) * scale, fmt)}"


def run_config(name: str, overrides: dict[str, Any], seeds: list[int], data) -> dict[str, Any]:
    rows = []
    for seed in seeds:
        config = TrainConfig.from_preset(**{**overrides, "seed": seed})
        final = fit(config, data=data, progress=False, test_every_epoch=True)
        reached = [r["train_seconds"] for r in final["history"]
                   if r["test_digit_acc"] >= TARGET and r["test_sum_acc"] >= TARGET]
        step_seconds = config.batch_size / final["images_per_s"]
        rows.append({"seed": seed, "params": final["params"], "images_per_s": final["images_per_s"],
                     "time_to_target": reached[0] if reached else None, "train_seconds": final["train_seconds"],
                     "test_digit_acc": final["test"]["digit_acc"], "test_sum_acc": final["test"]["sum_acc"],
                     "data_share": data_share(data.train, config, 50, step_seconds),
                     "precision": final["setup"]["mixed_precision"], "epochs": config.epochs})
        print(f"  {name} seed {seed}: test digit {100 * rows[-1]['test_digit_acc']:.2f}% "
              f"sum {100 * rows[-1]['test_sum_acc']:.2f}% in {final['train_seconds']:.1f}s "
              f"({final['images_per_s']:,.0f} img/s)", flush=True)
    return {"name": name, "overrides": overrides, "runs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: $MNIST_ADDITION_DATA)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration")
    parser.add_argument("--only", nargs="*", default=None, help="names of CONFIGS to run (default: all)")
    parser.add_argument("--seed-steps", type=int, default=100, help="steps to time the seed network over")
    parser.add_argument("--seed-full", action="store_true", help="run the seed's full 25-epoch recipe instead")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()

    torch.set_num_threads(torch.get_num_threads())  # as the CLI runs: all cores
    data = make_splits(load_mnist(args.data_dir, download=False))
    seeds = list(range(args.seeds))
    results = []

    # Baseline first, in the same process: the seed network's throughput (or its full recipe).
    seed_overrides: dict[str, Any] = dict(preset="seed")
    if not args.seed_full:
        seed_overrides.update(epochs=1, train_limit=args.seed_steps * 128, eval_limit=1000)  # throughput only
    print(f"seed network ({'full recipe' if args.seed_full else f'{args.seed_steps} steps'}) ...", flush=True)
    results.append(run_config("seed" + ("" if args.seed_full else f" ({args.seed_steps} steps)"), seed_overrides,
                              seeds if args.seed_full else seeds[:1], data))
    for name, overrides in CONFIGS.items():
        if args.only is None or name in args.only:
            print(f"{name} ...", flush=True)
            results.append(run_config(name, overrides, seeds, data))

    from rich.console import Console
    from rich.table import Table

    base_ips = statistics.fmean(r["images_per_s"] for r in results[0]["runs"])
    table = Table(title=f"Presets on real MNIST, this machine ({torch.get_num_threads()} threads); "
                        f"test set = official 10k; mean ± std over seeds")
    for col in ("config", "params", "precision", "train img/s", "x seed", "data share", "epochs",
                f"time to {100 * TARGET:.2f}% (s)", "train time (s)", "test digit %", "test sum %", "seeds"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for res in results:
        runs = res["runs"]
        ips = [r["images_per_s"] for r in runs]
        reached = [r["time_to_target"] for r in runs if r["time_to_target"] is not None]
        partial = "seed" in res["name"] and not args.seed_full
        table.add_row(
            res["name"], f"{runs[0]['params']:,}", runs[0]["precision"], mean_std(ips, ",.0f"),
            f"{statistics.fmean(ips) / base_ips:.1f}x", mean_std([r["data_share"] for r in runs], ".1%"),
            str(runs[0]["epochs"]),
            "not run" if partial else (mean_std(reached, ".1f") + ("" if len(reached) == len(runs)
                                                                    else f" ({len(reached)}/{len(runs)} seeds)")),
            mean_std([r["train_seconds"] for r in runs], ".1f"),
            "-" if partial else mean_std([r["test_digit_acc"] for r in runs], ".2f", 100),
            "-" if partial else mean_std([r["test_sum_acc"] for r in runs], ".2f", 100), str(len(runs)))
    Console(width=200).print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
