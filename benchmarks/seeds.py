"""How to train K seeds of one config fastest on this machine: the measurement behind ``--seeds``
(``training/seeds.py`` trains them one after another, in lockstep, in one process). Not a test.

Three ways, each against one seed trained alone in this same process (the ratio column):

1. **lockstep** (what ``train --seeds K`` and ``tune --seeds K`` do): ``train_seeds``, K runs in
   one process, one computing at a time with all of the process's threads;
2. **processes**: K ``mnist-addition train --seed s`` processes at once, the CPUs split between
   them (each imports torch and reads MNIST itself: counted, as a user would pay it);
3. **vmap** (training steps only, no run around them): K copies of the model stacked with
   ``torch.func.stack_module_state`` and one ``vmap``-ed forward, loss and backward per batch,
   against K separate steps of the same models on the same batches. BatchNorm cannot update
   running statistics under vmap, so both sides use batch statistics only
   (``replace_all_batch_norm_modules_``).

    python benchmarks/seeds.py --data-dir ../shared/mnist [--seeds 3] [--config launch/cpu_fastest.json]
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mnist_addition.core.config import TrainConfig
from mnist_addition.core.data import load_mnist, make_splits
from mnist_addition.core.metrics import loss_fn
from mnist_addition.core.model import build_model
from mnist_addition.training.run import train
from mnist_addition.training.seeds import seed_configs, train_seeds

ROOT = Path(__file__).resolve().parents[1]


def lockstep(config: TrainConfig, k: int, data, out: Path) -> float:
    start = time.perf_counter()
    train_seeds(seed_configs(config, k, str(out / "lockstep")), None, starts=["new"] * k, data=data, progress=False,
                test="never")
    return time.perf_counter() - start


def processes(config_file: Path, k: int, data_dir: str, out: Path) -> float:
    threads = max(1, (os.cpu_count() or 1) // k)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "mnist_addition", "train", "--config", str(config_file),
                               "--seed", str(seed), "--data-dir", data_dir, "--no-download", "--cpu",
                               "--output-dir", str(out / f"process-{seed}")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for seed in range(k)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a seed's process failed: {err.strip().splitlines()[-1]}")
    return time.perf_counter() - start


def vmap_steps(config: TrainConfig, k: int, data, steps: int) -> tuple[float, float]:
    """Seconds for ``steps`` training steps of K models: K separate steps each, and one vmap-ed step."""
    from torch.func import functional_call, grad, replace_all_batch_norm_modules_, stack_module_state, vmap

    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        model = build_model(**config.net)
        replace_all_batch_norm_modules_(model)
        models.append(model.train())
    images = data.train.images[:config.batch_size].contiguous(memory_format=torch.channels_last)
    numbers = torch.randint(0, 10, (config.batch_size,), generator=torch.Generator().manual_seed(0))
    digits = data.train.digits[:config.batch_size]
    sums = digits + numbers

    def loss_of(model, params, buffers):
        d, s = functional_call(model, (params, buffers), (images, numbers))
        return loss_fn(d, s, digits, sums, config.sum_weight, config.label_smoothing)

    separate = [copy.deepcopy(m) for m in models]
    optimizers = [torch.optim.SGD(m.parameters(), lr=1e-3) for m in separate]
    start = time.perf_counter()
    for _ in range(steps):
        for model, optimizer in zip(separate, optimizers):
            optimizer.zero_grad(set_to_none=True)
            d, s = model(images, numbers)
            loss_fn(d, s, digits, sums, config.sum_weight, config.label_smoothing).backward()
            optimizer.step()
    one_by_one = time.perf_counter() - start

    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    step = vmap(grad(lambda p, b: loss_of(base, p, b)), in_dims=(0, 0))
    start = time.perf_counter()
    for _ in range(steps):
        grads = step(params, buffers)
        with torch.no_grad():
            for name, g in grads.items():
                params[name].sub_(1e-3 * g)
    return one_by_one, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--config", type=Path, default=ROOT / "launch" / "cpu_fastest.json")
    parser.add_argument("--steps", type=int, default=30, help="training steps of the vmap comparison")
    args = parser.parse_args()
    config = TrainConfig.load(args.config).replace(data_dir=args.data_dir, cpu=True)
    data = make_splits(load_mnist(args.data_dir, download=False), config.val_size)
    out = Path(tempfile.mkdtemp(prefix="bench-seeds-"))
    k = args.seeds
    print(f"{k} seeds of {args.config.name} ({config.epochs} epochs, batch {config.batch_size}) on "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    start = time.perf_counter()
    train(config.replace(output_dir=str(out / "alone")), data=data, progress=False, test="never")
    alone = time.perf_counter() - start
    rows = [("one seed alone (baseline)", alone, 1)]
    rows.append((f"{k} seeds in lockstep, one process (--seeds)", lockstep(config, k, data, out), k))
    rows.append((f"{k} processes at once, {max(1, (os.cpu_count() or 1) // k)} thread(s) each",
                 processes(args.config, k, args.data_dir, out), k))
    print(f"\n{'how':<52}{'wall s':>9}{'s per seed':>12}{'vs alone':>10}")
    for name, seconds, seeds in rows:
        print(f"{name:<52}{seconds:>9.1f}{seconds / seeds:>12.2f}{seconds / seeds / alone:>10.2f}")
    separate, vmapped = vmap_steps(config, k, data, args.steps)
    print(f"\n{args.steps} training steps of {k} models (batch {config.batch_size}, BatchNorm on batch statistics):")
    print(f"{'K separate steps':<52}{separate:>9.2f}")
    print(f"{'one vmap-ed step of K stacked models':<52}{vmapped:>9.2f}{'':>12}{vmapped / separate:>10.2f}")


if __name__ == "__main__":
    main()
