"""Weight averaging (``--ema``): an exponential moving average of the model's weights, the one a
run evaluates, checkpoints and ships.

The average is a second copy of the model, in eval mode and without gradients. After every
optimizer step each of its floating-point tensors (weights *and* BatchNorm statistics) moves a
fraction ``1 - d`` of the way to the model's; integer buffers (BatchNorm's step count) are copied.
``d`` ramps up as ``min(decay, (1 + t) / (10 + t))`` after ``t`` steps, as timm's ``ModelEma``
does, so the random initial weights are forgotten in a short run too. Everything is a pure function
of the weights and the global step, so a resumed run averages bit for bit like one never stopped,
once the average is restored from the checkpoint (``checkpoint.EMA_FILE``).

Training is unchanged by the average: the optimizer steps the model, never the copy, so a run with
``--ema`` trains exactly the weights of the same run without it and only evaluates other ones.
"""

from __future__ import annotations

import copy

import torch


def decay_at(decay: float, updates: int) -> float:
    """The decay of the ``updates``-th update (1-based): ``decay``, less at first."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightAverage:
    """The moving average of ``model``'s state_dict (``model`` unwrapped: no DDP or compile wrapper)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        # state_dict tensors share storage with the modules' own: bound once, updated in place
        mine, theirs = self.module.state_dict(), model.state_dict()
        floats = [k for k in mine if mine[k].is_floating_point()]
        self._floats = [mine[k] for k in floats], [theirs[k] for k in floats]
        self._counts = [(mine[k], theirs[k]) for k in mine if k not in floats]

    @torch.no_grad()
    def update(self, updates: int) -> None:
        """Average in the model's tensors after its ``updates``-th optimizer step (1-based)."""
        torch._foreach_lerp_(*self._floats, 1.0 - decay_at(self.decay, updates))
        self._copy_counts()

    @torch.no_grad()
    def reset(self) -> None:
        """Start the average again from the model's current weights."""
        torch._foreach_copy_(*self._floats)
        self._copy_counts()

    def _copy_counts(self) -> None:
        for mine, theirs in self._counts:
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    @torch.no_grad()
    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(tensors)  # in place: the bound tensors stay the module's
