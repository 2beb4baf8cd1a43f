"""Ray's OptunaSearch started from prior observations (``warm.Prior``): ``tune --warm-start``.

A module of its own because it imports Ray, and a class at module level because Tune pickles its
searcher with the sweep's state (``tuner.pkl``, signed like the rest: ``trust``).
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

from .warm import Prior


class WarmOptunaSearch(OptunaSearch):
    """OptunaSearch whose study holds ``prior``'s trials, as completed trials, before its first suggestion."""

    def __init__(self, prior: Prior, **kwargs: Any) -> None:
        self.prior = prior
        super().__init__(**kwargs)

    def _setup_study(self, mode: Any) -> None:
        super()._setup_study(mode)
        add_prior(self._ot_study, self._space, self.prior)


def add_prior(study: Any, distributions: dict[str, Any], prior: Prior) -> None:
    """Add each prior trial to an Optuna study as a completed trial (Optuna's ``create_trial`` checks
    each value against its distribution)."""
    import optuna

    for params, values in zip(prior.points, prior.values):
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, values=values))
