"""How a run that stops early ends: every failure one line (a full disk, out of memory), the run
folder closed, ``status.json`` saying why (``runs`` shows it), the trackers told, and Ctrl-C
answered with what is left."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from ..core.backends import is_out_of_memory
from ..core.config import ConfigError
from ..core.errors import Interrupted
from ..rundir import checkpoint, contents
from ..rundir.folder import RunFolder, describe
from ..rundir.names import FINISHED, STATUS, stamp
from . import trackers
from .checkpointer import TrainingDiverged
from .faults import PeerLost, Preempted
from .state import Run


@contextlib.contextmanager
def failures_explained(run: Run, folder: RunFolder | None) -> Iterator[None]:
    """Hold the run folder while training; every way training can fail becomes one line (a full
    disk, out of memory), and Ctrl-C says what is left once the folder is closed."""
    ok = interrupted = False
    try:
        yield
        ok = True
    except KeyboardInterrupt:
        interrupted = True  # said once the folder is closed: only then is it known what is left
    except OSError as e:  # the run folder could not be written: disk full, read-only, removed
        error = contents.write_failed(e, "--output-dir", run.run_dir)
        raise type(error)(f"{error}; checkpoints already written are kept") from None
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        config = run.config
        raise ConfigError(f"out of memory on {run.device} with --batch-size {config.batch_size} and "
                          f"--width {config.width}: lower --batch-size (or use --gradient-accumulation-steps), "
                          "--eval-batch-size or --width") from None
    finally:
        stopped = None if ok else "interrupted" if interrupted else stop_reason(sys.exc_info()[1])
        try:
            if folder is not None:
                if stopped:
                    note_stop(run, stopped, sys.exc_info()[1])
                folder.close(ok)
        finally:  # the trackers are told how the run ended, whatever happened to the folder
            trackers.end(run, "FINISHED" if ok else "KILLED" if stopped in ("interrupted", "preempted") else "FAILED")
    if interrupted:
        raise Interrupted(describe(folder.outcome if folder else "", run.run_dir))


def note_stop(run: Run, stopped: str, error: BaseException | None) -> None:
    """Why a run that began and can be resumed stopped (``status.json``, for ``mnist-addition runs``);
    a refusal before training began changes nothing."""
    if run.began and run.run_dir and checkpoint.list_checkpoints(run.run_dir) and not (run.run_dir / FINISHED).exists():
        try:
            contents.write_json(run.run_dir / STATUS, {"status": stopped, "at": stamp(),
                                                   "message": str(error or "interrupted (Ctrl-C)")})
        except OSError:
            pass  # a note for `runs` only (a full disk is why the run stopped, often): the error said is the run's


def stop_reason(error: BaseException | None) -> str:
    """What ``runs`` shows of an unfinished run (status.json): why it stopped."""
    kinds = ((TrainingDiverged, "diverged"), (Preempted, "preempted"), (Interrupted, "interrupted"),
             (PeerLost, "peer lost"))
    return next((name for kind, name in kinds if isinstance(error, kind)), "failed")
