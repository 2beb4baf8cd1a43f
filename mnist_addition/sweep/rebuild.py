"""A sweep resumed without Ray's saved state, which cannot be trusted (``trust``) or is not there.

When ``tune --resume`` finds Ray's state incomplete (the driver was killed before Ray's first save,
or in the middle of Ray's write of a file) or a file of it that this user's key did not sign, that
state is never loaded: it is moved to ``NAME/.unverified/<time>/`` (never read again; delete it
at will), and the sweep starts again from ``sweep.json`` with a new Tuner, keeping what the
trials did. A new trial whose sampled values are those of an earlier trial (random search and PBT
sample the same values in the same order from ``--seed``; Optuna's first trials too, and the
later ones while its history repeats) continues that trial: it reports the epochs the earlier
trial's newest valid checkpoint recorded, so that the scheduler and the searcher see what they
saw before, then trains on from that checkpoint. Checkpoints are our files (safetensors and JSON
behind a SHA-256 manifest, never unpickled), read like any run's.

No Ray here: the driver lists the earlier trials, the trial (``trial.py``) picks its own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..rundir.names import FOLDER_STAMP, SWEEP_FILE, UNVERIFIED, stamp
from .storage import Store
from .trust import Signer, needs_signature

TRIAL_PREFIX, TRAIN_PREFIX = "trial-", "train-"  # a trial's folder, and a multi-worker trial's Ray Train run
_INDEX = re.compile(r".*_(\d{5})$")  # Ray's BasicVariantGenerator names trials PREFIX_00007
_CHECKPOINT = re.compile(r"^((?:trial|train)-[^/]+)/(checkpoint_[^/]+)/trainer_state\.json$")
MAX_PARAMS_BYTES = 1 << 20


@dataclass(frozen=True)
class Earlier:
    """A trial of the sweep before it was rebuilt: what it sampled, and its checkpoints."""

    folder: str  # trial-ID, in the sweep folder
    index: int | None  # its sample number, where Ray's trial id says it
    params: dict[str, Any]  # its sampled values (Ray's params.json), the searched keys only
    checkpoints: tuple[str, ...]  # folders in the sweep folder, newest first


def sample_index(trial_id: str) -> int | None:
    match = _INDEX.match(trial_id)
    return int(match.group(1)) if match else None


def set_aside(store: Store, signer: Signer) -> list[str]:
    """Move Ray's state out of Ray's way: every file of it at the top of the sweep folder, and
    every other file that failed its check, into ``.unverified/<time>/``. Returns what moved."""
    moving = sorted({*signer.unverified, *(p for p, _ in store.walk() if "/" not in p and needs_signature(p)
                                           and p != SWEEP_FILE)})
    folder = f"{UNVERIFIED}/{stamp(FOLDER_STAMP)}"
    for relpath in moving:
        store.move(relpath, f"{folder}/{relpath}")
        signer.forget(relpath)
    signer.unverified = []
    return moving


def earlier_trials(store: Store, keys: list[str]) -> list[Earlier]:
    """The trials in the sweep folder with their sampled values and checkpoints (newest first)."""
    checkpoints: dict[str, list[str]] = {}
    params_files = []
    for relpath, _ in store.walk():
        match = _CHECKPOINT.match(relpath)
        if match:
            owner = match.group(1).removeprefix(TRIAL_PREFIX).removeprefix(TRAIN_PREFIX)
            checkpoints.setdefault(owner, []).append(f"{match.group(1)}/{match.group(2)}")
        parts = relpath.split("/")
        if len(parts) == 2 and parts[1] == "params.json" and parts[0].startswith(TRIAL_PREFIX):
            params_files.append(relpath)
    found = []
    for relpath in params_files:
        try:
            params = json.loads(store.read_small(relpath, MAX_PARAMS_BYTES))
        except (OSError, ValueError, RecursionError):
            continue  # a trial whose values cannot be read is not continued: its config trains again
        if not isinstance(params, dict) or not all(k in params for k in keys):
            continue
        folder = relpath.split("/")[0]
        trial_id = folder.removeprefix(TRIAL_PREFIX)
        found.append(Earlier(folder, sample_index(trial_id), {k: params[k] for k in keys},
                             tuple(sorted(checkpoints.get(trial_id, []), reverse=True))))
    return [e for e in found if e.checkpoints]


def match(earlier: list[Earlier], trial_id: str, params: dict[str, Any], by_index_only: bool = False) -> Earlier | None:
    """The earlier trial that a new one continues: the same sample number and values, else the one
    earlier trial with these values (two earlier trials with the same values: none; the
    sample number decides). ``by_index_only`` (PBT, whose values change as it goes): the number."""
    index = sample_index(trial_id)
    same_index = [e for e in earlier if index is not None and e.index == index]
    if by_index_only:
        return same_index[0] if same_index else None
    same = [e for e in earlier if e.params == params]
    return next((e for e in same if e in same_index), same[0] if len(same) == 1 else None)
