"""Who may write a run folder, and when: one writer at a time, a new run only where there is none,
``--overwrite`` that loses nothing, a refusal that changes nothing. Pure standard library.

The rules, checked before anything is created and again under the lock:

* **a new run** needs a folder that is missing or empty (a lock left by a killed run aside); a
  folder holding a run needs ``--overwrite``; a folder holding anything else (``/``, a home
  folder, links planted at our names) is refused, ``--overwrite`` or not;
* **``--overwrite``** replaces only a folder that holds nothing but a run (its files, of the right
  kinds: no links), and moves it aside until the new run has its first checkpoint;
* **a resumed run** needs an unfinished run (checkpoints, no metrics.json) whose folders
  (checkpoints/, tensorboard/) are folders, not links out of it; the command line reads its
  config.json (``resume.resumed_config``), and ``fit`` checks its config against it (``training/resume.py``).

The folder is named by its real path (``SOMEWHERE/../RUN`` and links resolved) for every
operation, so no spelling creates another folder or reaches around the lock.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from . import files
from .checkpoint import list_checkpoints
from .contents import RunError
from .names import CHECKPOINTS, CONFIG, FINISHED, LOCK, ONNX, REPLACED, RUN_DIRS, RUN_FILES


def _kind(folder: Path, name: str) -> str | None:
    """None if ``name`` in a run folder is something a run of ours holds (of the right kind), else
    what it is instead."""
    path = folder / name
    if os.path.islink(path):
        return f"a link to {os.readlink(path)}"
    if name in (*RUN_FILES, ONNX, LOCK) or (name.startswith(".") and name.endswith(".tmp")):
        return None if files.is_real_file(path) else "not a regular file"
    if name in (*RUN_DIRS, REPLACED):
        return None if files.is_real_dir(path) else "not a folder"
    return "not part of a run"


def _run_entries(folder: Path) -> list[str]:
    """The names a run leaves in a folder (its data, not the lock's bookkeeping)."""
    return [name for name in (*RUN_FILES, *RUN_DIRS, ONNX) if os.path.lexists(folder / name)]


def holds_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding (part of) a run: anything a run writes, the lock aside."""
    real = Path(os.path.realpath(path))
    return real.is_dir() and bool(_run_entries(real))


def _in_use(named: Path, real: Path) -> RunError:
    return RunError(f"{named} is in use by {files.lock_holder(real / LOCK)}: wait for it to finish, or choose another --output-dir")


def check_run_dir(path: str | os.PathLike, overwrite: bool = False, locked: bool = False) -> None:
    """Raise RunError if ``path`` cannot become a new run folder (without touching anything).
    ``locked``: this process holds the folder's lock (so it is not "in use")."""
    named = Path(path)
    real = Path(os.path.realpath(named))
    try:
        for parent in [real, *real.parents]:
            if parent.exists():
                if not parent.is_dir():
                    where = "is" if parent == real else f"is below {parent}, which is"
                    raise RunError(f"output path {named} {where} a file, not a folder: choose another --output-dir")
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise RunError(f"cannot write in {parent} (permission denied): choose another --output-dir")
                break
        if not real.is_dir():
            return
        if not locked and files.lock_is_held(real / LOCK):
            raise _in_use(named, real)
        names = sorted(os.listdir(real))
    except OSError as e:  # a name too long, a link loop
        raise RunError(f"--output-dir {named} cannot be used ({e.strerror or e}): choose another --output-dir") from None
    strange = next(((name, kind) for name in names if (kind := _kind(real, name))), None)
    if strange:
        name, kind = strange
        raise RunError(f"{named} holds {name!r} ({kind}): a run goes into a new or empty folder, or replaces a run "
                       "folder of mnist-addition with --overwrite; choose another --output-dir")
    existing = _run_entries(real)
    if existing and not overwrite:
        if not list_checkpoints(real) and not files.is_real_file(real / FINISHED):
            raise RunError(f"{named} holds a run that stopped before its first checkpoint (nothing to resume): add "
                           "--overwrite to start it again there, or choose another --output-dir")
        raise RunError(f"{named} already holds a run ({', '.join(existing)}): choose another --output-dir, "
                       "resume it with --resume, or pass --overwrite to replace it")


def check_resumable(path: str | os.PathLike, locked: bool = False) -> None:
    """Raise RunError unless ``path`` is an unfinished run with at least one checkpoint."""
    named = Path(path)
    real = Path(os.path.realpath(named))
    if not real.is_dir():
        raise RunError(f"--resume {named}: no such run folder; pass the --output-dir of an earlier run")
    if not locked and files.lock_is_held(real / LOCK):
        raise _in_use(named, real)
    for name in (*RUN_DIRS, REPLACED):
        if os.path.lexists(real / name) and not files.is_real_dir(real / name):
            raise RunError(f"--resume {named}: {name} is {_kind(real, name)}, not the run's own folder: a run folder "
                           "is never followed out of; restore the folder")
    # a link at a file's name is replaced when the file is written; a folder or a fifo there cannot be
    strange = next((name for name in RUN_FILES if os.path.lexists(real / name) and not os.path.islink(real / name)
                    and not files.is_real_file(real / name)), None)
    if strange is not None:
        raise RunError(f"--resume {named}: {strange} is not a regular file (a folder, fifo or device), where the run "
                       "keeps a file of its own: the folder was altered; remove it and resume again")
    if not list_checkpoints(real):
        again = f"mnist-addition train --config {named / CONFIG} --overwrite" if files.is_real_file(real / CONFIG) \
            else f"your train command with --output-dir {named}"
        raise RunError(f"--resume {named}: the run has no checkpoints (it stopped before its first one): start it "
                       f"again with  {again}")
    if files.is_real_file(real / FINISHED):
        raise RunError(f"--resume {named}: that run already finished ({FINISHED} exists); nothing to resume")


class RunFolder:
    """The folder of one training run, held for the run's whole life (main process only).

    * One writer: an ``flock`` on RUN/.lock (released by the kernel if the process dies); a second
      writer is refused in one line naming the process that holds it (noted in the lock file).
    * The rules (module docstring) are checked before anything is created and again under the lock,
      so two runs started at the same moment cannot both pass them.
    * A refusal changes nothing: only folders this call created are removed, and the lock file is
      removed only by the process holding it.
    * ``overwrite`` loses nothing: the old run is moved into RUN/.replaced/ and removed only once the
      new run has written its first checkpoint; if the new run fails before that, it comes back.
    * A new run that fails before its first checkpoint leaves nothing (so "train again" works).
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False, overwrite: bool = False,
                 also: Callable[[Path], None] | None = None) -> None:
        self.named = Path(path)
        self.path = Path(os.path.realpath(self.named))
        self.resume, self.overwrite = resume, overwrite
        self.also = also  # the caller's own check of the folder, under the lock (fit: the resume rules)
        self._lock = files.FolderLock(self.path / LOCK)
        self._created: list[Path] = []
        self.outcome = ""  # after close(ok=False): "restored", "nothing", "resumable" or "finished"

    def _check(self) -> None:
        locked = self._lock.held
        check_resumable(self.named, locked) if self.resume else check_run_dir(self.named, self.overwrite, locked)

    def open(self) -> "RunFolder":
        """Check the rules, lock the folder (creating it if needed), and set an old run aside."""
        self._check()
        try:
            self._created = files.make_dirs(self.path)
            if not self._lock.acquire(files.holder_note()):
                files.remove_empty(self._created)  # a folder we made and someone else locked keeps their lock
                raise _in_use(self.named, self.path)
        except OSError as e:
            files.remove_empty(self._created)
            raise RunError(f"cannot write the run folder {self.named} ({e.strerror}): choose another --output-dir") from None
        try:
            self._check()  # again under the lock: another process may have finished a run here meanwhile
            if self.also is not None:
                self.also(self.path)
            self._remove_stale_temporaries()
            if self.overwrite and not self.resume:
                self._set_aside()
        except OSError as e:
            self._release()
            raise RunError(f"cannot write the run folder {self.named} ({e.strerror}): choose another --output-dir") from None
        except BaseException:
            self._release()
            raise
        return self

    def committed(self) -> None:
        """The new run has a checkpoint: the run it replaces can go."""
        if files.is_real_dir(self.path / REPLACED):
            shutil.rmtree(self.path / REPLACED, ignore_errors=True)

    def close(self, ok: bool) -> None:
        """Release the lock. A failed run: a replacement before its first checkpoint restores the old
        run, a new run before its first checkpoint leaves nothing; ``outcome`` says which."""
        if not ok:
            self.outcome = self._undo()
        self._release()

    def _undo(self) -> str:
        aside = self.path / REPLACED
        if files.is_real_dir(aside):
            self._remove_run()
            for item in aside.iterdir():
                os.replace(item, self.path / item.name)
            aside.rmdir()
            return "restored"
        if files.is_real_file(self.path / FINISHED):
            return "finished"
        if list_checkpoints(self.path):
            return "resumable"
        self._remove_run()
        return "nothing"

    def _release(self) -> None:
        if not self._lock.held:
            return
        empty = self.path in self._created and os.listdir(self.path) == [LOCK]
        if empty:  # a folder this run made and leaves empty goes; only the lock's holder removes the lock
            (self.path / LOCK).unlink(missing_ok=True)
        self._lock.release()
        if empty:
            files.remove_empty(self._created)
        self._created = []

    def _remove_run(self) -> None:
        for name in (*RUN_FILES, *RUN_DIRS):
            path = self.path / name
            if files.is_real_dir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                path.unlink()

    def _set_aside(self) -> None:
        aside = self.path / REPLACED
        if files.is_real_dir(aside):  # a crash while replacing: that run is still the one to keep
            return
        old = _run_entries(self.path)
        if old:
            aside.mkdir()
            for name in old:
                os.replace(self.path / name, aside / name)

    def _remove_stale_temporaries(self) -> None:
        """Temporary files and checkpoint folders a killed run left (never links: those are removed as links)."""
        for folder in (self.path, self.path / CHECKPOINTS):
            if not files.is_real_dir(folder):
                continue
            for entry in os.listdir(folder):
                path = folder / entry
                if not (entry.startswith(".") and (entry.endswith(".tmp") or entry.startswith(".tmp-"))):
                    continue
                if files.is_real_dir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def describe(outcome: str, run_dir: Any) -> str:
    """What an interrupted train leaves, in one line."""
    return {
        "restored": f"interrupted before the first checkpoint: the run that was in {run_dir} is back, unchanged",
        "nothing": "interrupted before the first checkpoint: nothing to resume; start again to train",
        "finished": f"interrupted after the run finished: {run_dir} is complete",
    }.get(outcome, f"interrupted: resume with  mnist-addition train --resume {run_dir}")
