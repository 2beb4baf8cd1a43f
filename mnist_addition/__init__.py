"""mnist_addition: an MNIST digit and a number 0-9 in; the digit and their sum out.

The core (config, data, model, metrics, evaluate, runs) needs only torch; ``train`` adds Accelerate.
Importing the package itself loads nothing heavy (so that Ctrl-C while torch loads is still
answered in one line by the command line): the names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"ConfigError": "core.config", "TrainConfig": "core.config", "build_model": "core.model",
         "count_parameters": "core.model"}

__all__ = sorted(_LAZY)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
