"""The one way into a run: ``train(config)``. ``mnist-addition train``, every sweep trial and a
Python user call it, and it owns the run's whole life:

1. what is checked before anything starts (the trackers and their stores, once);
2. the process group joined (``group.process_state``; under ``accelerate launch`` every process
   calls ``train``);
3. the run folder chosen by the main process and told to the others (``runs/<timestamp>`` unless
   ``config.output_dir``), with ``start="auto"`` the decision to start, continue, or do nothing
   because the run there finished (``resume.auto_resume_mode``), and MNIST read;
4. ``fit``, the loop (``loop.py``); what a stop leaves (``status.json``, the run folder closed)
   is ``stops.py``'s, inside it;
5. the process group left together, if this run joined it.

``start``: "new", "overwrite" (replace the run in ``config.output_dir``), "resume" (continue it
from its newest valid checkpoint), "auto" (whichever of those the folder calls for, or nothing if
it finished: one command for the first start and every restart) or a ``start.Continuation``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

from accelerate.utils import broadcast_object_list

from ..core import backends
from ..core.config import ConfigError, TrainConfig
from ..core.data import PairedMnist, load_mnist, make_splits
from ..rundir import contents
from ..rundir.folder import check_run_dir
from . import trackers
from .faults import peers_explained
from .group import leave, main_decides, owns_group, process_state
from .loop import Report, fit
from .resume import auto_resume_mode
from .start import Continuation

AUTO_NEEDS = "--auto-resume needs --output-dir (the folder every restart continues) and neither --resume nor --overwrite"


class Started(NamedTuple):
    """What ``on_start`` is told once the run folder is chosen, before the first step."""

    config: TrainConfig  # with its run folder
    mode: str  # "new", "overwrite", "resume" or "finished" (nothing to do)
    processes: int
    main: bool  # this is the main process (the one that prints)


class Outcome(NamedTuple):
    """What ``train`` returns: how the run started, and ``fit``'s final metrics (None: it had finished)."""

    config: TrainConfig
    mode: str
    processes: int
    main: bool
    final: dict[str, Any] | None


def start_of(resume: bool = False, overwrite: bool = False, auto_resume: bool = False) -> str:
    """``train``'s ``start`` from the command line's switches (at most one of them)."""
    if auto_resume and (resume or overwrite):
        raise ConfigError(AUTO_NEEDS)
    return "auto" if auto_resume else "resume" if resume else "overwrite" if overwrite else "new"


def train(config: TrainConfig, report: Report | None = None, *, start: str | Continuation = "new",
          data: PairedMnist | None = None, download: bool = True, test: str = "end", progress: bool = True,
          warn: Callable[[str], None] = print, on_checkpoint: Callable[[Path], None] | None = None,
          on_start: Callable[[Started], None] | None = None, on_step: Callable[[], None] | None = None) -> Outcome:
    """Train ``config`` from start to end (see the module's docstring); ``report(row)`` after every
    epoch, ``warn(line)`` for notes, ``on_start(Started)`` once the run folder is chosen, the rest
    as ``fit``'s."""
    if start == "auto" and not config.output_dir:
        raise ConfigError(AUTO_NEEDS)
    trackers.check(config)  # --log-with: a tracker not installed, or its store not usable, said before anything starts
    if config.deterministic:
        backends.set_deterministic_env()  # before CUDA starts
    owner = owns_group()
    process = process_state(config.cpu, config.dist_timeout)
    with peers_explained(process.process_index, process.num_processes, config.dist_timeout):
        config, mode = _run_folder(process, config, start)
        if data is None and mode != "finished":  # a missing MNIST is said before the first line
            data = make_splits(load_mnist(config.data_dir, download=download), config.val_size)
    if on_start is not None:
        on_start(Started(config, mode, process.num_processes, process.is_main_process))
    final = None
    if mode != "finished":
        final = fit(config, report, data=data, start=start if isinstance(start, Continuation) else mode, test=test,
                    progress=progress, warn=warn, on_checkpoint=on_checkpoint, download=download, on_step=on_step)
    if owner:
        leave(process)
    return Outcome(config, mode, process.num_processes, process.is_main_process, final)


def _run_folder(process: Any, config: TrainConfig, start: str | Continuation) -> tuple[TrainConfig, str]:
    """The run folder every process writes to (the main process names the default one) and how the
    run starts there; a folder that cannot take the run is refused before the data is read (``fit``
    checks again under its lock)."""
    run_dir = broadcast_object_list([str(config.output_dir or contents.default_run_dir())])[0]
    config = config.replace(output_dir=run_dir)
    if start == "auto":
        return config, main_decides(process, lambda: auto_resume_mode(run_dir, config))
    if start != "resume":
        check_run_dir(run_dir, overwrite=start == "overwrite")
    return config, start if isinstance(start, str) else "new"
