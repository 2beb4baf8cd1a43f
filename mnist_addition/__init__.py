"""mnist_addition: an MNIST digit and a number 0-9 in; the digit and their sum out.

The layers, each a folder, import only from the ones before them:

    core/      the task with torch alone: config, data, model, metrics, evaluation
    rundir/    the run folder on disk: file names, atomic writes, the lock, checkpoints, reading a run
    training/  Accelerate: ``train(config)``, the one way into a run, and its loop ``fit``
    sweep/     Ray Tune: ``mnist-addition tune``
    commands/  the command line: it parses and prints

and, beside them, ``testing/``: tools for the tests and benchmarks that no layer imports.

``from mnist_addition import TrainConfig, train``: ``train(TrainConfig(epochs=1))`` is what
``mnist-addition train --epochs 1`` runs. Importing the package loads nothing heavy (so that Ctrl-C
while torch loads is still answered in one line by the command line): the names below are
imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"ConfigError": "core.config", "TrainConfig": "core.config", "build_model": "core.model",
         "count_parameters": "core.model", "train": "training.run", "UserError": "core.errors"}

__all__ = sorted(_LAZY)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
