"""The Tune callback that signs Ray's state at every save (see ``trust``). Imports Ray: loaded only
by the driver, inside ``run_sweep``.

Ray pickles a Tuner's callbacks into ``tuner.pkl``, so the callback must carry no secret: it is a
class of this importable module (pickled by reference), its instances pickle to nothing, and the
signer, with its key, is looked up in this process when Tune calls it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback

from .trust import SIGNATURES, Signer

_ACTIVE: list[Signer] = []  # the sweep this driver runs now


def activate(signer: Signer | None) -> None:
    """Make ``signer`` the one Tune's saves are signed with (None: no sweep running)."""
    _ACTIVE[:] = [signer] if signer is not None else []


class SignState(Callback):
    """Signs at every save of Tune's experiment state: Tune writes that state (and the searcher's)
    into the driver's staging folder, calls every callback's ``get_state``, then uploads the
    folder, so signing here puts the signatures beside the very bytes that are uploaded."""

    def __init__(self) -> None:
        self.staging: Path | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}  # nothing of this process (its key above all) goes into tuner.pkl

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.staging = None

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if trials and self.staging is None:
            self.staging = Path(trials[0].local_experiment_path)

    def get_state(self) -> None:
        if _ACTIVE and self.staging is not None and self.staging.is_dir():
            _ACTIVE[0].sign_folder(self.staging)
            (self.staging / SIGNATURES).write_bytes(_ACTIVE[0].payload())
        return None  # nothing to save (so Tune writes no callback pickle either)
