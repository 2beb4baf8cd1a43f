"""The process group of a run: joined (``process_state``), one decision made on the main process
and told to the others (``main_decides``), and left together (``leave``). No Accelerate objects
are built here but the ``PartialState`` that owns the group."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch.distributed as dist
from accelerate.state import PartialState
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list

from ..core.backends import use_cpu
from ..core.errors import UserError, first_line
from .faults import PeerLost, is_peer_failure, join_restarted_group
from .network import settle_interface

T = TypeVar("T")


def process_state(cpu: bool = False, timeout: int | None = None) -> PartialState:
    """This process's place in the launch (joins the process group under ``accelerate launch``).

    On the CPU (asked for, or no GPU) every process must say so before the group forms: otherwise
    several CPU processes would each train alone, or take the GPU path on a GPU machine. ``timeout``
    (seconds, ``--dist-timeout``) bounds every collective's wait; the first caller's group is kept.
    """
    if use_cpu(cpu):
        settle_interface()  # gloo's interface, on a launch across machines
    try:
        join_restarted_group(use_cpu(cpu), timeout)
        group = InitProcessGroupKwargs(timeout=timedelta(seconds=timeout)).to_kwargs() if timeout else {}
        return PartialState(cpu=use_cpu(cpu), **group)
    except (RuntimeError, ConnectionError) as e:
        if not is_peer_failure(e):
            raise
        raise PeerLost(f"rank {os.environ.get('RANK', '?')}: the process group did not form: not every process "
                       f"joined in time ({first_line(e, 100).strip()}); start every machine with the same "
                       "--num_machines, --main_process_ip and port, and check that each reaches the main process "
                       "(docs/distributed.md, 'Machines with their own addresses')") from None


def main_decides(process: PartialState, decide: Callable[[], T]) -> T:
    """``decide()`` on the main process, its answer (or its refusal, a ``UserError``) on every
    process: no process waits at a barrier for another that already gave up."""
    answer: Any = None
    if process.is_main_process:
        try:
            answer = decide()
        except UserError as e:
            answer = e
    answer = broadcast_object_list([answer])[0] if process.num_processes > 1 else answer
    if isinstance(answer, UserError):
        raise answer
    return answer


def owns_group() -> bool:
    """No process group exists yet: the run that joins one owns it, and leaves it (under Ray Train,
    Ray's worker set up the group and leaves it itself)."""
    return not (dist.is_available() and dist.is_initialized())


def leave(process: PartialState) -> None:
    """Every process done: leave the process group together (a barrier, then destroy it), the
    shutdown torch documents. Without it, the two launchers of a requeued finished run once both
    died of SIGABRT at exit after answering "nothing to do" (CI, 1 run in many; not reproduced)."""
    if process.num_processes > 1:
        process.wait_for_everyone()
        process.destroy_process_group()
