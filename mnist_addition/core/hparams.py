"""Hyperparameters that change during a run: ``TrainConfig.hparam_schedule``.

A run's config holds its first epoch's values (``lr``, ``weight_decay``, ``sum_weight``,
``label_smoothing``); ``hparam_schedule`` lists later changes, each from the start of an epoch:

    "hparam_schedule": [{"epoch": 3, "lr": 0.004}, {"epoch": 5, "lr": 0.0032, "sum_weight": 0.6}]

Population-based training (``tune --scheduler pbt``) finds such schedules: a trial that copies a
better trial's weights at the end of epoch E continues with perturbed values from epoch E + 1.
That trial's config is the copied trial's schedule up to epoch E and its own values after it
(``continued``), so its ``config.json`` (and a sweep's ``best_config.json``) replays the whole
schedule from scratch with ``train --config``. The learning rate may change only under the
``constant`` schedule: a one-cycle schedule's peak changed mid-cycle is not a learning rate a
change can be reasoned about (docs/sweeps.md#population-based-training).

No torch here: the rules are checked when a config is built.
"""

from __future__ import annotations

from typing import Any

# What may change during a run (and what PBT perturbs).
SCHEDULED = ("lr", "weight_decay", "sum_weight", "label_smoothing")
# Far more changes than any schedule needs (PBT makes one per perturbation); each is checked as a config.
MAX_CHANGES = 1000


def values_at(config: Any, epoch: int) -> dict[str, float]:
    """The scheduled values in effect in (1-based) ``epoch``."""
    values = {name: getattr(config, name) for name in SCHEDULED}
    for change in config.hparam_schedule:
        if change["epoch"] <= epoch:
            values.update({k: v for k, v in change.items() if k != "epoch"})
    return values


def per_epoch(config: Any, name: str) -> list[float]:
    """``name``'s value in each epoch, 1 to ``config.epochs`` (one pass: epochs may be many)."""
    starts = {change["epoch"]: change[name] for change in config.hparam_schedule if name in change}
    value, values = getattr(config, name), []
    for epoch in range(1, config.epochs + 1):
        value = starts.get(epoch, value)
        values.append(value)
    return values


def segments(config: Any) -> list[dict[str, Any]]:
    """Every value of every stretch of epochs: ``[{"epoch": 1, lr, ...}, {"epoch": 3, lr, ...}]``
    (saved in each checkpoint, so that a run continuing from it knows the past it continues)."""
    starts = [1, *(change["epoch"] for change in config.hparam_schedule)]
    return [{"epoch": e, **values_at(config, e)} for e in starts]


def continued(config: Any, past: list[dict[str, Any]], epoch: int) -> Any:
    """``config`` (its scheduled fields: the values from ``epoch + 1`` on) continuing a run whose
    stretches were ``past`` (``segments`` of the run it continues) up to the end of ``epoch``."""
    stretches = [s for s in past if s["epoch"] <= epoch]
    new = {name: getattr(config, name) for name in SCHEDULED}
    if epoch < config.epochs and new != {k: stretches[-1][k] for k in SCHEDULED}:
        stretches.append({"epoch": epoch + 1, **new})
    changes = [{"epoch": s["epoch"], **{k: s[k] for k in SCHEDULED if s[k] != before[k]}}
               for before, s in zip(stretches, stretches[1:])]
    return config.replace(**{k: stretches[0][k] for k in SCHEDULED}, hparam_schedule=[c for c in changes if len(c) > 1])


def disagreement(config: Any, past: list[dict[str, Any]], epoch: int) -> str | None:
    """Where ``config`` says other values than ``past`` held in epochs 1..``epoch``, or None."""
    for e in range(1, epoch + 1):
        held = next(s for s in reversed(past) if s["epoch"] <= e)
        said = values_at(config, e)
        for name in SCHEDULED:
            if said[name] != held[name]:
                return f"{name} was {held[name]!r} in epoch {e}, the config says {said[name]!r}"
    return None


def check_schedule(config: Any) -> str | None:
    """What is wrong with ``config.hparam_schedule`` (one clause naming the entry), or None."""
    if len(config.hparam_schedule) > MAX_CHANGES:
        return f"holds {len(config.hparam_schedule):,} changes, at most {MAX_CHANGES:,}"
    previous = 1
    for i, change in enumerate(config.hparam_schedule, 1):
        where = f"entry {i}"
        if not isinstance(change, dict) or not isinstance(change.get("epoch"), int) or isinstance(change["epoch"], bool):
            return f"{where} is not an object with a whole-number \"epoch\""
        epoch = change["epoch"]
        if not previous < epoch <= config.epochs:
            return (f"{where} starts at epoch {epoch}: each entry starts later than the one before (the first at "
                    f"epoch 2 or later) and within the run's {config.epochs} epochs")
        previous = epoch
        unknown = [k for k in change if k not in ("epoch", *SCHEDULED)]
        if unknown or len(change) == 1:
            return (f"{where} (epoch {epoch}) changes {unknown[0]!r}, which cannot change during a run" if unknown
                    else f"{where} (epoch {epoch}) changes nothing") + f": an entry sets some of {', '.join(SCHEDULED)}"
        if "lr" in change and config.schedule != "constant":
            return (f"{where} (epoch {epoch}) changes lr under --schedule {config.schedule}: a changed learning "
                    "rate needs --schedule constant")
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) for k, v in change.items()):
            return f"{where} (epoch {epoch}) holds a value that is not a number"
    return None
