"""Machines with their own addresses (mnist_addition/testing/machines.py: network namespaces on
198.51.100.0/24 joined by a switch), where the loopback tests (test_cluster_faults.py) cannot go:
gloo's choice of interface when the host name resolves to loopback, data parallelism across two
addresses with the static and the c10d rendezvous, a wrong interface, and a machine partitioned
mid-epoch. Needs root and `ip netns` (skipped with the reason otherwise); the file system is shared,
as a cluster's storage is."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_addition.rundir.checkpoint import latest_valid, list_checkpoints
from mnist_addition.rundir.names import WEIGHTS
from mnist_addition.testing.machines import INTERFACE, Machines, remove_leftovers, unavailable

from .helpers import (
    SEED_ARGS,
    assert_trains_like,
    initial_weights,
    launch_env,
    our_lines,
    run_weights,
    same_weights,
    slow_env,
    wait_for_checkpoint,
)

pytestmark = pytest.mark.slow
PORTS = itertools.count(29600)  # machine 0's rendezvous port, a new one for every launch
PY = sys.executable
# The seed network's data-parallel proof (SEED_ARGS) with checkpoints to resume from.
ARGS = [*SEED_ARGS, "--checkpoint-every", "4", "--keep-checkpoints", "5", "--log-every", "1", "--auto-resume"]


@pytest.fixture(scope="module")
def machines():
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with Machines(2) as built:
        yield built


def _reaches(m: Machines, i: int, address: str, port: int) -> bool:
    probe = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()"
    return m.run(i, [PY, "-c", probe, address, str(port)]).returncode == 0


def test_each_machine_has_its_own_address_a_cut_link_partitions_it_and_nothing_is_left():
    if unavailable():
        pytest.skip(unavailable())
    serve = ("import socket; s = socket.create_server(('0.0.0.0', 7000)); print('up', flush=True)\n"
             "while True: s.accept()[0].close()")
    with Machines(3) as m:
        assert m.addresses == ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        for i in range(3):
            assert f"{m.addresses[i]}/24" in m.run(i, ["ip", "-brief", "addr", "show", INTERFACE]).stdout
            assert m.run(i, ["ip", "route"]).stdout.split()[0] == "198.51.100.0/24"  # no default route
        server = m.popen(2, [PY, "-c", serve], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "up"
        assert _reaches(m, 0, m.addresses[2], 7000) and _reaches(m, 1, m.addresses[2], 7000)
        m.cut(2)  # machine 2 keeps running and keeps its address; nothing reaches it
        assert server.poll() is None and not _reaches(m, 0, m.addresses[2], 7000)
        assert _reaches(m, 2, "127.0.0.1", 7000)
        m.restore(2)
        assert _reaches(m, 0, m.addresses[2], 7000)
        stopped = m.popen(1, ["sleep", "600"])
        os.kill(stopped.pid, signal.SIGSTOP)  # close() continues and kills what a test stopped
        names = [*m.names, m.switch]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in names if n in listed]
    assert server.poll() is not None and stopped.poll() is not None


def test_the_namespaces_of_a_killed_harness_are_removed_by_the_next():
    if unavailable():
        pytest.skip(unavailable())
    build = "from mnist_addition.testing.machines import Machines; m = Machines(2).__enter__(); print(m.switch, flush=True); input()"
    owner = subprocess.Popen([PY, "-c", build], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    switch = owner.stdout.readline().strip()
    assert switch in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    owner.kill()  # SIGKILL: no clean-up ran
    owner.wait()
    removed = remove_leftovers()
    assert switch in removed and len(removed) == 3
    assert switch not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _launch(m: Machines, rank: int, run: Path, mnist_dir: Path, port: int, how: str = "static",
            env: dict[str, str] | None = None, extra: tuple[str, ...] = (), own_address: bool = True) -> subprocess.Popen:
    """``accelerate launch`` of one process on machine ``rank``, machine 0 the main one; stderr
    (where our lines go) in ``run``'s sibling log."""
    env = dict(env or launch_env())
    c10d = []
    if how == "c10d":  # what docs/distributed.md tells users whose host name resolves to loopback
        if own_address:
            env["PET_LOCAL_ADDR"] = m.addresses[rank]
        c10d = ["--rdzv_conf", "is_host=1"] if rank == 0 else []
    command = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
               "--machine_rank", str(rank), "--main_process_ip", m.addresses[0], "--main_process_port", str(port),
               "--rdzv_backend", how, *c10d, "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "mnist_addition", "train", *ARGS, *extra, "--data-dir", str(mnist_dir), "--output-dir", str(run)]
    log = run.parent / f"{run.name}-machine{rank}.log"
    with log.open("a") as handle:
        return m.popen(rank, command, stdout=handle, stderr=subprocess.STDOUT, text=True, env=env)


