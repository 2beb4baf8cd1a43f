"""Ray Tune sweeps: ``mnist-addition tune``. The only package that imports Ray (lazily).

* ``options``: what was asked (``SweepOptions``), its checks, the shipped search spaces;
* ``folder``: the sweep folder a driver holds (one writer), new or resumed;
* ``trial``: what runs on a Ray worker (one trial: ``training.run.train``, reporting each epoch);
* ``driver``: Ray start-up, resources, the Tuner (scheduler, search, resume or rebuild);
* ``interrupts``: Ctrl-C and SIGTERM, a stop that ``--resume`` continues;
* ``trust`` and ``signing``: Ray's state signed at every save, checked before ``--resume`` loads it;
* ``rebuild``: a sweep resumed without Ray's state, its earlier trials continued;
* ``results``: trial rows, ranking (a pure function), the result files;
* ``storage``: the sweep folder on a local disk or any URI Ray accepts (``pyarrow.fs``).

Layout of a sweep, ``STORAGE/NAME/``: Ray's experiment state and one folder per trial (with the
trial's run folder ``run/``), plus ours: ``sweep.json`` (what was asked, for ``--resume``),
``trials.csv``, ``best_config.json`` (feed it to ``mnist-addition train --config``),
``sweep.png`` and ``summary.json`` (their names: ``rundir.names``).

May import: ``core``, ``rundir``, ``training``; Ray only inside the modules that run a sweep
(``driver``, ``trial``, ``pbt``, ``signing``, ``trackers``' callbacks), never at import of the package.
"""

from __future__ import annotations

import importlib
from typing import Any

# Importing the package loads neither Ray nor torch: ``tune``'s flags read ``options`` only, and the
# driver (Ray, torch) loads when a sweep runs.
_LAZY = {"run_sweep": "driver", "require_ray": "driver", "METRICS": "options", "SCHEDULERS": "options",
         "SEARCHERS": "options", "NoUsableTrial": "options", "SweepError": "options", "SweepOptions": "options",
         "find_space": "options", "shipped_spaces": "options"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
