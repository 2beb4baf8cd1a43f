"""What a data-parallel run does when the world around it fails: preemption and lost peers.

* **Preemption.** SLURM, Kubernetes and spot instances send SIGTERM before they kill. ``StopSignal``
  turns it into a request that every process honours at the same step: the processes agree at
  fixed steps (every ``--log-every`` steps: one all-reduce of a flag, only where there are several
  processes), finish that step, write a checkpoint together and stop with ``Preempted`` (exit 75,
  "stopped, resumable"); ``train --auto-resume`` continues bit for bit.
* **A lost or frozen peer.** Every collective waits at most ``--dist-timeout`` seconds (the process
  group's timeout); a peer that died closes its sockets, and one that froze (a hung machine, a
  network partition) runs out the timeout. Either way each process stops with one line,
  ``PeerLost``, naming its rank and how to go on. Checkpoints are renamed into place whole, so
  whatever the moment, the folder holds only valid ones.

No Accelerate here: the caller passes its accelerator's reduce.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from typing import Any, Iterator

import torch

from ..core.errors import EXIT_FAILED, EXIT_PREEMPTED, Interrupted, UserError, first_line


class Preempted(Interrupted):
    """SIGTERM: the run stopped after writing a checkpoint; the same command with --auto-resume continues."""

    exit_code = EXIT_PREEMPTED


class PeerLost(UserError):
    """A collective failed: another process of the run died or stopped answering."""

    exit_code = EXIT_FAILED


class StopSignal:
    """SIGTERM while training, as a request all processes agree on (main thread only: a sweep trial
    running in a Ray thread keeps Ray's own handling)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True  # acted on at the next agreed step: never in the middle of one

    def agreed(self, run: Any) -> bool:
        """Whether any process of ``run`` (a ``state.Run``) was asked to stop. Every process must
        call this at the same steps."""
        if run.world == 1:
            return self.requested
        flag = torch.tensor(float(self.requested), device=run.device)
        return bool(run.accelerator.reduce(flag, reduction="sum").item() > 0)  # a sync: only at agreed steps


# What gloo and NCCL say when a peer is gone (its sockets closed) or silent (the timeout ran out).
PEER_FAILURES = ("timed out", "timeout", "connection closed by peer", "connection reset by peer", "broken pipe",
                 "connection refused", "nccl communicator was aborted", "socket closed", "end of file")


def is_peer_failure(error: BaseException) -> bool:
    """A collective's error that says another process stopped answering (not a bug of ours)."""
    if not isinstance(error, (RuntimeError, ConnectionError)):  # torch.distributed.DistError is a RuntimeError
        return False
    text = str(error).lower()
    return any(phrase in text for phrase in PEER_FAILURES)


@contextlib.contextmanager
def peers_explained(rank: int, world: int, timeout: int) -> Iterator[None]:
    """A failed collective of a multi-process run becomes one line naming the rank, not a traceback."""
    try:
        yield
    except (RuntimeError, ConnectionError) as e:
        if world == 1 or not is_peer_failure(e):
            raise
        said = re.sub(r"^\[[^\]]*\]\s*", "", first_line(e, 400).strip())[:120]  # gloo's "[file.cc:78] " prefix
        raise PeerLost(f"rank {rank}: another process of the run stopped answering ({said}; "
                       f"--dist-timeout {timeout} s): the newest valid checkpoint is kept; once every machine is "
                       "back, run the same command with --auto-resume") from None


def join_restarted_group(cpu: bool, timeout: int | None) -> None:
    """Under torchrun's elastic restarts (``--max-restarts``), form this attempt's process group
    under keys of its own.

    The workers of every attempt meet in the agent's store (``TORCHELASTIC_USE_AGENT_STORE``),
    which outlives the attempt; without a prefix per attempt, a restarted group reads the dead
    group's addresses from it and fails to connect (here, 3 restarts of 4 failed so, with the
    static and the c10d rendezvous). So from the first restart on, the group is formed here, before Accelerate
    (which then uses it), with the attempt's prefix. Nothing changes outside elastic restarts.
    """
    import os
    from datetime import timedelta

    import torch.distributed as dist

    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or not dist.is_available() \
            or dist.is_initialized():
        return
    wait = timedelta(seconds=timeout or 1800)
    world = int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=wait)
    dist.init_process_group("gloo" if cpu else "nccl", store=dist.PrefixStore(f"mnist-addition/attempt-{attempt}", store),
                            rank=int(os.environ["RANK"]), world_size=world, timeout=wait)
