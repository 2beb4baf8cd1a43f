"""Choose the one-GPU recipe on validation only (not a test): a few large-batch candidates, each
trained with the real ``fit`` for a few seeds, ranked by the lower of validation digit and sum
accuracy. The test set is not scored. The maths does not depend on the device (bf16 autocast on
both an AMX CPU and a GPU), so the choice can be made on any machine; the speed is the GPU's.

    python benchmarks/choose_gpu_recipe.py --data-dir ../shared/mnist --seeds 2
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from mnist_addition.config import TrainConfig
from mnist_addition.data import load_mnist, make_splits
from mnist_addition.train import fit

CANDIDATES: dict[str, dict[str, Any]] = {
    "b512 lr0.012 3ep": dict(batch_size=512, lr=0.012, epochs=3),
    "b1024 lr0.016 4ep": dict(batch_size=1024, lr=0.016, epochs=4),
    "b1024 lr0.024 4ep": dict(batch_size=1024, lr=0.024, epochs=4),
    "b1024 lr0.016 6ep": dict(batch_size=1024, lr=0.016, epochs=6),
    "b2048 lr0.024 6ep": dict(batch_size=2048, lr=0.024, epochs=6),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    data = make_splits(load_mnist(args.data_dir, download=False))
    rows = []
    for name, overrides in CANDIDATES.items():
        vals = []
        for seed in range(args.seeds):
            final = fit(TrainConfig.from_preset("fast", **overrides, seed=seed), data=data, progress=False,
                        score_test=False)
            vals.append(min(final["val"]["digit_acc"], final["val"]["sum_acc"]))
            print(f"{name} seed {seed}: val digit {100 * final['val']['digit_acc']:.2f} "
                  f"sum {100 * final['val']['sum_acc']:.2f} ({final['train_seconds']:.0f} s here)", flush=True)
        rows.append((statistics.fmean(vals), name))
    for val, name in sorted(rows, reverse=True):
        print(f"{100 * val:.2f}%  {name}")


if __name__ == "__main__":
    main()
