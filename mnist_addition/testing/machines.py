"""Machines with their own addresses on one Linux host: network namespaces joined by a switch.

``Machines(3)`` builds three namespaces, each a "machine" with one interface, ``net0``, and its own
address from 198.51.100.0/24 (TEST-NET-2, RFC 5737: never routed), plus a switch namespace whose
bridge joins them. There is no default route and no NAT: nothing reaches beyond the test network.
The root namespace is not touched. The host name is shared and, as on many Debian and Ubuntu
machines, may resolve to 127.0.0.1: what trips distributed jobs on real clusters. The file system
is shared too: it plays the shared storage.

``cut(i)`` takes machine ``i``'s port on the switch down: the machine keeps running, its interface
keeps its address, and what it sends goes nowhere (a partition, not a crash); ``restore(i)`` brings
the port back. ``popen(i, argv)`` runs a command on machine ``i``.

Everything (processes, namespaces and so their links) is removed by ``close()``, which the
``with`` block calls also when a test fails or is interrupted; namespaces left by a process that
was killed outright (``SIGKILL``) carry its PID and are removed by the next ``Machines``.
Needs root and iproute2's ``ip netns``: ``unavailable()`` says why not, for a test to skip.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import time
from typing import Any, Sequence

NETWORK = ipaddress.ip_network("198.51.100.0/24")
PREFIX = "mna-"  # every namespace this module builds: mna-<pid>-<set>-<index> and mna-<pid>-<set>-switch
INTERFACE = "net0"  # each machine's interface to the test network


def unavailable() -> str | None:
    """Why machines cannot be built here (a reason to skip), or None."""
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` (ip netns)"
    if os.geteuid() != 0:
        return "needs root (ip netns add)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.strip()}"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_all(name: str) -> None:
    """Kill what runs in namespace ``name`` (SIGCONT first: a stopped process is never left behind)."""
    for pid in [int(p) for p in _ip("netns", "pids", name, check=False).stdout.split()]:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _remove_namespace(name: str) -> None:
    """Kill what runs in ``name``, then delete it; its veth ends go with it."""
    _kill_all(name)
    _ip("netns", "del", name, check=False)


def remove_leftovers() -> list[str]:
    """Remove the namespaces of this module whose owning process is gone; returns their names."""
    gone = []
    for name in _namespaces():
        owner = name[len(PREFIX):].split("-")[0] if name.startswith(PREFIX) else ""
        if owner.isdigit() and not _alive(int(owner)):
            _remove_namespace(name)
            gone.append(name)
    return gone


class Machines:
    """``count`` machines on one test network; use as a context manager."""

    _built = itertools.count()

    def __init__(self, count: int) -> None:
        if not 1 <= count <= 200:
            raise ValueError(f"count must be 1 to 200, not {count}")
        self.count = count
        own = f"{PREFIX}{os.getpid()}-{next(Machines._built)}"  # several sets at once in one process
        self.names = [f"{own}-{i}" for i in range(count)]
        self.switch = f"{own}-switch"
        self.addresses = [str(NETWORK.network_address + i + 1) for i in range(count)]
        self._processes: list[subprocess.Popen] = []

    def __enter__(self) -> "Machines":
        remove_leftovers()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "switch", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "switch", "up")
        for i, (name, address) in enumerate(zip(self.names, self.addresses)):
            _ip("netns", "add", name)
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "add", self.port(i), "type", "veth", "peer", "name", INTERFACE, "netns", name)
            _ip("-n", self.switch, "link", "set", self.port(i), "master", "switch")
            _ip("-n", self.switch, "link", "set", self.port(i), "up")
            _ip("-n", name, "addr", "add", f"{address}/{NETWORK.prefixlen}", "dev", INTERFACE)
            _ip("-n", name, "link", "set", INTERFACE, "up")

    @staticmethod
    def port(i: int) -> str:
        """Machine ``i``'s port on the switch (the end of its link that ``cut`` takes down)."""
        return f"port{i}"

    def cut(self, i: int) -> float:
        """Partition machine ``i`` from the others; returns the ``time.monotonic()`` of the cut."""
        _ip("-n", self.switch, "link", "set", self.port(i), "down")
        return time.monotonic()

    def restore(self, i: int) -> None:
        _ip("-n", self.switch, "link", "set", self.port(i), "up")

    def kill(self, i: int) -> None:
        """Every process on machine ``i`` killed at once, as a machine lost (its address stays)."""
        _kill_all(self.names[i])

    def command(self, i: int, argv: Sequence[str]) -> list[str]:
        """``argv`` as run on machine ``i``."""
        return ["ip", "netns", "exec", self.names[i], *map(str, argv)]

    def popen(self, i: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` on machine ``i`` in a session of its own (``close`` kills it if still running)."""
        process = subprocess.Popen(self.command(i, argv), start_new_session=True, **kwargs)
        self._processes.append(process)
        return process

    def run(self, i: int, argv: Sequence[str], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``argv`` on machine ``i`` to its end (text output captured unless told otherwise)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(i, argv), timeout=timeout, **kwargs)

    def close(self) -> None:
        """Stop every process started here and in the namespaces, then remove the namespaces."""
        for process in self._processes:
            if process.poll() is None:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.killpg(process.pid, sig)
                    except ProcessLookupError:
                        pass
                process.wait()
        self._processes.clear()
        present = set(_namespaces())
        for name in [*self.names, self.switch]:
            if name in present:
                _remove_namespace(name)

    def __repr__(self) -> str:
        return f"Machines({', '.join(f'{n}={a}' for n, a in zip(self.names, self.addresses))})"

