"""What may change when a run resumes: the rule, and the config a resumed run trains with.

A resumed run is the same run: its maths (model, optimiser, schedule, data, seed, precision,
accumulation, where it is compiled) is fixed by the run folder's ``config.json``. Only the fields
declared ``resumable`` on ``TrainConfig`` (where the data is, how often to log and checkpoint, how
many checkpoints to keep, the evaluation batch) may change. Values are compared, not flags: giving
a flag with the value the run already has is accepted. ``fit(config, resume=True)`` enforces the
rule itself, so the command line and the Python API refuse the same things.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..core.config import ConfigError, TrainConfig, flag, resumable_fields
from ..rundir.checkpoint import list_checkpoints
from ..rundir.contents import read_run_config
from ..rundir.folder import check_resumable, check_run_dir, holds_run
from ..rundir.names import CONFIG, FINISHED

# Options of `train` that start (or decide) a run: never combined with --resume.
NEW_RUN_OPTIONS = ("config", "smoke", "overwrite", "auto_resume")


def changed_fields(saved: TrainConfig, config: TrainConfig | dict[str, Any]) -> list[str]:
    """The fields of ``config`` (a config, or the values typed) that differ from the run's own and
    may not change on resume (``output_dir``, the run folder itself, is ``resumed_config``'s to check)."""
    values = config.to_dict() if isinstance(config, TrainConfig) else config
    allowed = resumable_fields() | {"output_dir"}
    return sorted(k for k, v in values.items() if k not in allowed and v != getattr(saved, k))


def check_unchanged(run_dir: str | os.PathLike, saved: TrainConfig, config: TrainConfig | dict[str, Any]) -> None:
    """Refuse, in one line naming the flag and both values, a resume that changes the run's maths."""
    changed = changed_fields(saved, config)
    if changed:
        name = changed[0]
        new = (config.to_dict() if isinstance(config, TrainConfig) else config)[name]
        raise ConfigError(f"{flag(name)} cannot change when resuming ({Path(run_dir) / 'config.json'} has "
                          f"{getattr(saved, name)!r}, not {new!r}): drop the flag, or start a new run with "
                          f"--config {Path(run_dir) / 'config.json'}")


def resumed_config(run_dir: str | os.PathLike, given: dict[str, Any] | None = None,
                   options: dict[str, bool] | None = None) -> TrainConfig:
    """The config ``train --resume RUN_DIR`` trains with: the run's config.json, with the
    ``resumable`` values of ``given`` (the flags typed; the others must equal the run's).
    ``options``: the new-run options typed (``config``, ``smoke``, ``overwrite``), all refused."""
    for option, value in (options or {}).items():
        if value:
            raise ConfigError(f"{flag(option)} cannot be combined with --resume: a resumed run keeps its own config")
    given = dict(given or {})
    output_dir = given.pop("output_dir", None)
    if output_dir is not None and os.path.realpath(output_dir) != os.path.realpath(run_dir):
        raise ConfigError(f"--output-dir cannot be combined with --resume: the run continues in its own folder "
                          f"{run_dir}; drop --output-dir (copy the folder first to continue it elsewhere)")
    check_resumable(run_dir)
    saved = read_run_config(run_dir)[0]
    check_unchanged(run_dir, saved, given)
    return saved.replace(**{k: v for k, v in given.items() if k in resumable_fields()}, output_dir=str(run_dir))


def check_resume(run_dir: Path, config: TrainConfig) -> None:
    """``fit``'s check, under the run folder's lock: ``config`` may differ from the run's config.json
    only in resumable fields. A folder without config.json (a checkpoint a sweep restored into a
    fresh folder) is checked against the checkpoint itself when it is loaded."""
    if (run_dir / CONFIG).exists():
        check_unchanged(run_dir, read_run_config(run_dir)[0], config)


def auto_resume_mode(run_dir: str | os.PathLike, config: TrainConfig) -> str:
    """What ``train --auto-resume`` does with ``run_dir`` for ``config`` (the command's own config),
    so that one command serves the first start and every restart (torchrun --max-restarts, SLURM
    --requeue, a Kubernetes restart policy): ``"new"`` for a missing or empty folder, ``"resume"``
    for this run's checkpoints, ``"finished"`` for this run finished (nothing to do), ``"overwrite"``
    for this run stopped before its first checkpoint (it starts again; the old files are kept until
    the new run's first checkpoint). A folder holding another config's run, or anything else, is
    refused in one line."""
    if not holds_run(run_dir):
        check_run_dir(run_dir)  # missing or empty (or refused: not a run folder)
        return "new"
    check_run_dir(run_dir, overwrite=True)  # a run folder of ours, not in use by another process
    saved = read_run_config(run_dir)[0]
    changed = changed_fields(saved, config)
    if changed:
        name = changed[0]
        raise ConfigError(f"--auto-resume: {run_dir} holds another run ({flag(name)} is {getattr(saved, name)!r} "
                          f"there, {getattr(config, name)!r} here): choose another --output-dir, or give the "
                          "flags of that run to continue it")
    if (Path(run_dir) / FINISHED).is_file():
        return "finished"
    return "resume" if list_checkpoints(Path(run_dir)) else "overwrite"
