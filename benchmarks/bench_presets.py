"""Side-by-side benchmark of the presets on real MNIST, in one process (not a test).

For each configuration and seed it trains with the real ``fit`` and scores the official 10k test
set after every epoch (measurement only: nothing is selected on it), then prints one table:
device, precision, how the step ran (eager, compiled, CUDA graphs; deterministic or not),
parameters, training images/s and the ratio to the seed network, the data pipeline's share of
training time, time to reach the seed's published 99.27% (digit AND sum), and final test
accuracy, as mean +- std over seeds. It runs unchanged on a CPU or a GPU.

    python benchmarks/bench_presets.py --data-dir ../shared/mnist --seeds 3 --only "fast (default)" "fast (best)"
    python benchmarks/bench_presets.py --data-dir .gpu-data/mnist --seeds 3 --seed-full     # on a GPU: every row

The seed network's full 25-epoch recipe takes over an hour on a small CPU, so by default it is
only timed over ``--seed-steps`` steps (throughput); ``--seed-full`` runs the whole recipe.
With --compile the step is compiled before the clock starts (column "compile s"); training time
and time to target exclude it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from mnist_addition.core.backends import synchronize
from mnist_addition.core.config import TrainConfig
from mnist_addition.core.data import load_mnist, make_splits, train_batches
from mnist_addition.training.loop import fit

TARGET = 0.9927  # the seed network's published test accuracy (digit 99.27%, sum 99.24%)
RECIPE = Path(__file__).resolve().parents[1] / "launch" / "gpu_recipe.json"
CPU_FASTEST = RECIPE.with_name("cpu_fastest.json")

CONFIGS: dict[str, dict[str, Any]] = {
    "fast (default)": dict(preset="fast"),
    "fast (default, fp32)": dict(preset="fast", mixed_precision="no"),
    "fast (default, compiled)": dict(preset="fast", compile=True),
    "fast (default, deterministic)": dict(preset="fast", deterministic=True),
    "fast (best)": dict(preset="fast", epochs=16, shift=2, lr=0.005, label_smoothing=0.1),
    # set by hand (not from a sweep), before any test score: width 24, 24 epochs, rotations, scalings, shifts
    "fast (augmented, width 24)": dict(preset="fast", width=24, epochs=24, lr=0.006, shift=2, rotate=10.0, scale=0.1,
                                       label_smoothing=0.1, sum_weight=0.3),
    # picked by the `fastest` multi-objective sweep on validation (docs/results.md)
    "fastest CPU recipe": json.loads(CPU_FASTEST.read_text()),
    "gpu recipe": json.loads(RECIPE.read_text()),
    "gpu recipe (compiled)": {**json.loads(RECIPE.read_text()), "compile": True},
}


def data_share(split, config: TrainConfig, epoch_seconds: float) -> float:
    """Seconds to produce one epoch of batches (permutation, gathers, shifts, numbers, on the
    training device) / seconds of one training epoch."""
    device = split.images.device
    synchronize(device)
    start = time.perf_counter()
    for _ in train_batches(split, config.batch_size, config.seed, 1, config.shift, rotate=config.rotate,
                           scale=config.scale, elastic=config.elastic):
        pass
    synchronize(device)
    return (time.perf_counter() - start) / epoch_seconds


def mean_std(values: list[float], fmt: str, scale: float = 1.0) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(statistics.stdev(values) * scale, fmt)}"


def run_config(name: str, overrides: dict[str, Any], seeds: list[int], data, cpu: bool) -> dict[str, Any]:
    rows = []
    for seed in seeds:
        config = TrainConfig.from_preset(**{**overrides, "seed": seed, "cpu": cpu})
        final = fit(config, data=data, progress=False, test="every_epoch")
        reached = [r["train_seconds"] for r in final["history"]
                   if r["test_digit_acc"] >= TARGET and r["test_sum_acc"] >= TARGET]
        setup = final["setup"]
        train = data.limited(config.train_limit).train.to(setup["device"])
        rows.append({"seed": seed, "params": final["params"], "images_per_s": final["images_per_s"],
                     "time_to_target": reached[0] if reached else None, "train_seconds": final["train_seconds"],
                     "test_digit_acc": final["test"]["digit_acc"], "test_sum_acc": final["test"]["sum_acc"],
                     "data_share": data_share(train, config, final["train_seconds"] / config.epochs),
                     "epochs": config.epochs, "batch_size": config.batch_size,
                     **{k: setup[k] for k in ("device", "device_name", "mixed_precision", "matmul_precision",
                                              "compile", "cuda_graphs", "compile_seconds", "deterministic")}})
        print(f"  {name} seed {seed}: test digit {100 * rows[-1]['test_digit_acc']:.2f}% "
              f"sum {100 * rows[-1]['test_sum_acc']:.2f}% in {final['train_seconds']:.2f}s "
              f"({final['images_per_s']:,.0f} img/s)", flush=True)
    return {"name": name, "overrides": overrides, "runs": rows}


def step_mode(run: dict[str, Any]) -> str:
    """How the step ran: eager, compiled, or compiled into CUDA graphs; deterministic or not."""
    how = "cuda graphs" if run["cuda_graphs"] else "compiled" if run["compile"] else "eager"
    return how + (", deterministic" if run["deterministic"] else "")


def print_table(results: list[dict[str, Any]], seed_full: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    base_ips = statistics.fmean(r["images_per_s"] for r in results[0]["runs"])
    first = results[0]["runs"][0]
    table = Table(title=f"Presets on real MNIST, {first['device_name']} ({torch.get_num_threads()} CPU threads); "
                        f"test set = official 10k; mean ± std over seeds")
    for col in ("config", "params", "precision", "step", "batch", "train img/s", "x seed", "data share", "epochs",
                "compile s", f"time to {100 * TARGET:.2f}% (s)", "train time (s)", "test digit %", "test sum %",
                "seeds"):
        table.add_column(col, justify="left" if col in ("config", "step") else "right")
    for res in results:
        runs = res["runs"]
        ips = [r["images_per_s"] for r in runs]
        reached = [r["time_to_target"] for r in runs if r["time_to_target"] is not None]
        partial = "seed" in res["name"] and not seed_full
        precision = runs[0]["mixed_precision"] if runs[0]["mixed_precision"] != "no" else runs[0]["matmul_precision"]
        table.add_row(
            res["name"], f"{runs[0]['params']:,}", precision, step_mode(runs[0]), str(runs[0]["batch_size"]),
            mean_std(ips, ",.0f"), f"{statistics.fmean(ips) / base_ips:.1f}x",
            mean_std([r["data_share"] for r in runs], ".1%"), str(runs[0]["epochs"]),
            mean_std([r["compile_seconds"] for r in runs], ".1f") if runs[0]["compile"] else "-",
            "not run" if partial else (mean_std(reached, ".2f") + ("" if len(reached) == len(runs)
                                                                    else f" ({len(reached)}/{len(runs)} seeds)")),
            mean_std([r["train_seconds"] for r in runs], ".2f"),
            "-" if partial else mean_std([r["test_digit_acc"] for r in runs], ".2f", 100),
            "-" if partial else mean_std([r["test_sum_acc"] for r in runs], ".2f", 100), str(len(runs)))
    Console(width=240).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: $MNIST_ADDITION_DATA)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration")
    parser.add_argument("--only", nargs="*", default=None, help="names of CONFIGS to run (default: all)")
    parser.add_argument("--seed-steps", type=int, default=100, help="steps to time the seed network over")
    parser.add_argument("--seed-full", action="store_true", help="run the seed's full 25-epoch recipe instead")
    parser.add_argument("--seed-seeds", type=int, default=None, help="seeds for the seed network (default: --seeds "
                                                                      "with --seed-full, else 1)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU exists")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    unknown = sorted(set(args.only or ()) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown --only {unknown[0]!r}: choose from {', '.join(CONFIGS)}")

    torch.set_num_threads(torch.get_num_threads())  # as the CLI runs: all cores
    data = make_splits(load_mnist(args.data_dir, download=False))
    seeds = list(range(args.seeds))
    results = []

    # Baseline first, in the same process: the seed network's throughput (or its full recipe).
    seed_overrides: dict[str, Any] = dict(preset="seed")
    if not args.seed_full:
        seed_overrides.update(epochs=1, train_limit=args.seed_steps * 128, eval_limit=1000)  # throughput only
    print(f"seed network ({'full recipe' if args.seed_full else f'{args.seed_steps} steps'}) ...", flush=True)
    seed_seeds = list(range(args.seed_seeds or (args.seeds if args.seed_full else 1)))
    results.append(run_config("seed" + ("" if args.seed_full else f" ({args.seed_steps} steps)"), seed_overrides,
                              seed_seeds, data, args.cpu))
    for name, overrides in CONFIGS.items():
        if args.only is None or name in args.only:
            print(f"{name} ...", flush=True)
            results.append(run_config(name, overrides, seeds, data, args.cpu))
    print_table(results, args.seed_full)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
