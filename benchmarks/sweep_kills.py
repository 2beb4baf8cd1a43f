"""Stop ``mnist-addition tune`` at moments spread over a sweep's life with SIGKILL, SIGTERM and Ctrl-C
(SIGINT), then ``tune --resume``: one row per case, how the stopped driver ended, whether the
resume finished every trial, and how many epochs were trained twice (the work lost). A
measurement, not a test (the tests cover the moments that once failed: tests/test_sweep.py).

Every case is a new sweep (FIFO, the trials one after another) on the tests' synthetic MNIST, run by
a fresh driver process against one 2-CPU Ray cluster on 127.0.0.1 that this script starts. A moment
is seen from outside, as a scheduler would act: a file appearing in the sweep folder, or a line on
the driver's stderr.

    python benchmarks/sweep_kills.py [--trials 3] [--epochs 6] [--only SIGTERM]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from mnist_addition.core.synthetic import write_mnist

ROOT = Path(__file__).resolve().parents[1]

SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
EXPECTED = {"SIGKILL": -9, "SIGTERM": 75, "SIGINT": 130}
# a trained epoch's line (an epoch reported again from a checkpoint says "(trained by ...)" or "(trained before ...)")
TRAINED = re.compile(r"^(\S+) epoch (\d+)/(\d+) .*img/s  \(\d")


def moments(sweep: Path) -> dict[str, Callable[[str], bool]]:
    """When to stop the driver, given its stderr so far: the first true."""
    def exists(pattern: str) -> Callable[[str], bool]:
        return lambda _: bool(list(sweep.glob(pattern)))
    return {
        "sweep.json written, Ray not started": exists("sweep.json"),
        "Ray's first save": exists("experiment_state-*.json"),
        "first epoch reported": lambda err: " epoch 1/" in err,
        "first trial finished": lambda err: " finished: " in err,
        "mid second trial": lambda err: len(re.findall(r" epoch 2/", err)) >= 2,
        "results being written": exists("trials.csv"),
    }


def run_case(work: Path, data: Path, address: str, name: str, signame: str, moment: str, trials: int,
             epochs: int) -> dict[str, str]:
    """One sweep stopped at ``moment`` by ``signame``, then resumed; what happened, as a row."""
    space = work / f"{name}.yaml"
    space.write_text(f"fixed: {{epochs: {epochs}, width: 8, batch_size: 32, val_size: 100, mixed_precision: 'no'}}\n"
                     "search:\n  lr: {loguniform: [0.005, 0.02]}\n")
    common = ["--storage-path", str(work), "--name", name, "--address", address]
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", OMP_NUM_THREADS="1")
    driver = subprocess.Popen([sys.executable, "-m", "mnist_addition", "tune", "--space", str(space), "--data-dir",
                               str(data), "--num-samples", str(trials), "--scheduler", "fifo", "--max-concurrent", "1",
                               *common], stderr=subprocess.PIPE, text=True, env=env)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(driver.stderr), daemon=True)
    reader.start()
    due = moments(work / name)[moment]
    while driver.poll() is None and not due("".join(err)):
        time.sleep(0.01)
    stopped_at = "after it ended" if driver.poll() is not None else "at the moment"
    if driver.poll() is None:
        driver.send_signal(SIGNALS[signame])
    code = driver.wait(timeout=600)
    reader.join(timeout=30)
    said = "".join(err).strip().splitlines()[-1:] or [""]
    clean = signame == "SIGKILL" or (code == EXPECTED[signame] and "Traceback" not in "".join(err) and
                                     said[0].startswith("mnist-addition tune: interrupted by"))
    resumed = subprocess.run([sys.executable, "-m", "mnist_addition", "tune", "--resume", *common],
                             capture_output=True, text=True, env=env, timeout=900)
    results = work / name / "trials.csv"
    rows = list(csv.DictReader(results.read_text().splitlines())) if results.exists() else []
    trained = [TRAINED.match(line.strip()).group(1, 2) for line in [*err, *resumed.stderr.splitlines()]
               if TRAINED.match(line.strip())]  # (trial, epoch) of each epoch trained, in both runs
    return {"signal": signame, "moment": moment, "stopped": stopped_at, "exit": str(code),
            "one clean line": "yes" if clean else "NO", "resume exit": str(resumed.returncode),
            "path": "rebuilt" if "resuming without Ray's saved state" in resumed.stderr else
            "Ray's state" if "resuming " in resumed.stderr else "-",
            "finished": f"{sum(r['status'] == 'finished' for r in rows)}/{trials}",
            "epochs trained twice": str(len(trained) - len(set(trained))),
            "note": "" if resumed.returncode == 0 and all(r["status"] == "finished" for r in rows) and len(rows) == trials
            else " / ".join(resumed.stderr.strip().splitlines()[-2:])[:300]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--only", default="", help="run only the cases whose signal or moment holds this text")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it, to look at the sweeps")
    args = parser.parse_args()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray.cluster_utils import Cluster

    if args.keep:
        args.keep.mkdir(parents=True)
    with tempfile.TemporaryDirectory() if not args.keep else contextlib.nullcontext(str(args.keep.resolve())) as tmp:
        os.environ["XDG_CONFIG_HOME"] = str(Path(tmp) / "config")  # this run's own signing key
        data = write_mnist(Path(tmp) / "mnist")
        cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=2, node_ip_address="127.0.0.1",
                                                                   include_dashboard=False,
                                                                   object_store_memory=100 * 1024**2))
        rows, start = [], time.perf_counter()
        try:
            for signame in SIGNALS:
                for i, moment in enumerate(moments(Path(tmp))):
                    if args.only and args.only not in signame and args.only not in moment:
                        continue
                    rows.append(run_case(Path(tmp), data, cluster.address, f"{signame.lower()}-{i}", signame, moment,
                                         args.trials, args.epochs))
                    print(" | ".join(rows[-1].values()), flush=True)
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()
    columns = list(rows[0]) if rows else []
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row.values()) + " |")
    good = sum(r["resume exit"] == "0" and r["finished"] == f"{args.trials}/{args.trials}" and r["one clean line"] == "yes"
               for r in rows)
    print(f"\n{good} of {len(rows)} stopped sweeps resumed to the end with a clean stop "
          f"({time.perf_counter() - start:.0f} s; {args.trials} trials x {args.epochs} epochs each)")


if __name__ == "__main__":
    main()
