"""The Tune callback that runs at every save of Ray's state (see ``trust``): it signs the state and
notes the trials' statuses as saved. Imports Ray: loaded only by the driver, inside ``run_sweep``.

Ray pickles a Tuner's callbacks into ``tuner.pkl``, so the callback must carry no secret: it is a
class of this importable module (pickled by reference), its instances pickle to nothing, and the
sweep it serves (the signer, with its key) is looked up in this process when Tune calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ..rundir.names import SIGNATURES
from .trust import Signer


@dataclass
class Saves:
    """The sweep this driver runs now, as its saves go."""

    signer: Signer
    # each trial's status in Ray's last save: what a resume will find (after an interrupt, Tune
    # marks the trials it stops TERMINATED in memory, though they are unfinished)
    statuses: dict[str, str] | None = None


_ACTIVE: list[Saves] = []


def activate(saves: Saves | None) -> None:
    """Make ``saves`` the sweep Tune's saves are signed for (None: no sweep running)."""
    _ACTIVE[:] = [saves] if saves is not None else []


class SignState(Callback):
    """At every save of Tune's experiment state: Tune writes that state (and the searcher's) into the
    driver's staging folder, calls every callback's ``get_state``, then uploads the folder in the
    background. Here, in between, the new versions are signed and the signatures written to the
    sweep folder before the upload begins (``trust``: the older versions' stay valid too)."""

    def __init__(self) -> None:
        self.staging: Path | None = None
        self.trials: list = []

    def __getstate__(self) -> dict[str, Any]:
        return {}  # nothing of this process (its key above all) goes into tuner.pkl

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        # Tune's own list, empty at the first step: the trials it adds in that step, before its
        # first save, appear in it
        self.trials = trials

    def get_state(self) -> None:
        if self.staging is None and self.trials:
            self.staging = Path(self.trials[0].local_experiment_path)
        if _ACTIVE and self.staging is not None and self.staging.is_dir():
            saves = _ACTIVE[0]
            saves.signer.sign_folder(self.staging)
            # a copy Ray fetched on restore would be uploaded over the newer one: the sweep folder's is ours alone
            (self.staging / SIGNATURES).unlink(missing_ok=True)
            saves.signer.save()
            saves.statuses = {t.trial_id: t.status for t in self.trials}
        return None  # nothing to save (so Tune writes no callback pickle either)
