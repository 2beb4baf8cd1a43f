"""Faults a real cluster meets, played on this machine: preemption (SIGTERM), a worker killed under
elastic restarts, a frozen machine (SIGSTOP), and `--auto-resume` as the one command for every
start. Every process a test stops is continued or killed by the test itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_addition.commands.cli import main
from mnist_addition.rundir.checkpoint import latest_valid

from .helpers import (
    COMMON,
    LAUNCH,
    SEED_ARGS,
    assert_trains_like,
    free_port,
    initial_weights,
    launch_env,
    our_lines,
    proven_on_real_addresses,
    run_weights,
    same_weights,
    slow_env,
    wait_for_checkpoint,
)

pytestmark = pytest.mark.slow  # see pyproject.toml: make test-fast leaves these out

# 15 steps an epoch, 45 in all; a checkpoint every 4 steps; agreement on SIGTERM at every step.
ARGS = ["--width", "8", "--epochs", "3", "--lr", "0.01", "--checkpoint-every", "4", "--keep-checkpoints", "3",
        "--log-every", "1", *COMMON, "--cpu"]
def _train_args(mnist_dir: Path, run: Path, *extra: str) -> list[str]:
    return ["train", *ARGS, "--data-dir", str(mnist_dir), "--output-dir", str(run), "--auto-resume", *extra]


def _launcher(mnist_dir: Path, run: Path, *launch: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "mnist_addition",
            *_train_args(mnist_dir, run, *extra)]


def _two_processes(port: int) -> list[str]:
    return ["--config_file", str(LAUNCH / "cpu_2proc.yaml"), "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(port)]


def _wait_for_port(port: int, proc: subprocess.Popen, limit: float = 120) -> None:
    """Until machine 0's launcher listens on ``port`` (a hang guard, not a measurement)."""
    import socket

    end = time.monotonic() + limit
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert proc.poll() is None, f"machine 0 ended (exit {proc.returncode}) before it listened on {port}"
        time.sleep(0.05)
    raise AssertionError(f"nothing listened on {port} within {limit} s")


def _workers(launcher: int) -> list[int]:
    """The training processes below a launcher (torchrun's children running mnist_addition), by rank."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [launcher]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"mnist_addition" in cmdline and b"accelerate.commands.launch" not in cmdline:
                rank = next((int(v.split(b"=")[1]) for v in environ if v.startswith(b"RANK=")), None)
                if rank is not None:
                    found.append((rank, child))
    return [pid for _, pid in sorted(found)]


def _stop(proc: subprocess.Popen) -> None:
    """Kill a launcher and its workers (torchrun starts each in a session of its own), continuing
    first what a test stopped."""
    for pid in [*_workers(proc.pid), proc.pid]:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    proc.wait(timeout=60)


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A process whose stderr goes to ``log`` (a file: a pipe nobody reads could block it)."""
    with log.open("w") as handle:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle, text=True, env=env)


def _finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    """Its stderr once it has ended (``timeout``: a hang guard)."""
    proc.wait(timeout=timeout)
    return log.read_text()


