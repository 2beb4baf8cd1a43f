"""Experiment trackers (``--log-with mlflow,tensorboard``): Accelerate's own tracker classes, given
the run's identity, so that a resumed run continues the same tracker run.

Accelerate speaks to every tracker (``accelerate.tracking``); what this module adds is what a run
folder knows and Accelerate does not:

* **which run to continue.** The first start of a run writes ``trackers.json`` into the run folder:
  the MLflow run id (and the store and experiment it lives in), the W&B run id, the Aim run hash
  and repository. ``--resume``/``--auto-resume`` hand them back to the tracker, so a run
  interrupted three times is one tracker run with one curve. A tracker the run did not log to
  before (added on resume) starts its run and is given the epochs already trained.
* **what to log.** The resolved config and the set-up (device, precision, processes) as
  hyperparameters; each epoch's row (train loss, validation metrics, lr, images/s) at the global
  step; the test metrics at the end; and the files (``curves.png``, the confusion matrices,
  ``config.json``) where the tracker stores files (MLflow, W&B) or as images (TensorBoard, Aim).
* **how a run ended.** Finished, or (MLflow) ``KILLED`` when interrupted and ``FAILED`` on an error.

Where each tracker writes follows its own conventions (``MLFLOW_TRACKING_URI``,
``MLFLOW_EXPERIMENT_NAME``, ``WANDB_MODE``/``WANDB_PROJECT``/``WANDB_DIR``, the nearest ``.aim``
repository); TensorBoard writes ``RUN/tensorboard``. docs/tracking.md has the offline set-up of each.
Trackers live on the main process only (Accelerate's ``on_main_process``).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from ..core.config import TRACKERS, ConfigError, TrainConfig, read_json_file
from ..core.errors import first_line, shown
from ..rundir import contents, files
from ..rundir.names import CONFIG, CURVES, REPORT_FILES
from ..rundir.names import TRACKERS as TRACKERS_FILE
from . import stores
from .stores import TrackerError

PROJECT = "mnist-addition"  # the MLflow experiment, W&B project and Aim experiment unless their variables say otherwise
UPLOADED = (CURVES, *REPORT_FILES[:2], CONFIG)  # curves.png, the two confusion matrices, config.json
_PACKAGES = {"comet_ml": "comet-ml"}  # where the pip name differs from the tracker's
_ID_KEYS = {"mlflow": "run_id", "wandb": "id", "aim": "run_hash", "tensorboard": "logdir"}  # what trackers.json must hold


def check(config: TrainConfig) -> None:
    """What ``--log-with`` needs, checked once before a run starts (``run.train``), in seconds: a run
    folder, each tracker installed (``check_trackers``), and its store usable (``stores.check``)."""
    if config.trackers and not config.output_dir:
        raise ConfigError(f"--log-with {config.log_with} needs a run folder: pass --output-dir")
    check_trackers(config.trackers)
    stores.check(config.trackers)


def check_trackers(names: tuple[str, ...]) -> None:
    """Every tracker asked for is one this Accelerate knows and whose package is installed: else one
    line."""
    import accelerate
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise TrackerError(f"--log-with {name}: Accelerate {accelerate.__version__} has no {name} tracker: "
                               f"upgrade it (pip install -U accelerate) or use one of {', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
        if name not in available:
            raise TrackerError(f"--log-with {name} needs the {_PACKAGES.get(name, name)} package: "
                               f"pip install -e \".[{name}]\" (or pip install {_PACKAGES.get(name, name)})")


def saved_ids(run_dir: Path) -> dict[str, dict[str, str]]:
    """The tracker runs a run folder logged to (``trackers.json``), checked: {} if there is none."""
    path = run_dir / TRACKERS_FILE
    if not os.path.lexists(path):
        return {}
    path = contents.member(run_dir, TRACKERS_FILE, "")
    data = read_json_file(path, "tracker file", "restore it, or delete it to start new tracker runs")
    if not (isinstance(data, dict) and all(k in TRACKERS and isinstance(v, dict) and _ID_KEYS.get(k, "") in (*v, "")
                                           and all(isinstance(x, str) for x in v.values()) for k, v in data.items())):
        raise TrackerError(f"{path} is not what training writes (tracker names mapping to ids): restore it, or "
                           "delete it to start new tracker runs")
    return data


def make_trackers(config: TrainConfig, saved: dict[str, dict[str, str]]) -> list[Any]:
    """Accelerate tracker objects for ``config.trackers``, continuing the runs in ``saved``. Nothing
    starts here (``Accelerator.init_trackers`` starts them on the main process); ``check`` has
    checked ``config`` before the run began."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    run_dir = Path(config.output_dir) if config.output_dir else None
    made = []
    for name in config.trackers:
        cls, ids = LOGGER_TYPE_TO_CLASS[name], saved.get(name, {})
        if name == "tensorboard":  # RUN/tensorboard: `tensorboard --logdir runs` shows every run
            made.append(cls("tensorboard", str(run_dir)))
        elif name == "mlflow":
            made.append(cls(experiment_name=ids.get("experiment", os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)),
                            run_id=ids.get("run_id"), run_name=run_dir.name))
        elif name == "wandb":
            made.append(cls(ids.get("project", os.environ.get("WANDB_PROJECT", PROJECT)), name=run_dir.name,
                            id=ids.get("id") or secrets.token_hex(8), resume="allow"))
        elif name == "aim":  # no background threads: metrics only, logged from the training process
            made.append(cls(run_dir.name, ids.get("repo"), run_hash=ids.get("run_hash"), experiment=PROJECT,
                            force_resume=bool(ids), system_tracking_interval=None, capture_terminal_logs=False))
        else:  # Accelerate's defaults: the project name, and a folder where the tracker needs one
            made.append(cls(PROJECT, str(run_dir / name)) if cls.requires_logging_directory else cls(PROJECT))
    return made


