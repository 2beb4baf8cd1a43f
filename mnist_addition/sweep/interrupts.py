"""Ctrl-C and SIGTERM while a sweep runs: always a sweep that ``tune --resume`` continues.

Inside Tune's loop a signal asks Tune for its graceful stop (the handler Tune installs for SIGUSR1
and, unless told not to, SIGINT): Tune saves its state one last time, with every trial's last
checkpoint, and stops the trials; the driver then writes what the trials did so far and exits 75
(SIGTERM: "stopped, try again", as ``train`` does when preempted) or 130 (Ctrl-C), naming the
command that continues. Outside the loop (data, Ray's start, the results files) the signal stops
the driver at once with the same line. A second signal during Tune's graceful stop skips it.

A trial stopped this way continues from its last checkpoint, the end of its last epoch.

``--time-budget`` ends a run of the sweep the same way, from a timer started as Tune's loop starts
(not Ray's ``time_budget_s``: Ray counts it from the sweep's first start, so a resumed sweep whose
budget was spent would stop at once, and it ends the running trials as if they had finished).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

from ..core.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, Interrupted

NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class SweepStopped(Interrupted):
    """The sweep was stopped by a signal; the message names the command that continues it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = EXIT_PREEMPTED if signum == signal.SIGTERM else EXIT_INTERRUPTED


class Interrupts:
    """SIGINT and SIGTERM handled for the life of a sweep's driver (main thread only)."""

    def __init__(self, resume_command: str) -> None:
        self.resume_command = resume_command
        self.signum: int | None = None
        self.in_tune = False
        self.budget_spent = False
        self._previous: dict[int, Any] = {}
        self._timer: threading.Timer | None = None

    def __enter__(self) -> "Interrupts":
        # Tune's own SIGINT handler would hide Ctrl-C from us: ours hands every signal to Tune's stop
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for signum in NAMES:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def reinstall(self) -> None:
        """Take the signals back after ``ray.init``: Ray's core installs its own SIGTERM handler
        (a crash dump and death, with no state saved)."""
        for signum in NAMES:
            signal.signal(signum, self._on_signal)

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def start_budget(self, seconds: float) -> None:
        """``--time-budget``: after ``seconds`` (0: never), Tune's graceful stop, as after a signal."""
        if seconds > 0:
            self._timer = threading.Timer(seconds, self._budget_spent, args=(seconds,))
            self._timer.daemon = True
            self._timer.start()

    def _budget_spent(self, seconds: float) -> None:
        if not self.in_tune or self.signum is not None or not hasattr(signal, "SIGUSR1"):
            return  # Tune's loop has ended, or a signal is stopping it already
        self.budget_spent = True
        logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
        print(f"mnist-addition tune: the time budget of {seconds:g} s is spent: stopping the trials and saving the "
              "sweep's state", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGUSR1)  # to the main thread: Tune's handler, its graceful stop

    @property
    def stopped(self) -> bool:
        return self.signum is not None

    def name(self) -> str:
        return NAMES.get(self.signum, "a signal") if self.signum is not None else ""

    def stop(self, what: str) -> SweepStopped:
        """The exception that ends the driver after a signal: ``what`` is left, and how to go on."""
        return SweepStopped(f"interrupted by {self.name()}: {what}; continue with  {self.resume_command}",
                            self.signum or signal.SIGINT)

    def _on_signal(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if first and self.in_tune and callable(tune_stop):
            # Tune's own lines would name its Python API (Tuner.restore) as the way back: ours names the command
            logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
            print(f"mnist-addition tune: {NAMES.get(signum, 'a signal')}: stopping the trials and saving the sweep's "
                  "state (again to stop at once)", file=sys.stderr, flush=True)
            tune_stop(signum, frame)  # Tune's graceful stop: it saves its state once more and stops the trials
            return
        raise self.stop("the trials continue from their last checkpoints")
