"""How long a partitioned machine takes to notice, on two machines with their own addresses
(network namespaces, mnist_addition/testing/machines.py; needs root). Prints one table; nothing is
asserted (tests/test_machines.py proves the behaviour, this script measures it).

    sudo python benchmarks/partition.py --data-dir ../shared/mnist

For --dist-timeout 10 and 30: machine 1's link cut (a partition: it keeps running) against its
training process stopped with SIGSTOP (a frozen machine), once a checkpoint is written. Measured
from the fault to each machine's launcher exit; then the same command on both machines with the
link restored: seconds until it resumed, the step it resumed from and the steps it redid.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mnist_addition.testing.machines import Machines, unavailable

TRAIN = ["--smoke", "--epochs", "3", "--checkpoint-every", "20", "--log-every", "1", "--cpu", "--mixed-precision", "no",
         "--no-download", "--auto-resume"]


def launch(m: Machines, rank: int, run: Path, data: str, port: int, timeout: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
               "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", m.addresses[0],
               "--main_process_port", str(port), "--rdzv_backend", "static", "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "mnist_addition", "train", *TRAIN, "--data-dir", data,
               "--output-dir", str(run), "--dist-timeout", str(timeout)]
    with log.open("a") as handle:
        return m.popen(rank, command, stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def worker(launcher: int) -> int:
    """The training process below a launcher (``ip netns exec`` execs the launcher itself)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher and b"mnist_addition" in cmd:
            return int(entry)
    raise RuntimeError(f"no training process below {launcher}")


def newest_step(run: Path) -> int:
    found = sorted((run / "checkpoints").glob("step-*")) if (run / "checkpoints").is_dir() else []
    return int(found[-1].name[5:]) if found else 0


def wait_until(condition, processes: list[subprocess.Popen], limit: float = 600) -> None:
    end = time.monotonic() + limit
    while not condition():
        if time.monotonic() > end or any(p.poll() not in (None, 0) for p in processes):
            raise RuntimeError("the run ended or stalled before the fault could be set")
        time.sleep(0.02)


def one_fault(m: Machines, tmp: Path, data: str, timeout: int, how: str, port: int) -> dict[str, float]:
    run, logs = tmp / f"{how}-{timeout}" / "run", [tmp / f"{how}-{timeout}-m{r}.log" for r in (0, 1)]
    run.parent.mkdir()
    machines = [launch(m, r, run, data, port, timeout, logs[r]) for r in (0, 1)]
    wait_until(lambda: newest_step(run) >= 20, machines)
    saved = newest_step(run)
    if how == "cut":
        fault = m.cut(1)
    else:
        os.kill(worker(machines[1].pid), signal.SIGSTOP)
        fault = time.monotonic()
    stopped = [0.0, 0.0]
    watched = machines if how == "cut" else machines[:1]  # a frozen machine never stops by itself
    while any(p.poll() is None for p in watched) and time.monotonic() - fault < 3 * timeout + 120:
        for r, p in enumerate(machines):
            if p.poll() is not None and not stopped[r]:
                stopped[r] = time.monotonic() - fault
        time.sleep(0.02)
    for r, p in enumerate(watched):
        stopped[r] = stopped[r] or time.monotonic() - fault
    m.restore(1)
    for r, p in enumerate(machines):  # what is left of the run on both machines (a frozen process too)
        m.kill(r)
        p.wait()
    again = time.monotonic()
    machines = [launch(m, r, run, data, port + 1, timeout, logs[r]) for r in (0, 1)]
    wait_until(lambda: "resuming from step-" in logs[0].read_text(), machines)
    resumed = time.monotonic() - again
    step = int(re.findall(r"resuming from step-(\d+)", logs[0].read_text())[-1])
    codes = [p.wait() for p in machines]
    if codes != [0, 0]:
        raise RuntimeError(f"the relaunch failed: {codes}")
    return {"machine 0 stops": stopped[0], "machine 1 stops": stopped[1], "resumes after": resumed,
            "from step": step, "newest step at the fault": saved}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    reason = unavailable()
    if reason:
        sys.exit(f"partition.py: {reason}")
    rows = []
    with tempfile.TemporaryDirectory() as folder, Machines(2) as m:
        for n, (timeout, how) in enumerate([(10, "cut"), (10, "sigstop"), (30, "cut"), (30, "sigstop")]):
            rows.append((timeout, how, one_fault(m, Path(folder), args.data_dir, timeout, how, 29700 + 2 * n)))
    print("| --dist-timeout | fault | machine 0 stops (s) | machine 1 stops (s) | relaunch resumes (s) | "
          "resumed from step | newest checkpoint at the fault |\n|---:|---|---:|---:|---:|---:|---:|")
    for timeout, how, r in rows:
        fault = "link cut" if how == "cut" else "SIGSTOP"
        frozen = f"{r['machine 1 stops']:.1f}" if how == "cut" else "frozen"
        print(f"| {timeout} | {fault} | {r['machine 0 stops']:.1f} | {frozen} | "
              f"{r['resumes after']:.1f} | {r['from step']} | {r['newest step at the fault']} |")


if __name__ == "__main__":
    main()
