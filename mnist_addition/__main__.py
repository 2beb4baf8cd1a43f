"""``python -m mnist_addition``: the command line (``cli.run``), Ctrl-C while it loads included."""

import sys

try:
    from .commands.cli import run
except KeyboardInterrupt:  # Ctrl-C while Python loads the package
    print("mnist-addition: interrupted", file=sys.stderr)
    sys.exit(130)

run()