def resumed_ids(run_dir: Path, config: TrainConfig) -> dict[str, dict[str, str]]:
    """The tracker runs a resumed run continues (``trackers.json``), checked against where they live."""
    saved = saved_ids(run_dir) if config.trackers else {}
    check_places(run_dir, {k: v for k, v in saved.items() if k in config.trackers})
    if "mlflow" in saved and "mlflow" in config.trackers:
        check_same_store(saved)
        stores.check_mlflow_run(saved["mlflow"].get("run_id", ""), run_dir / TRACKERS_FILE)
    return saved


def check_places(run_dir: Path, saved: dict[str, dict[str, str]]) -> None:
    """``trackers.json`` is a file of the run folder, which anyone may have handed us: a place it
    names is used only if it lies inside the run, or is the store this machine's environment gives
    the tracker now (Aim: the repository Aim finds from the working directory). Anything else is
    one line, before any tracker starts, and nothing is created there."""
    places = {"tensorboard": ("logdir", None), "aim": ("repo", stores.aim_default_repo)}
    for name, (key, default) in places.items():
        value = saved.get(name, {}).get(key)
        if value is None:
            continue
        where = Path(value)
        own = default is not None and stores.same_aim_repo(where, Path(default()))
        if not (where.is_absolute() and (files.inside(run_dir, where) or own)):
            raise TrackerError(f"{run_dir / TRACKERS_FILE} names {shown(value)} as the {name} {key}: outside the run "
                               f"folder{' and not the repository Aim finds from here' if default else ''}, so it is not "
                               f"used: {'run from the folder the run started in, or ' if default else ''}remove "
                               f"\"{name}\" from {TRACKERS_FILE} to start a new {name} run")
    if "aim" in saved:
        stores.check_aim_run(Path(saved["aim"]["repo"]), saved["aim"].get("run_hash", ""), run_dir / TRACKERS_FILE)


def check_same_store(saved: dict[str, dict[str, str]]) -> None:
    """A resumed MLflow run must be found where it was logged: the same tracking URI."""
    import mlflow

    was, now = saved["mlflow"].get("tracking_uri"), mlflow.get_tracking_uri()
    if was and was != now:
        raise TrackerError(f"this run logged to MLflow run {saved['mlflow'].get('run_id')} in {was}, but MLflow now "
                           f"points at {now}: set MLFLOW_TRACKING_URI={was} to continue it")



def identities(trackers: list[Any]) -> dict[str, dict[str, str]]:
    """What ``trackers.json`` keeps of started trackers: enough to continue each run."""
    out: dict[str, dict[str, str]] = {}
    for tracker in trackers:
        if tracker.name == "mlflow":
            import mlflow

            info = tracker.tracker.info
            out["mlflow"] = {"run_id": info.run_id, "experiment": tracker.experiment_name,
                             "tracking_uri": mlflow.get_tracking_uri()}
        elif tracker.name == "wandb":
            out["wandb"] = {"id": tracker.tracker.id, "project": tracker.tracker.project}
        elif tracker.name == "aim":
            out["aim"] = {"run_hash": tracker.tracker.hash, "repo": str(tracker.tracker.repo.path)}
        elif tracker.name == "tensorboard":
            out["tensorboard"] = {"logdir": tracker.logging_dir}
    return out


