"""``python -m mnist_addition``: the command line (``cli.main``), Ctrl-C while it loads included."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while Python loads the package
    print("mnist-addition: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
