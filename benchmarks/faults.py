"""How long each fault takes to notice and to recover from, on this machine (two launchers on
127.0.0.1 play two machines). Prints one table; nothing is asserted (tests/test_cluster_faults.py proves
the behaviour, this script measures it).

    python benchmarks/faults.py --data-dir ../shared/mnist

Rows: a frozen peer (SIGSTOP) with --dist-timeout 10 and 30; a dead peer (SIGKILL) without
restarts; SIGTERM on 1 and on 2 processes (signal to exit: finishing the step, the checkpoint,
the exit); a worker SIGKILLed under --max_restarts 1 (kill to the restarted group's first line).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--smoke", "--epochs", "3", "--checkpoint-every", "20", "--log-every", "5", "--cpu", "--mixed-precision", "no",
         "--no-download", "--auto-resume"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(run: Path, data: str, launch: list[str], extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "mnist_addition", "train", *TRAIN,
            "--data-dir", data, "--output-dir", str(run), *extra]


def two_processes(*more: str) -> list[str]:
    return ["--config_file", str(ROOT / "launch" / "cpu_2proc.yaml"), "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(free_port()), *more]


def machine(rank: int, port: int) -> list[str]:
    return ["--multi_gpu", "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--rdzv_backend", "static",
            "--mixed_precision", "no", "--dynamo_backend", "no"]


def start(command: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as handle:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))


def workers(parent: int) -> list[int]:
    """Training processes below ``parent``, by rank."""
    tree: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            tree.setdefault(int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(
                int(entry))
        except (OSError, IndexError, ValueError):
            pass
    found, todo = [], [parent]
    while todo:
        for child in tree.get(todo.pop(), []):
            todo.append(child)
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            rank = next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)
            if rank is not None and b"mnist_addition" in cmd and b"accelerate.commands" not in cmd:
                found.append((rank, child))
    return [pid for _, pid in sorted(found)]


def wait_for_checkpoint(run: Path, step: int) -> None:
    while True:
        found = sorted((run / "checkpoints").glob("step-*")) if (run / "checkpoints").is_dir() else []
        if found and int(found[-1].name[5:]) >= step:
            return
        time.sleep(0.02)


def kill_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        for pid in [*workers(proc.pid), proc.pid]:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        proc.wait()


def frozen_peer(tmp: Path, data: str, timeout: int) -> float:
    """SIGSTOP machine 1's worker; seconds until machine 0's worker has stopped."""
    port, run = free_port(), tmp / f"frozen-{timeout}"
    first = start(launcher(run, data, machine(0, port), ["--dist-timeout", str(timeout)]), tmp / "m0.log")
    second = start(launcher(run, data, machine(1, port), ["--dist-timeout", str(timeout)]), tmp / "m1.log")
    try:
        wait_for_checkpoint(run, 20)
        os.kill(workers(second.pid)[0], signal.SIGSTOP)
        stopped = time.perf_counter()
        first.wait()
        return time.perf_counter() - stopped
    finally:
        kill_all([first, second])


def dead_peer(tmp: Path, data: str) -> float:
    run = tmp / "dead"
    proc = start(launcher(run, data, two_processes()), tmp / "dead.log")
    try:
        wait_for_checkpoint(run, 20)
        rank0, rank1 = workers(proc.pid)
        os.kill(rank1, signal.SIGKILL)
        killed = time.perf_counter()
        while Path(f"/proc/{rank0}").exists() and Path(f"/proc/{rank0}/stat").read_text().split()[2] != "Z":
            time.sleep(0.01)
        return time.perf_counter() - killed
    finally:
        kill_all([proc])


def sigterm(tmp: Path, data: str, processes: int) -> float:
    run = tmp / f"term-{processes}"
    command = launcher(run, data, two_processes()) if processes == 2 else \
        [sys.executable, "-m", "mnist_addition", "train", *TRAIN, "--data-dir", data, "--output-dir", str(run)]
    proc = start(command, tmp / "term.log")
    try:
        wait_for_checkpoint(run, 20)
        targets = workers(proc.pid) if processes == 2 else [proc.pid]
        for pid in targets:
            os.kill(pid, signal.SIGTERM)
        sent = time.perf_counter()
        for pid in targets:
            while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
                time.sleep(0.01)
        return time.perf_counter() - sent
    finally:
        kill_all([proc])


def elastic(tmp: Path, data: str) -> float:
    run, log = tmp / "elastic", tmp / "elastic.log"
    proc = start(launcher(run, data, two_processes("--rdzv_backend", "c10d", "--max_restarts", "1",
                                                   "--monitor_interval", "1")), log)
    try:
        wait_for_checkpoint(run, 20)
        os.kill(workers(proc.pid)[1], signal.SIGKILL)
        killed = time.perf_counter()
        while not re.search(r"resuming from step-", log.read_text()):
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.02)
        seconds = time.perf_counter() - killed
        assert proc.wait() == 0, log.read_text()[-2000:]
        return seconds
    finally:
        kill_all([proc])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        rows = [("frozen peer (SIGSTOP), --dist-timeout 10", "other machine stops", frozen_peer(tmp, args.data_dir, 10)),
                ("frozen peer (SIGSTOP), --dist-timeout 30", "other machine stops", frozen_peer(tmp, args.data_dir, 30)),
                ("dead peer (SIGKILL), no restarts", "other process stops", dead_peer(tmp, args.data_dir)),
                ("SIGTERM, 1 process", "checkpoint written, exit 75", sigterm(tmp, args.data_dir, 1)),
                ("SIGTERM, 2 processes", "checkpoint written, both exit 75", sigterm(tmp, args.data_dir, 2)),
                ("worker SIGKILLed, --max_restarts 1", "restarted group resumes", elastic(tmp, args.data_dir))]
    print("| fault | until | seconds |\n|---|---|---:|")
    for fault, until, seconds in rows:
        print(f"| {fault} | {until} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
