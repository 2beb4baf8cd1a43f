"""The one base of every expected failure: a message the user can act on, and an exit code.

The command line catches ``UserError`` alone and prints its message as one line; anything else
is a bug and keeps its traceback. The Python API raises the same classes.
"""

from __future__ import annotations

import os
import reprlib
import signal
import sys
from typing import Any, NoReturn

EXIT_USAGE = 2  # a bad flag, value, file or folder the user named
EXIT_FAILED = 1  # the input was fine but the job could not be done (data missing, training diverged)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
EXIT_PREEMPTED = 75  # stopped by SIGTERM after a checkpoint: resumable (sysexits' EX_TEMPFAIL, "try again")


class UserError(Exception):
    """An expected failure; ``str(e)`` names the problem and the fix, ``exit_code`` the exit status."""

    exit_code = EXIT_USAGE


class Interrupted(UserError):
    """Ctrl-C: the message says what is left (resume, nothing, the old run back)."""

    exit_code = EXIT_INTERRUPTED


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6
_SHORT.maxlevel = 3


def shown(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters: an error line never echoes a whole 9 MB value
    (and never builds it: reprlib stops at its limits)."""
    return _SHORT.repr(value)


def first_line(error: BaseException, limit: int = 160) -> str:
    """Why ``error`` happened, for a one-line message: its first non-blank line cut to ``limit``
    characters, or its type's name when it says nothing (``str(e)`` of an ``OSError()`` is empty)."""
    return next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)[:limit]


def exit_with(code: int, command: str) -> NoReturn:
    """Exit with ``code`` once a command has finished. A Ctrl-C while Python exits (torch's clean-up
    at exit) would print a traceback and exit 0: it is one line and 130."""
    def at_exit(signum: int, frame: Any) -> None:
        print(f"mnist-addition {command}: interrupted while exiting; the command had finished (exit {code})",
              file=sys.stderr, flush=True)
        os._exit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, at_exit)
    sys.exit(code)
