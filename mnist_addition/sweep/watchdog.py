"""``--trial-timeout``: a trial that shows no sign of life for that long is stopped and marked hung.

A sign of life is a training step or a report (an epoch's end). Ray's own limits do not catch a
stuck trial: ``time_budget_s`` and ``stop`` act at a trial's reports, and a trial that never
reports again never meets them (ray-project/ray #47475). So each trial process runs a
``Watchdog``: a thread that, after ``seconds`` without a beat, hands the trial thread's stack to
``on_hung`` (the trial writes ``trial-ID/hung.json`` with it) and ends the process. Ray sees the
trial's actor die and retries the trial from its last checkpoint while ``--max-failures`` allows;
``results`` calls a trial whose last attempt ended this way ``hung``, not ``error``.

A process stuck in C code that holds Python's lock (the GIL) runs no thread: ``faulthandler``'s
own watchdog, re-armed by ours while ours runs, prints every thread's stack to the trial's log and
ends the process after twice ``seconds``; that trial is then an ``error`` (no ``hung.json``).
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable, Iterator

from ..rundir.names import TIME_STAMP, TRIAL_HUNG

EXIT_HUNG = 70  # os._exit's status for a hung trial (EX_SOFTWARE): Ray reports the actor's death


class Watchdog:
    """Beat it (``beat``) at every sign of life; ``paused()`` around a wait that is someone else's
    (a report waits for the driver). Used as a context manager for the life of one trial (Ray
    reuses a trial's process for the next trial: the watchdog must end with its trial). With
    ``seconds`` 0 it watches nothing."""

    def __init__(self, seconds: float, on_hung: Callable[[float, str], None],
                 end: Callable[[int], Any] = os._exit) -> None:
        self.seconds, self.on_hung, self.end = seconds, on_hung, end
        self.last, self.pauses = time.monotonic(), 0
        self._stop = threading.Event()
        self._watched = threading.get_ident()  # the trial's thread (Tune runs it beside the actor's main one)
        self._thread = threading.Thread(target=self._watch, name="trial-watchdog", daemon=True)

    def beat(self) -> None:
        self.last = time.monotonic()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.pauses += 1
        try:
            yield
        finally:
            self.pauses -= 1
            self.beat()

    def __enter__(self) -> "Watchdog":
        self.beat()
        if self.seconds > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            faulthandler.cancel_dump_traceback_later()

    def _watch(self) -> None:
        poll = min(1.0, self.seconds / 4)
        while not self._stop.wait(poll):
            if self.pauses:
                self.beat()
            idle = time.monotonic() - self.last
            if idle > self.seconds:
                faulthandler.cancel_dump_traceback_later()
                try:
                    self.on_hung(idle, stack_of(self._watched))
                finally:
                    self.end(EXIT_HUNG)
                return
            # the backstop, should this thread stop running (the GIL held in C code)
            faulthandler.dump_traceback_later(2 * self.seconds, exit=True, file=sys.stderr)


def stack_of(thread_id: int) -> str:
    """Where a thread is now, as a traceback reads (innermost call last)."""
    frame = sys._current_frames().get(thread_id)
    return "".join(traceback.format_stack(frame)) if frame is not None else "(the thread has ended)"


def mark_hung(store: Any, trial_dir: str, attempt: str, idle: float, stack: str) -> dict[str, Any]:
    """Write ``trial-ID/hung.json``: this attempt hung (and how many of the trial's attempts have)."""
    marker = {"attempt": attempt, "hangs": hang_of(store, trial_dir)[0] + 1, "idle_seconds": round(idle, 1),
              "at": time.strftime(TIME_STAMP), "stack": stack}
    store.write(f"{trial_dir}/{TRIAL_HUNG}", json.dumps(marker, indent=2).encode())
    return marker


def read_hung(store: Any, trial_dir: str) -> dict[str, Any]:
    """The trial's ``hung.json`` ({} if it never hung, or the file cannot be read)."""
    try:
        marker = json.loads(store.read_small(f"{trial_dir}/{TRIAL_HUNG}", limit=1 << 20))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def hang_of(store: Any, trial_dir: str) -> tuple[int, bool]:
    """How many of the trial's attempts hung, and whether its latest attempt (its lease, ``fencing``)
    is one of them."""
    from .fencing import Lease

    marker = read_hung(store, trial_dir)
    if not marker:
        return 0, False
    holder = Lease(store, trial_dir, None, "").holder()
    hangs = marker.get("hangs")
    return hangs if isinstance(hangs, int) and hangs > 0 else 1, holder.get("attempt") == marker.get("attempt")
