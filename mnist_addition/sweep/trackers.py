"""``tune --log-with mlflow,tensorboard``: every trial a run of one experiment named after the sweep.

Ray Tune's own logger callbacks do it (MLflow, TensorBoard through tensorboardX, W&B, Aim, Comet),
and they run on the **driver**: trials on any node report their metrics to the driver, which logs
them, so only the machine that runs ``mnist-addition tune`` needs to reach the tracking store (a
sqlite file or a folder on a laptop; a tracking server on a cluster). Each trial's run holds its
sampled values as parameters and its per-epoch validation metrics at each epoch; at its end it is
tagged with how it ended (finished, stopped early by the scheduler, error, hung) and its budget.

* MLflow: the store is ``MLFLOW_TRACKING_URI`` (MLflow's default: ``./mlflow.db``), resolved when
  the sweep starts, so ``--resume`` logs to the same store; the experiment is ``--name``.
* TensorBoard: event files in each trial's folder of the sweep; ``tensorboard --logdir
  STORAGE/NAME`` shows the trials side by side, and its HParams tab the sampled values against
  the last metrics, status and budget.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ..core.config import tracker_names
from .options import SweepError
from .results import FINISHED, STOPPED, ended_status
from .storage import Store
from .trial import trial_dirname
from .watchdog import hang_of

# tracker -> (the module it needs, the extra that installs it)
SWEEP_TRACKERS = {"mlflow": ("mlflow", "mlflow"), "tensorboard": ("tensorboardX", "tune"),
                  "wandb": ("wandb", "wandb"), "aim": ("aim", "aim"), "comet_ml": ("comet_ml", "comet_ml")}


def check(log_with: str) -> None:
    """Known names, each installed: else one line with the install command."""
    given = tracker_names(log_with)
    unknown = [n for n in given if n not in SWEEP_TRACKERS]
    if unknown or len(set(given)) != len(given) or (log_with != "none" and not given):
        raise SweepError(f"--log-with {log_with!r} is not a list of sweep trackers: use 'none' or comma-separated "
                         f"names of {', '.join(SWEEP_TRACKERS)}, e.g. --log-with mlflow,tensorboard")
    for name in given:
        module, extra = SWEEP_TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise SweepError(f"tune --log-with {name} needs the {module} package: pip install -e \".[{extra}]\"")
    if "mlflow" in given:  # reachable and writable, within seconds, before Ray starts
        from ..training.stores import check_mlflow_store

        check_mlflow_store()


GUARDED = ("setup", "on_trial_start", "on_trial_restore", "on_trial_save", "on_trial_result", "on_trial_complete",
           "on_trial_error", "on_experiment_end")


def keep_going(base: type) -> type:
    """``base`` (a Tune logger callback) whose store failing mid-sweep costs the tracker, not the
    sweep: the first failure is one warning, after which it logs nothing more (as for a run)."""
    class KeepGoing(base):
        lost = False

        def _guard(self, hook: str, *args: Any, **kwargs: Any) -> Any:
            if self.lost:
                return None
            try:
                return getattr(super(KeepGoing, self), hook)(*args, **kwargs)
            except Exception as e:  # whatever the tracker's client raises: HTTP, SQL, disk
                self.lost = True
                import sys

                from ..core.errors import first_line

                print(f"warning: the {base.__name__} tracker failed ({type(e).__name__}: {first_line(e, 120)}); the "
                      "sweep goes on without it (trials.csv and each trial's folder hold every metric)",
                      file=sys.stderr, flush=True)
                return None

    for hook in GUARDED:
        setattr(KeepGoing, hook, lambda self, *a, _hook=hook, **k: self._guard(_hook, *a, **k))
    return KeepGoing


def callbacks(log_with: str, sweep_name: str, storage_uri: str) -> list[Any]:
    """Ray Tune logger callbacks for ``log_with``, each guarded by ``keep_going`` (they are pickled
    with the sweep's state, so a resumed sweep logs to the same places)."""
    made = []
    for name in tracker_names(log_with):
        if name == "mlflow":
            made.append(_mlflow(sweep_name, storage_uri))
        elif name == "tensorboard":
            made.append(_tensorboard(storage_uri))
        elif name == "wandb":
            import os

            from ray.air.integrations.wandb import WandbLoggerCallback

            made.append(keep_going(WandbLoggerCallback)(project=os.environ.get("WANDB_PROJECT", sweep_name),
                                                        group=sweep_name))
        elif name == "aim":
            from ray.tune.logger.aim import AimLoggerCallback

            made.append(keep_going(AimLoggerCallback)(experiment_name=sweep_name))  # repo: the sweep's folder
        elif name == "comet_ml":
            from ray.air.integrations.comet import CometLoggerCallback

            made.append(keep_going(CometLoggerCallback)(project_name=sweep_name))
    return made


def _mlflow(sweep_name: str, storage_uri: str) -> Any:
    import mlflow
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class SweepMLflow(keep_going(MLflowLoggerCallback)):
        """Ray's MLflow callback, and at each trial's end our status and budget as tags."""

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            run_id = self._trial_runs.get(trial)
            if run_id is not None:
                client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
                for key, value in ended_status(trial.last_result, failed, _hung(storage_uri, trial, failed)).items():
                    client.set_tag(run_id, key, str(value))
            super().log_trial_end(trial, failed)

    return SweepMLflow(tracking_uri=mlflow.get_tracking_uri(), experiment_name=sweep_name,
                       tags={"sweep": sweep_name, "sweep_storage": storage_uri})


def _hung(storage_uri: str, trial: Any, failed: bool) -> bool:
    """Whether the failed trial's last attempt was stopped by --trial-timeout (``watchdog``)."""
    return failed and hang_of(Store(storage_uri), trial_dirname(trial.trial_id))[1]


def _tensorboard(storage_uri: str) -> Any:
    from ray.tune.logger import TBXLoggerCallback

    class SweepTensorBoard(keep_going(TBXLoggerCallback)):
        """Ray's TensorBoard callback; the HParams row of a trial also says how it ended."""

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            if self._trial_result.get(trial):  # the last result, which becomes the trial's HParams metrics
                hung = _hung(storage_uri, trial, failed)
                ended = ended_status(trial.last_result, failed, hung)["status"]
                self._trial_result[trial] = {**self._trial_result[trial], "finished": float(ended == FINISHED),
                                             "stopped_early": float(ended == STOPPED),
                                             "error": float(failed), **({"hung": 1.0} if hung else {})}
            super().log_trial_end(trial, failed)

    return SweepTensorBoard()
