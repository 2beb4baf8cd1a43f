"""A Ray cluster of machines with their own addresses, started as users start one (`ray start`,
token authentication on), where the loopback clusters of test_sweep.py cannot go: a client
without the token, a trial's worker cut off mid-trial (the cut-off copy keeps running and must not
write), and the head machine lost mid-sweep (`tune --resume` from another machine). Needs root
and `ip netns` (skipped with the reason otherwise); the file system plays the shared storage.

Ray's health checks are shortened on these heads (RAY_health_check_*: a node is declared dead
after about 4 s instead of Ray's default, measured by benchmarks/sweep_partition.py)."""

from __future__ import annotations

import csv
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from mnist_addition.rundir.names import TRIAL_LEASE
from mnist_addition.testing.machines import Machines, unavailable

from .helpers import slow_env

pytestmark = pytest.mark.slow
PY, RAY = sys.executable, str(Path(sys.executable).parent / "ray")
PORT = 6390
FAST_HEALTH_CHECKS = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                      "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def start_cluster(m: Machines, folder: Path, env: dict[str, str], head: int, workers: tuple[int, ...]) -> str:
    """``ray start`` on each machine as docs/sweeps.md says: a head that runs no trial, 1-CPU
    workers, every node with the token; each node's Ray folder is ``folder/rayN`` (a short path:
    Ray's sockets live there). Returns the head's address."""
    address = f"{m.addresses[head]}:{PORT}"
    started = m.run(head, [RAY, "start", "--head", "--node-ip-address", m.addresses[head], "--port", str(PORT),
                           "--num-cpus", "0", "--include-dashboard", "false", "--disable-usage-stats",
                           "--temp-dir", str(folder / f"ray{head}")], env={**env, **FAST_HEALTH_CHECKS})
    assert started.returncode == 0, started.stderr[-2000:]
    for i in workers:
        join(m, i, address, folder, env)
    return address


def join(m: Machines, i: int, address: str, folder: Path, env: dict[str, str]) -> None:
    """Machine ``i`` joins the cluster at ``address`` as a 1-CPU worker."""
    joined = m.run(i, [RAY, "start", "--address", address, "--node-ip-address", m.addresses[i], "--num-cpus", "1",
                       "--disable-usage-stats", "--temp-dir", str(folder / f"ray{i}")], env=env)
    assert joined.returncode == 0, joined.stderr[-2000:]


@pytest.fixture(scope="module")
def token_env(tmp_path_factory):
    token = tmp_path_factory.mktemp("token") / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def machine_env(folder: Path, token_env: dict[str, str]) -> dict[str, str]:
    """What every Ray process of these machines runs with: slowed steps, the token, and none of the
    loopback settings of the other Ray tests (test_sweep.py keeps Ray on 127.0.0.1, one node)."""
    env = {**slow_env(folder), **token_env}
    for loopback_only in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS"):
        env.pop(loopback_only, None)
    return env


