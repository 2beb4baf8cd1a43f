"""How long a Ray cluster of machines with their own addresses takes to notice a partitioned trial
node, and to resume a sweep whose head machine was lost (network namespaces,
mnist_addition/testing/machines.py; needs root). Prints one table; nothing is asserted
(tests/test_sweep_machines.py proves the behaviour, this script measures it).

    sudo python benchmarks/sweep_partition.py

A head (no trials) and two 1-CPU workers started with `ray start`, token authentication on, Ray's
health checks at their defaults unless --fast-health-checks; `tune --address` on the head. One
trial of 4 epochs (synthetic data, steps slowed to 0.3 s so that an epoch lasts about 5 s): its
node cut right after epoch 1. Then a 2-trial sweep whose head machine is killed after epoch 2 and
`tune --resume` run on a worker machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from mnist_addition.core.synthetic import write_mnist
from mnist_addition.testing.machines import Machines, unavailable
from mnist_addition.testing.slowed import slowed_env

PY, RAY, PORT = sys.executable, str(Path(sys.executable).parent / "ray"), 6390
FAST = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def cluster(m: Machines, folder: Path, env: dict[str, str], head_env: dict[str, str]) -> str:
    address = f"{m.addresses[0]}:{PORT}"
    m.run(0, [RAY, "start", "--head", "--node-ip-address", m.addresses[0], "--port", str(PORT), "--num-cpus", "0",
              "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(folder / "ray0")],
          env={**env, **head_env}, check=True)
    for i in (1, 2):
        m.run(i, [RAY, "start", "--address", address, "--node-ip-address", m.addresses[i], "--num-cpus", "1",
                  "--disable-usage-stats", "--temp-dir", str(folder / f"ray{i}")], env=env, check=True)
    return address


def tune(folder: Path, data: Path, name: str, seeds: list[int], *extra: str) -> list[str]:
    space = folder / f"{name}.yaml"
    space.write_text(yaml.safe_dump({"fixed": {"epochs": 4, "width": 8, "batch_size": 32, "val_size": 100,
                                               "mixed_precision": "no", "lr": 0.01, "sum_weight": 0.5},
                                     "search": {"seed": {"choice": seeds}}}))
    return [PY, "-m", "mnist_addition", "tune", "--space", str(space), "--data-dir", str(data), "--no-download",
            "--storage-path", str(folder / "sweeps"), "--name", name, "--cpus-per-trial", "1", "--scheduler", "fifo",
            "--num-samples", str(len(seeds)), *extra]


def reported(sweep: Path, epoch: int) -> list[str]:
    found = []
    for result in sweep.glob("trial-*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        found += [r["node_ip"] for r in rows if r.get("epoch") == epoch and r.get("node_ip")][:1]
    return found


def partition(m: Machines, folder: Path, data: Path, env: dict[str, str], address: str) -> dict[str, float]:
    log = folder / "cut.log"
    with log.open("w") as out:
        driver = m.popen(0, tune(folder, data, "cut", [0], "--address", address), env=env, stdout=out,
                         stderr=subprocess.STDOUT)
        while not reported(folder / "sweeps" / "cut", 1):
            time.sleep(0.05)
        node = m.addresses.index(reported(folder / "sweeps" / "cut", 1)[0])
        cut, seen = m.cut(node), {}
        while driver.poll() is None:
            text = log.read_text()
            for key, pattern in (("node declared dead", "has been marked dead"), ("trial restored", "Restored on")):
                if key not in seen and pattern in text:
                    seen[key] = time.monotonic() - cut
            time.sleep(0.05)
        seen["sweep finished"] = time.monotonic() - cut
        m.restore(node)
    resumed = re.findall(r"resuming from step-\d+: epoch (\d+)", log.read_text())
    seen["epoch resumed from"] = float(resumed[-1]) - 1 if resumed else float("nan")
    return seen


def head_lost(m: Machines, folder: Path, data: Path, env: dict[str, str], address: str) -> dict[str, float]:
    sweep = folder / "sweeps" / "lost"
    driver = m.popen(0, tune(folder, data, "lost", [0, 1], "--address", address), env=env,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while len(reported(sweep, 2)) < 2 and driver.poll() is None:
        time.sleep(0.05)
    m.kill(0)
    for i in (1, 2):  # the workers' Ray lost its head: stopped (`ray stop` would stop every Ray of this host)
        m.kill(i)
    start = time.monotonic()
    done = m.run(1, [PY, "-m", "mnist_addition", "tune", "--resume", "--name", "lost", "--storage-path",
                     str(folder / "sweeps"), "--data-dir", str(data), "--no-download"], env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return {"resume to the end": time.monotonic() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast-health-checks", action="store_true", help="the tests' settings: " + " ".join(
        f"{k}={v}" for k, v in FAST.items()))
    args = parser.parse_args()
    if unavailable():
        sys.exit(f"sweep_partition.py: {unavailable()}")
    folder = Path(tempfile.mkdtemp(prefix="mna-", dir="/tmp"))  # short: Ray's socket paths
    token = folder / "token"
    token.write_text(secrets.token_hex(32))
    env = slowed_env(folder, 0.3, dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token)))
    data = write_mnist(folder / "mnist")
    with Machines(3) as m:
        address = cluster(m, folder, env, FAST if args.fast_health_checks else {})
        cut = partition(m, folder, data, env, address)
        lost = head_lost(m, folder, data, env, address)
    checks = "the tests' (about 4 s)" if args.fast_health_checks else "Ray's defaults"
    print(f"health checks: {checks}\n\n| event | seconds after the fault |\n|---|---:|")
    for key in ("node declared dead", "trial restored", "sweep finished"):
        print(f"| trial's node cut after epoch 1: {key} | {cut.get(key, float('nan')):.1f} |")
    print(f"| (the restored attempt resumed from epoch {cut['epoch resumed from']:.0f}) | |")
    print(f"| head machine killed after epoch 2 of 2 trials: `tune --resume` on a worker machine, to the end | "
          f"{lost['resume to the end']:.1f} |")


if __name__ == "__main__":
    main()