def hyperparameters(config: TrainConfig, setup: dict[str, Any]) -> dict[str, Any]:
    """The resolved config and the set-up, as scalars every tracker takes (None as 'none', the
    hparam_schedule list as its JSON text)."""
    values = {k: "none" if v is None else json.dumps(v) if isinstance(v, list) else v
              for k, v in config.to_dict().items()}
    values.update({f"setup/{k}": v for k, v in setup.items() if isinstance(v, (int, float, str, bool))})
    return values


def start(run: Any, history: list[dict[str, Any]], resume: bool) -> None:
    """Start the trackers (continuing the saved runs), log the hyperparameters of new runs, give a
    tracker added on resume the epochs already trained, and write ``trackers.json``."""
    accelerator = run.accelerator
    if not run.config.trackers:
        return
    saved = run.tracker_ids
    accelerator.log_with = make_trackers(run.config, saved)  # instances: Accelerate starts them as they are
    accelerator.init_trackers(PROJECT)
    if not run.main:
        return
    params = hyperparameters(run.config, run.setup)
    for tracker in accelerator.trackers:
        if tracker.name in saved:
            continue
        tracker.store_init_configuration(params)
        for row in history if resume else ():
            tracker.log(epoch_values(row), step=row["epoch"] * run.steps)
    contents.write_json(run.run_dir / TRACKERS_FILE, {**saved, **identities(accelerator.trackers)})


def epoch_values(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_epoch(run: Any, row: dict[str, Any], global_step: int) -> None:
    if run.config.trackers:
        _guarded(run, lambda: run.accelerator.log(epoch_values(row), step=global_step))


def log_final(run: Any, final: dict[str, Any], global_step: int) -> None:
    """The test metrics at the last step, then the run's files (main process, after they are written)."""
    if not run.config.trackers:
        return

    def log() -> None:
        if final.get("test"):
            run.accelerator.log({f"test_{k}": v for k, v in final["test"].items() if isinstance(v, (int, float))},
                                step=global_step)
        if run.main and run.run_dir is not None:
            present = [run.run_dir / name for name in UPLOADED if (run.run_dir / name).is_file()]
            for tracker in run.accelerator.trackers:
                _upload(tracker, present, global_step)

    _guarded(run, log)


def _guarded(run: Any, log: Any) -> None:
    """Log, unless a tracker's store failed before; a store that fails now costs the trackers, not
    the run: one warning, and training goes on (its own files are complete either way)."""
    if run.trackers_lost:
        return
    try:
        log()
    except Exception as e:  # whatever the tracker's client raises: HTTP, SQL, disk
        run.trackers_lost = True
        if run.main:
            import sys

            print(f"warning: a tracker failed ({type(e).__name__}: {first_line(e, 120)}); training goes on without "
                  f"trackers (the run folder {run.run_dir} holds every metric)", file=sys.stderr, flush=True)


def _upload(tracker: Any, paths: list[Path], step: int) -> None:
    """Files where the tracker keeps files; pictures as images where it shows images."""
    if tracker.name == "mlflow":
        for path in paths:
            tracker.log_artifact(str(path))
    elif tracker.name == "wandb":
        for path in paths:
            tracker.tracker.save(str(path), base_path=str(path.parent), policy="now")
    elif tracker.name in ("tensorboard", "aim"):
        import numpy as np
        from PIL import Image

        for path in paths:
            if path.suffix == ".png":
                with Image.open(path) as image:
                    picture = np.asarray(image.convert("RGB"))
                if tracker.name == "tensorboard":
                    tracker.log_images({path.stem: picture[None]}, step=step, dataformats="NHWC")
                else:
                    tracker.log_images({path.stem: Image.fromarray(picture)}, step=step)


def end(run: Any, status: str) -> None:
    """Close the trackers: ``status`` is "FINISHED", "KILLED" (interrupted, preempted) or "FAILED"."""
    if not run.config.trackers:
        return

    def close() -> None:
        for tracker in run.accelerator.trackers if run.main else ():
            if tracker.name == "mlflow" and status != "FINISHED":
                import mlflow

                mlflow.end_run(status=status)  # Accelerate's finish() would say FINISHED
            elif tracker.name == "wandb" and status != "FINISHED":
                tracker.tracker.finish(exit_code=1)
            else:
                tracker.finish()

    _guarded(run, close)
    run.accelerator.trackers = []