@pytest.fixture(scope="module")
def ray_machines(token_env, tmp_path_factory):
    """Three machines: a head (198.51.100.1, no CPUs for trials) and two 1-CPU workers."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="mna-", dir="/tmp"))  # under 108 bytes for Ray's socket paths
    try:
        with Machines(3) as m:
            env = machine_env(folder, token_env)
            yield m, start_cluster(m, folder, env, head=0, workers=(1, 2)), env, folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def space(folder: Path, epochs: int = 3, seeds: tuple[int, ...] = (0,)) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({"fixed": {"epochs": epochs, "width": 8, "batch_size": 32, "val_size": 100,
                                              "mixed_precision": "no", "lr": 0.01, "sum_weight": 0.5},
                                    "search": {"seed": {"choice": list(seeds)}}}))
    return path


def tune(folder: Path, mnist_dir: Path, name: str, *extra: str) -> list[str]:
    return [PY, "-m", "mnist_addition", "tune", "--space", str(space(folder)), "--data-dir", str(mnist_dir),
            "--no-download", "--storage-path", str(folder / "sweeps"), "--name", name, "--cpus-per-trial", "1",
            "--scheduler", "fifo", *extra]


def reported(sweep: Path, epoch: int) -> dict[str, str]:
    """trial folder -> the node IP each trial reported ``epoch`` from (so far)."""
    found = {}
    for result in sweep.glob("trial-*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        ip = next((r.get("node_ip") for r in rows if r.get("epoch") == epoch), None)
        if ip:
            found[result.parent.name] = ip
    return found


def read_trials(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_client_without_the_clusters_token_is_one_line(ray_machines, mnist_dir):
    m, address, env, folder = ray_machines
    without = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    without["RAY_gcs_server_port_wait_time_s"] = "2"  # Ray's connection attempts: 2 instead of 20 (seconds)
    done = m.run(0, tune(folder, mnist_dir, "no-token", "--address", address), env=without, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.startswith("mnist-addition tune:")]
    assert done.returncode != 0 and len(lines) == 1, done.stderr[-3000:]
    assert "uses token authentication" in lines[0] and "RAY_AUTH_TOKEN_PATH" in lines[0]
    assert not (folder / "sweeps" / "no-token" / "trials.csv").exists()


def test_a_trial_whose_worker_is_cut_off_resumes_on_the_other_and_the_cut_off_copy_writes_nothing(
        ray_machines, mnist_dir):
    """The trial's machine is cut off right after its epoch 1: Ray declares the node dead and runs
    the trial again on the other worker from epoch 1's checkpoint. The cut-off copy, still running,
    reaches its epoch 2 and writes nothing (its head is out of reach); the resumed attempt starts
    from the checkpoint Ray kept, not from anything the copy made; once the link is back nothing
    in the sweep's folder changes."""
    m, address, env, folder = ray_machines
    sweep = folder / "sweeps" / "cut"
    driver = m.popen(0, tune(folder, mnist_dir, "cut", "--address", address, "--max-failures", "2", "--num-samples", "1"), env=env,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cut, deadline = None, time.monotonic() + 300
    while cut is None and driver.poll() is None and time.monotonic() < deadline:
        ips = list(reported(sweep, 1).values())
        if ips:
            cut = m.addresses.index(ips[0])
            m.cut(cut)
        time.sleep(0.1)
    try:
        out, _ = driver.communicate(timeout=300)
    finally:
        if cut is not None:
            m.restore(cut)
    assert cut in (1, 2) and driver.returncode == 0, out[-3000:]
    ended = time.time()
    (trial,) = read_trials(sweep)
    assert trial["status"] == "finished" and trial["epochs_run"] == "3"
    assert trial["resumed_from_epoch"] == "1", out[-3000:]  # Ray's checkpoint, not the cut-off copy's epoch 2
    assert trial["moved_from"] and trial["moved_from"] != trial["node_id"]
    lease = json.loads((sweep / f"trial-{trial['trial_id']}" / TRIAL_LEASE).read_text())
    assert lease["node"] == m.addresses[3 - cut]  # the attempt that finished holds the trial
    refused = [json.loads(p.read_text()) for p in (folder / f"ray{cut}").glob("**/working_dirs/trial-*/run/status.json")]
    assert any("not writing epoch 2" in s.get("message", "") and "cannot reach the head" in s["message"]
               for s in refused), refused
    time.sleep(5)  # the link is back: whatever the copy still does, nothing in the sweep changes
    assert not [p for p in sweep.rglob("*") if p.is_file() and p.stat().st_mtime > ended]
    m.kill(cut)  # Ray declared the machine dead for good: its Ray restarted, it joins again
    join(m, cut, address, folder, env)


def test_the_head_machine_lost_mid_sweep_is_resumed_from_another_machine(ray_machines, mnist_dir):
    """The head's machine (its Ray and the driver) killed after both trials reported epoch 2;
    `tune --resume` on another machine, against the same storage, keeps what was trained and
    finishes both trials from their checkpoints. The module's last test: the cluster's head is gone."""
    m, address, env, folder = ray_machines
    sweep = folder / "sweeps" / "lost"
    args = tune(folder, mnist_dir, "lost", "--address", address, "--num-samples", "2")
    args[args.index(str(folder / "space.yaml"))] = str(space(folder, seeds=(0, 1)))
    m.popen(0, args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(reported(sweep, 2)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(reported(sweep, 2)) == 2
    unfinished = set(reported(sweep, 2)) - set(reported(sweep, 3))
    m.kill(0)  # every process of the head machine killed: its Ray, the driver
    for i in (1, 2):  # the workers' Ray lost its head: stopped (not `ray stop`, which stops every Ray of the host)
        m.kill(i)
    resumed = m.run(1, [PY, "-m", "mnist_addition", "tune", "--resume", "--name", "lost", "--storage-path",
                        str(folder / "sweeps"), "--data-dir", str(mnist_dir), "--no-download"], env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = read_trials(sweep)
    assert len(trials) == 2 and all(t["status"] == "finished" and t["epochs_run"] == "3" for t in trials), trials
    assert unfinished, "both trials finished before the head was killed: nothing was tested"
    for t in trials:  # nothing trained before was lost
        assert int(t["resumed_from_epoch"]) >= 2 if f"trial-{t['trial_id']}" in unfinished else t["resumed_from_epoch"] in ("", "0"), t