def _signal_two_workers(launch: list[str], run: Path, tmp_path: Path, signals: dict[int, int],
                        timeout: float) -> tuple[subprocess.Popen, str]:
    """Launch (slowed), send ``signals`` by rank once checkpoint 8 is written, wait for the end;
    the launcher and its stderr."""
    log = tmp_path / "launcher.log"
    proc = _start(launch, slow_env(tmp_path), log)
    try:
        wait_for_checkpoint(run, 8, proc)
        workers = _workers(proc.pid)
        assert len(workers) == 2
        for rank, sig in signals.items():
            os.kill(workers[rank], sig)
        return proc, _finish(proc, log, timeout)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def one_process_run(mnist_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    assert main(_train_args(mnist_dir, run)) == 0
    return run


@pytest.fixture(scope="module")
def two_process_run(mnist_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("two") / "run"
    proc = subprocess.run(_launcher(mnist_dir, run, *_two_processes(free_port())), capture_output=True, text=True,
                          env=launch_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


# ------------------------------------------------------------------------------------------------
# --auto-resume: one command for the first start and every restart
# ------------------------------------------------------------------------------------------------
def test_auto_resume_on_a_finished_run_says_so_and_changes_nothing(one_process_run, mnist_dir, capsys):
    before = {p: p.read_bytes() for p in one_process_run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert main(_train_args(mnist_dir, one_process_run)) == 0
    assert "already holds this run, finished" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in one_process_run.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_auto_resume_refuses_a_folder_holding_another_configs_run(one_process_run, mnist_dir, capsys):
    assert main(_train_args(mnist_dir, one_process_run, "--lr", "0.02")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds another run (--lr is 0.01 there, 0.02 here)" in err


@pytest.mark.parametrize("combination,match", [
    (["--resume", "RUN"], "--auto-resume cannot be combined with --resume"),
    (["--overwrite"], "--auto-resume needs --output-dir (the folder every restart continues) and neither"),
])
def test_auto_resume_is_not_combined_with_resume_or_overwrite(combination, match, one_process_run, mnist_dir, capsys):
    extra = [str(one_process_run) if a == "RUN" else a for a in combination]
    assert main(_train_args(mnist_dir, one_process_run, *extra)) == 2
    assert match in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Preemption: SIGTERM -> checkpoint, exit 75, --auto-resume continues bit for bit
# ------------------------------------------------------------------------------------------------
def test_sigterm_stops_one_process_after_a_checkpoint_and_auto_resume_is_bit_identical(
        one_process_run, mnist_dir, tmp_path, capsys):
    run = tmp_path / "run"
    log = tmp_path / "train.log"
    proc = _start([sys.executable, "-m", "mnist_addition", *_train_args(mnist_dir, run)], slow_env(tmp_path), log)
    try:
        wait_for_checkpoint(run, 8, proc)
        proc.send_signal(signal.SIGTERM)
        err = _finish(proc, log, 120)
    finally:
        _stop(proc)
    assert proc.returncode == 75, err[-2000:]
    lines = our_lines(err)
    assert len(lines) == 1 and "stopped by SIGTERM at epoch" in lines[0] and "--auto-resume" in lines[0]
    assert "Traceback" not in err and not (run / "model.safetensors").exists()
    latest_valid(run, warn=pytest.fail)  # every checkpoint left is valid
    assert main(_train_args(mnist_dir, run)) == 0
    assert "resuming from step-" in capsys.readouterr().err
    assert same_weights(run, one_process_run)


def test_sigterm_stops_two_processes_together_and_auto_resume_is_bit_identical(two_process_run, mnist_dir, tmp_path):
    run = tmp_path / "run"
    launch = _launcher(mnist_dir, run, *_two_processes(free_port()))
    # as SLURM and Kubernetes do: every process of the job gets SIGTERM
    _, err = _signal_two_workers(launch, run, tmp_path, {0: signal.SIGTERM, 1: signal.SIGTERM}, 120)
    lines = our_lines(err)
    assert sorted(line.split(": ")[1] for line in lines) == ["rank 0", "rank 1"], err[-3000:]
    assert all("stopped by SIGTERM" in line for line in lines) and "Traceback (most recent call last)" not in \
        "".join(line for line in err.splitlines() if "mnist_addition" in line)
    latest_valid(run, warn=pytest.fail)
    again = subprocess.run(launch, capture_output=True, text=True, env=launch_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert same_weights(run, two_process_run)


# ------------------------------------------------------------------------------------------------
# A worker dies: torchrun restarts the group, the same command continues
# ------------------------------------------------------------------------------------------------
def test_a_killed_worker_is_restarted_by_max_restarts_and_the_run_ends_bit_identical(two_process_run, mnist_dir,
                                                                                     tmp_path):
    run = tmp_path / "run"
    # the c10d rendezvous, as docs/distributed.md says to use with --max_restarts
    launch = _launcher(mnist_dir, run, *_two_processes(free_port()), "--rdzv_backend", "c10d", "--max_restarts", "1",
                       "--monitor_interval", "1")
    proc, err = _signal_two_workers(launch, run, tmp_path, {1: signal.SIGKILL}, 300)  # rank 1, as a lost machine
    assert proc.returncode == 0, err[-3000:]
    assert "resuming from step-" in err
    assert same_weights(run, two_process_run)


# ------------------------------------------------------------------------------------------------
# A machine freezes: the others stop within --dist-timeout, one line each; all back: it continues
# ------------------------------------------------------------------------------------------------
@proven_on_real_addresses("tests/test_machines.py: a machine cut off mid-epoch")
def test_a_frozen_machine_stops_the_other_within_the_timeout_and_auto_resume_continues(two_process_run, mnist_dir,
                                                                                        tmp_path):
    run, port = tmp_path / "run", free_port()

    def machine(rank: int, env: dict[str, str], log: Path) -> subprocess.Popen:
        launch = ["--multi_gpu", "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                  "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--rdzv_backend", "static",
                  "--mixed_precision", "no", "--dynamo_backend", "no"]
        return _start(_launcher(mnist_dir, run, *launch, extra=("--dist-timeout", "10")), env, log)

    slow, logs = slow_env(tmp_path), [tmp_path / "machine0.log", tmp_path / "machine1.log"]
    first, second = machine(0, slow, logs[0]), None
    try:
        _wait_for_port(port, first)
        second = machine(1, slow, logs[1])
        wait_for_checkpoint(run, 8, first)
        frozen = _workers(second.pid)
        assert len(frozen) == 1
        os.kill(frozen[0], signal.SIGSTOP)  # a hung machine, or a network partition
        err = _finish(first, logs[0], 120)  # a hang guard: without the timeout it waits 30 minutes
    finally:
        for proc in (first, second):
            if proc is not None:
                _stop(proc)
    lines = our_lines(err)
    assert first.returncode != 0 and len(lines) == 1, err[-3000:]
    assert "rank 0: another process of the run stopped answering" in lines[0] and "--dist-timeout 10" in lines[0]
    latest_valid(run, warn=pytest.fail)
    assert not (run / "model.safetensors").exists()
    port = free_port()  # both machines back: the same commands continue the run
    first, second = machine(0, launch_env(), logs[0]), None
    try:
        _wait_for_port(port, first)
        second = machine(1, launch_env(), logs[1])
        assert first.wait(timeout=600) == 0 and second.wait(timeout=600) == 0, logs[0].read_text()[-3000:]
    finally:
        for proc in (first, second):
            if proc is not None:
                _stop(proc)
    assert (run / "metrics.json").is_file()


# ------------------------------------------------------------------------------------------------
# Two machines on one: static and c10d rendezvous, and plain torchrun
# ------------------------------------------------------------------------------------------------
def _machine_command(how: str, rank: int, port: int, mnist_dir: Path, run: Path) -> list[str]:
    train = ["-m", "mnist_addition", "train", *SEED_ARGS, "--data-dir", str(mnist_dir), "--output-dir", str(run)]
    if how == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port), *train]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
            "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(port), "--rdzv_backend", how, "--mixed_precision", "no",
            "--dynamo_backend", "no", *train]


ON_REAL_ADDRESSES = proven_on_real_addresses("tests/test_machines.py")


@pytest.mark.parametrize("how", [pytest.param("static", marks=ON_REAL_ADDRESSES),
                                 pytest.param("c10d", marks=ON_REAL_ADDRESSES), "torchrun"])
def test_two_machines_train_the_same_model_as_one_process(how, seed_one_process, mnist_dir, tmp_path):
    """Two launchers on 127.0.0.1 as two machines, one process each, as the 2-process test
    (tests/test_data_parallel.py) with the same tolerances: 1e-4 absolute and 5% of each update."""

    run, port = tmp_path / "run", free_port()
    logs = [tmp_path / "machine0.log", tmp_path / "machine1.log"]
    machines = [_start(_machine_command(how, 0, port, mnist_dir, run), launch_env(), logs[0])]
    try:
        _wait_for_port(port, machines[0])  # machine 0 hosts the rendezvous: on one host both could claim it
        machines.append(_start(_machine_command(how, 1, port, mnist_dir, run), launch_env(), logs[1]))
        codes = [m.wait(timeout=600) for m in machines]
    finally:
        for m in machines:
            _stop(m)
    assert codes == [0, 0], logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
    import json

    setup = json.loads((run / "metrics.json").read_text())["setup"]
    assert setup["num_processes"] == 2 and setup["per_process_batch_size"] == 16
    assert setup["train_samples_per_process"] == [256, 256]  # each machine saw half of each batch
    assert_trains_like(run_weights(run), run_weights(seed_one_process), initial_weights("seed", 32))


def test_the_slurm_script_runs_its_per_node_command_twice_under_stand_ins(mnist_dir, tmp_path):
    """launch/slurm_multinode.sbatch with stand-ins for srun (its command once per node, with
    SLURM_NODEID), scontrol (the node list: 127.0.0.1) and SLURM's variables: two launchers, one
    process each, train one run with --auto-resume; run again (a requeue), it finishes at once."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/bash\npids=()\nfor id in 0 1; do SLURM_NODEID=$id \"$@\" & pids+=($!); done\n"
                                  "code=0\nfor p in \"${pids[@]}\"; do wait $p || code=$?; done\nexit $code\n")
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho 127.0.0.1\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    venv = Path(sys.executable).parent.parent
    env = dict(launch_env(), PATH=f"{bin_dir}{os.pathsep}{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", VENV=str(venv),
               SLURM_JOB_NODELIST="node[1-2]", SLURM_NNODES="2", SLURM_JOB_ID="42", GPUS_PER_NODE="1",
               MAIN_PORT=str(free_port()), MNIST_ADDITION_DATA=str(mnist_dir),
               TRAIN_ARGS=" ".join(["--width", "8", "--epochs", "1", "--lr", "0.01", *COMMON, "--cpu"]))
    script = LAUNCH / "slurm_multinode.sbatch"
    first = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "runs" / "slurm-42"
    import json

    assert json.loads((run / "metrics.json").read_text())["setup"]["num_processes"] == 2
    env["MAIN_PORT"] = str(free_port())
    again = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already holds this run, finished" in again.stderr, again.stderr[-3000:]
