"""Population-based training: ``tune --scheduler pbt``.

Every ``--perturbation-epochs`` epochs, Ray Tune's ``PopulationBasedTraining`` lets the worst
quarter of the population copy the weights of the best quarter and go on with those trials'
values perturbed (x0.8 or x1.2, or resampled from the space with probability 1/4), kept inside
the space's bounds. What it perturbs: the scheduled fields the space searches (``hparams.SCHEDULED``:
lr, weight_decay, sum_weight, label_smoothing); every other searched key is sampled once per trial
and copied with the weights.

Choices (docs/sweeps.md#population-based-training):

* the learning rate is **constant** between perturbations (the sweep sets ``schedule: constant``;
  a space asking for another schedule is refused): the value PBT perturbs is the one training uses,
  and PBT's own perturbations are the schedule it finds;
* the population is **synchronous**: every member reaches the perturbation epoch before any is
  perturbed, so the decisions do not depend on which trial happened to run first, a population
  larger than the machine still works (members pause in turn), and with ``--seed`` the draws repeat;
* a trial that copies another continues it through the core's explicit path
  (``fit(continue_from=...)``), not resume: its config is the copied trial's schedule up to the
  copy and its own values after it, so the winner's ``config.json`` (``best_config.json``) replays
  the whole schedule from scratch with ``train --config``.

No Ray at import: the checks run before Ray starts.
"""

from __future__ import annotations

from typing import Any

from ..core.hparams import SCHEDULED
from .options import SweepError, SweepOptions
from .spaces import Space


def check(options: SweepOptions, space: Space, base: dict[str, Any], epochs: int) -> list[str]:
    """The keys PBT perturbs; SweepError (one line) for a space or options it cannot run."""
    mutated = [k for k in SCHEDULED if k in space.search]
    if not mutated:
        raise SweepError(f"--scheduler pbt perturbs {', '.join(SCHEDULED)} during training, and search space "
                         f"{space.path} searches none of them: add one, e.g. lr: {{loguniform: [0.001, 0.02]}}")
    if "epochs" in space.search:
        raise SweepError(f"--scheduler pbt: search space {space.path} searches epochs, but a population trains "
                         "together for the same epochs: fix epochs under 'fixed:'")
    if "schedule" in space.search or base.get("schedule", "constant") != "constant":
        raise SweepError(f"--scheduler pbt trains with a constant learning rate between its perturbations, and "
                         f"search space {space.path} sets the schedule: remove schedule from the space (or fix it "
                         "to constant)")
    if options.perturbation_epochs >= epochs:
        raise SweepError(f"--perturbation-epochs {options.perturbation_epochs} leaves no perturbation in the "
                         f"trials' {epochs} epochs: use fewer (e.g. {max(1, epochs // 3)}) or train longer")
    return mutated


class Clip:
    """PBT's explore step multiplies a value by 0.8 or 1.2: keep it inside the space's bounds (a
    perturbed sum_weight of 1.1 is a trial ``train`` would refuse). A class, not a closure:
    Ray pickles the scheduler with the sweep's state."""

    def __init__(self, bounds: dict[str, tuple[float, float]]):
        self.bounds = bounds

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for key, (low, high) in self.bounds.items():
            if isinstance(config.get(key), (int, float)):
                config[key] = min(max(config[key], low), high)
        return config


def scheduler(options: SweepOptions, space: Space, mutations: dict[str, Any]) -> Any:
    """Ray's PopulationBasedTraining over ``mutations`` (Ray sampling objects of the perturbed keys)."""
    import random

    import numpy as np
    from ray.tune.schedulers import PopulationBasedTraining

    # PBT draws with Python's random module and the space's samplers with NumPy's global generator
    random.seed(options.seed)
    np.random.seed(options.seed)
    bounds = {k: space.search[k].values for k in mutations if space.search[k].kind != "choice"}
    return PopulationBasedTraining(time_attr="epoch", perturbation_interval=options.perturbation_epochs,
                                   hyperparam_mutations=mutations, custom_explore_fn=Clip(bounds), synch=True,
                                   quantile_fraction=0.25, resample_probability=0.25, log_config=False)
