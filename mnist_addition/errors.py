"""The one base of every expected failure: a message the user can act on, and an exit code.

The command line catches ``UserError`` alone and prints its message as one line; anything else
is a bug and keeps its traceback. The Python API raises the same classes.
"""

from __future__ import annotations

EXIT_USAGE = 2  # a bad flag, value, file or folder the user named
EXIT_FAILED = 1  # the input was fine but the job could not be done (data missing, training diverged)


class UserError(Exception):
    """An expected failure; ``str(e)`` names the problem and the fix, ``exit_code`` the exit status."""

    exit_code = EXIT_USAGE
