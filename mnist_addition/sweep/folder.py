"""The sweep folder a driver holds: ``STORAGE/NAME``, opened for a new sweep or a resume.

One writer: the driver holds an ``flock`` on ``NAME/.lock`` for its whole life (local storage; a
bucket has no locks), so a second ``tune --name NAME`` is refused in one line naming the process.
A new sweep needs a new folder (or one left by a sweep stopped before it wrote ``sweep.json``); a
resume needs ``sweep.json`` signed by this user (``trust``), whose options are checked again as if
they had been typed. A refusal changes nothing: folders this driver made are removed. No Ray here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import shown
from ..rundir import files
from ..rundir.names import FOLDER_STAMP, LOCK, SIGNATURES, SWEEP_FILE, stamp
from .options import SweepError, SweepOptions
from .spaces import Space, load_space, parse_space
from .storage import Store, absolute, experiment_uri
from .trust import Signer
from .warm import resolve

MAX_NAME_BYTES = 255  # a folder name, on every filesystem we know


@dataclass
class Sweep:
    """A sweep folder held by this driver: what was asked, the space, the folder, its signatures,
    and the lock that makes this driver its only writer (local storage; a bucket has no locks)."""

    options: SweepOptions
    space: Space
    store: Store
    signer: Signer
    lock: files.FolderLock | None = None
    created: list[Path] = field(default_factory=list)  # folders this driver made (removed if left empty)
    grown_from: int | None = None  # --resume --num-samples M: the trials the sweep had before (grow.py)

    def resume_command(self) -> str:
        return f"mnist-addition tune --resume --name {self.options.name} --storage-path {self.options.storage_path}"

    def close(self) -> None:
        """Release the folder; a new sweep that stopped before writing sweep.json leaves nothing."""
        if self.lock is None:
            return
        folder = Path(self.store.root)
        if self.created and sorted(os.listdir(folder)) in ([LOCK], [LOCK, SIGNATURES]):
            for name in (LOCK, SIGNATURES):
                (folder / name).unlink(missing_ok=True)
        self.lock.release()
        files.remove_empty(self.created)


def open_sweep(options: SweepOptions) -> Sweep:
    """Fill in defaults, take the sweep folder (one writer), load and check the space (or the
    signed sweep.json on --resume). No Ray yet."""
    options = dataclasses.replace(options)
    options.storage_path = absolute(options.storage_path)
    if "://" not in options.storage_path:
        for folder in [Path(options.storage_path), *Path(options.storage_path).parents]:
            if folder.exists():
                if not folder.is_dir():
                    raise SweepError(f"--storage-path {options.storage_path}: {folder} is a file, not a folder: "
                                     "choose another --storage-path")
                break
    if options.name is not None and (options.name in ("", ".", "..") or "/" in options.name or "\\" in options.name):
        raise SweepError(f"--name {shown(options.name)} must be one folder name inside --storage-path (no '/' or "
                         "'..'): e.g. --name lr-sweep")
    if options.name is not None and len(options.name.encode()) > MAX_NAME_BYTES:
        raise SweepError(f"--name is {len(options.name.encode())} bytes long, more than a folder name may be "
                         f"({MAX_NAME_BYTES}): choose a shorter --name")
    if options.resume:
        if not options.name:
            raise SweepError("--resume needs --name: the sweep to continue (a folder in --storage-path)")
        store = Store(experiment_uri(options.storage_path, options.name))
        if not store.exists(SWEEP_FILE):
            raise SweepError(f"--resume: {store.uri} is not a sweep started by mnist-addition tune (no {SWEEP_FILE}; "
                             "a sweep stopped before it began has none): check --storage-path and --name, or start "
                             "it again without --resume")
        sweep = _take(options, store)
        try:
            sweep.signer = Signer.verified(store)  # before anything in the folder is read
            asked = options.num_samples
            sweep.space, saved = _restore_options(sweep.options, store)
            sweep.grown_from = _grow(sweep, saved, asked)
        except BaseException:
            sweep.close()
            raise
        return sweep
    space = load_space(options.space)
    options.seeds = options.seeds or space.seeds or 1  # --seeds, else the space's seeds:, else one
    options.check()
    options.warm_start = tuple(resolve(source, options.storage_path) for source in options.warm_start)
    options.name = options.name or f"tune-{stamp(FOLDER_STAMP)}"
    store = Store(experiment_uri(options.storage_path, options.name))
    _refuse_existing(store)
    sweep = _take(options, store)
    try:
        _refuse_existing(store)  # again, holding the lock: another driver may have begun it meanwhile
        sweep.space, sweep.signer = space, Signer.new(store)
    except BaseException:
        sweep.close()
        raise
    return sweep


def _refuse_existing(store: Store) -> None:
    """A new sweep goes into a new folder, or one left by a sweep stopped before it wrote sweep.json."""
    left = {LOCK, SIGNATURES, ".validate_storage_marker"}
    if store.exists() and (not store.local or not set(os.listdir(store.root)) <= left or store.exists(SWEEP_FILE)):
        raise SweepError(f"{store.uri} already exists: pass --resume to continue that sweep, or choose another --name")


def _take(options: SweepOptions, store: Store) -> Sweep:
    """The sweep folder, locked by this driver: a second driver for the same --name is refused."""
    sweep = Sweep(options, None, store, None)  # type: ignore[arg-type]  (space and signer: filled in by open_sweep)
    if not store.local:
        return sweep
    folder = Path(store.root)
    try:
        sweep.created = files.make_dirs(folder)
        lock = files.FolderLock(folder / LOCK)
        if not lock.acquire(files.holder_note()):
            files.remove_empty(sweep.created)
            raise SweepError(f"{store.uri} is in use by {files.lock_holder(folder / LOCK)}: wait for that sweep to "
                             "finish, or choose another --name")
    except OSError as e:
        files.remove_empty(sweep.created)
        raise SweepError(f"cannot write the sweep folder {store.uri} ({e.strerror or e}): choose another "
                         "--storage-path or --name") from None
    sweep.lock = lock
    return sweep


def write_sweep_json(store: Store, signer: Signer, document: dict[str, Any]) -> None:
    """Write ``sweep.json``, its signature saved first: it is never there without one."""
    data = json.dumps(document, indent=2).encode()
    signer.sign(SWEEP_FILE, data)
    signer.save()
    store.write(SWEEP_FILE, data)


def _grow(sweep: Sweep, saved: dict[str, Any], asked: int | None) -> int | None:
    """--resume --num-samples M: the sweep's new size, checked and saved in ``saved`` (sweep.json,
    signed); returns the size it had (None: it does not grow)."""
    options, had = sweep.options, sweep.options.num_samples
    if asked is None or asked == had:
        return None
    if asked < had:
        raise SweepError(f"--num-samples {asked} is fewer than the {had} trials of {sweep.store.uri}: a sweep grows, "
                         "it does not shrink; leave --num-samples out to finish it")
    if options.scheduler == "pbt":
        raise SweepError("--num-samples cannot grow a pbt sweep: its population is fixed; start a new sweep under "
                         "another --name")
    saved["options"]["num_samples"] = options.num_samples = asked
    write_sweep_json(sweep.store, sweep.signer, saved)
    return had


LATER = {"seeds": 1, "warm_start": ()}  # options that sweeps saved before them did not have: what they meant


def _restore_options(options: SweepOptions, store: Store) -> tuple[Space, dict[str, Any]]:
    """The sweep-defining options and the space from ``sweep.json``, checked as when they were given;
    returns the space and the document read."""
    where = store.where(SWEEP_FILE)
    try:
        saved = json.loads(store.read_small(SWEEP_FILE))
        for key in SweepOptions.SWEEP_DEFINING:  # a sweep from before --seeds trained one seed a trial
            setattr(options, key, saved["options"].get(key, LATER[key]) if key in LATER else saved["options"][key])
        options.__post_init__()  # a metric list from JSON as a tuple
        if options.data_dir is None:
            options.data_dir = saved["options"]["data_dir"]
        space_doc, space_path = saved["space"], str(saved["options"]["space"])
        options.check()
    except SweepError as e:
        raise SweepError(f"{where} holds options that are refused ({e}): start a new sweep under another --name") from None
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise SweepError(f"{where} is not what mnist-addition tune writes ({type(e).__name__}: {shown(str(e))}): "
                         "restore it, or start a new sweep under another --name") from None
    return parse_space(space_doc, space_path), saved