def _both(m: Machines, run: Path, mnist_dir: Path, **kwargs) -> list[str]:
    """Both machines launched and waited for (a hang guard); their logs, asserting both succeeded."""
    port = next(PORTS)
    launched = [_launch(m, rank, run, mnist_dir, port, **kwargs) for rank in (0, 1)]
    codes = [p.wait(timeout=300) for p in launched]
    logs = [(run.parent / f"{run.name}-machine{r}.log").read_text() for r in (0, 1)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    return logs


@pytest.fixture(scope="module")
def static_run(machines, mnist_dir, tmp_path_factory):
    """Two machines, static rendezvous, nothing set by hand: the uninterrupted run."""
    run = tmp_path_factory.mktemp("static") / "run"
    return run, _both(machines, run, mnist_dir)


def test_two_machines_with_their_own_addresses_train_like_one_process(static_run, seed_one_process):
    """Their host name resolves to 127.0.0.1: each machine chooses net0 (the interface that routes
    to the main process), says so in one line, and the run equals one process's within the
    data-parallel tolerances."""
    run, logs = static_run
    for address, log in zip(("198.51.100.1", "198.51.100.2"), logs):
        said = [line for line in log.splitlines() if line.startswith("Network:")]
        assert len(said) == 1 and f"using interface {INTERFACE} ({address})" in said[0], log[-2000:]
    setup = json.loads((run / "metrics.json").read_text())["setup"]
    assert setup["num_processes"] == 2 and setup["train_samples_per_process"] == [256, 256]
    assert_trains_like(run_weights(run), run_weights(seed_one_process), initial_weights("seed", 32))


def test_the_c10d_rendezvous_across_addresses_trains_the_same_run(machines, static_run, mnist_dir, tmp_path):
    """c10d, with what the docs tell users (the main machine hosts the store, each machine names its
    address) and GLOO_SOCKET_IFNAME set by hand (kept: nothing is said)."""
    run = tmp_path / "run"
    logs = _both(machines, run, mnist_dir, how="c10d", env=dict(launch_env(), GLOO_SOCKET_IFNAME=INTERFACE))
    assert not any(line.startswith("Network:") for log in logs for line in log.splitlines())
    assert same_weights(run, static_run[0])


def test_a_wrong_interface_is_one_line_on_each_machine_before_any_wait(machines, mnist_dir, tmp_path):
    """Machine 0 told GLOO_SOCKET_IFNAME=lo, machine 1 a name it does not have: each says so in one
    line naming the interface that reaches the main process, before any wait (unchecked, gloo
    waited out its timeout and ended in a traceback)."""
    run, port = tmp_path / "run", next(PORTS)
    told = [("lo", "lo is loopback"), ("eth9", "no interface eth9")]
    launched = [_launch(machines, rank, run, mnist_dir, port, env=dict(launch_env(), GLOO_SOCKET_IFNAME=told[rank][0]))
                for rank in (0, 1)]
    codes = [p.wait(timeout=120) for p in launched]  # a hang guard
    for rank, code in enumerate(codes):
        lines = our_lines((tmp_path / f"run-machine{rank}.log").read_text())
        assert code != 0 and len(lines) == 1 and told[rank][1] in lines[0], lines
        assert f"reaches 198.51.100.1: {INTERFACE})" in lines[0], lines
    assert not run.exists() or not list_checkpoints(run)


def test_c10d_without_each_machines_address_is_one_line_on_each_machine(machines, mnist_dir, tmp_path):
    """c10d, the main machine hosting the store, but no PET_LOCAL_ADDR: the rendezvous announces the
    host name, loopback on every machine. The machine without the store says what to set; the other
    that the group did not form; each in one line, within --dist-timeout."""
    run, port = tmp_path / "run", next(PORTS)
    launched = [_launch(machines, rank, run, mnist_dir, port, how="c10d", own_address=False,
                        extra=("--dist-timeout", "10")) for rank in (0, 1)]
    codes = [p.wait(timeout=180) for p in launched]  # a hang guard
    lines = [our_lines((tmp_path / f"run-machine{rank}.log").read_text()) for rank in (0, 1)]
    assert all(code != 0 for code in codes) and [len(said) for said in lines] == [1, 1], lines
    assert sum("set PET_LOCAL_ADDR=<each machine's own address>" in said[0] for said in lines) == 1, lines
    assert sum("the process group did not form" in said[0] for said in lines) == 1, lines


def test_a_machine_cut_off_mid_epoch_stops_both_and_the_relaunch_finishes_the_same_run(
        machines, static_run, mnist_dir, tmp_path):
    """Machine 1's link cut right after checkpoint 4 (epoch 1 of 2, mid-epoch) at --dist-timeout 10:
    both machines stop with the one line; machine 0, which holds the run folder, writes nothing
    after machine 1 gave up; with the link back, the same command on both finishes bit for bit as
    the uninterrupted run."""
    run, port = tmp_path / "run", next(PORTS)
    slow = slow_env(tmp_path)
    launched = [_launch(machines, rank, run, mnist_dir, port, env=slow, extra=("--dist-timeout", "10"))
                for rank in (0, 1)]
    try:
        wait_for_checkpoint(run, 4, launched[0])
        machines.cut(1)
        launched[1].wait(timeout=120)  # hang guards: the timeout is 10 s
        gave_up = time.time()
        launched[0].wait(timeout=120)
    finally:
        machines.restore(1)
    for rank, process in enumerate(launched):
        lines = our_lines((tmp_path / f"run-machine{rank}.log").read_text())
        assert process.returncode != 0 and len(lines) == 1, lines
        assert f"rank {rank}: another process of the run stopped answering" in lines[0] and "--dist-timeout 10" in lines[0]
    kept = list_checkpoints(run)
    assert kept and all(c.stat().st_mtime <= gave_up for c in kept)
    assert latest_valid(run, warn=pytest.fail) is not None and not (run / WEIGHTS).exists()
    _both(machines, run, mnist_dir)  # the same command, link restored
    assert same_weights(run, static_run[0])
