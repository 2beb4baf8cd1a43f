"""When and what the training loop saves: ``Checkpointer.due`` / ``Checkpointer.save``.

The checkpointer owns the interval (``--checkpoint-every`` global steps, and every epoch's end),
the finite check before anything is saved (a diverged run never writes a NaN checkpoint), the
commit of the run folder (an old run set aside by ``--overwrite`` goes once the new one has a
checkpoint), pruning to ``--keep-checkpoints``, and the callback to the caller (a sweep trial
reports each checkpoint to Ray). The file format is ``checkpoint.py``'s. Every process calls
``save``; the main process writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..core.errors import EXIT_FAILED, UserError
from ..rundir import checkpoint as checkpoint_io
from ..rundir.folder import RunFolder
from .state import Run, TrainState


class TrainingDiverged(UserError):
    """The loss or the weights stopped being finite numbers; nothing non-finite was saved."""

    exit_code = EXIT_FAILED


class Checkpointer:
    """Checkpoints of one run (none without a run folder: then only the finite check runs)."""

    def __init__(self, run: Run, folder: RunFolder | None, on_checkpoint: Callable[[Path], None] | None = None):
        self.run, self.folder, self.on_checkpoint = run, folder, on_checkpoint
        self.every = run.config.checkpoint_every if run.run_dir else 0
        self.checked = 0  # the last step of the epoch at which the loss and weights were known to be finite

    def begin_epoch(self, state: TrainState) -> None:
        self.checked = state.step

    def due(self, state: TrainState) -> bool:
        """A mid-epoch checkpoint is due after this step (the epoch's last one is saved at its end)."""
        return bool(self.every) and state.global_step % self.every == 0 and state.step < state.steps

    def check_finite(self, state: TrainState, loss_sum: torch.Tensor) -> None:
        """Stop if the running loss or any weight is NaN or infinite (on any process). A device sync:
        called only before checkpoints and at epoch ends, so a bad state is never saved."""
        run = self.run
        finite = torch.isfinite(loss_sum) & torch.stack([torch.isfinite(p).all() for p in run.model.parameters()]).all()
        if run.accelerator.reduce((~finite).float(), reduction="sum").item() == 0:
            self.checked = state.step
            return
        found = checkpoint_io.list_checkpoints(run.run_dir) if run.run_dir else []
        kept = found[-1].name if found else None
        lr = run.lr_at(state.global_step - 1)
        raise TrainingDiverged(
            f"training diverged in epoch {state.epoch} between steps {self.checked} and {state.step} of {state.steps}: "
            f"the loss or the weights became NaN or infinite (learning rate {lr:.3g} there); lower --lr (now "
            f"{run.config.lr:g})" + (" or train in fp32 (--mixed-precision no)" if run.accelerator.mixed_precision != "no"
                                     else "")
            + (f"; the last good checkpoint, {kept}, is kept" if kept else "") + "; no weights were saved")

    def save(self, state: TrainState, loss_sum: torch.Tensor | None = None, seconds: float | None = None) -> None:
        """Checkpoint the model, optimizer and ``state``. Mid-epoch, ``loss_sum`` is the running loss
        (checked finite, then averaged over processes so that every process resumes from the same sum)
        and ``seconds`` the training time so far; at an epoch's end both are in ``state``."""
        run = self.run
        if run.run_dir is None:
            return
        saved = state.state_dict(run.identity())
        if loss_sum is not None:
            self.check_finite(state, loss_sum)
            saved["loss_sum"] = run.accelerator.reduce(loss_sum.clone(), reduction="mean").item()
        if seconds is not None:
            saved["train_seconds"] = seconds
        path = checkpoint_io.checkpoint_dir(run.run_dir, state.global_step)
        if run.main:
            checkpoint_io.write_checkpoint(run.accelerator.unwrap_model(run.model), run.optimizer, run.run_dir,
                                           state.global_step, saved,
                                           run.average.state_dict() if run.average is not None else None)
            checkpoint_io.prune(run.run_dir, run.config.keep_checkpoints)
        run.accelerator.wait_for_everyone()
        if self.folder is not None:
            self.folder.committed()  # the run this one replaces may go now
        if self.on_checkpoint is not None:
            self.on_checkpoint(path)
