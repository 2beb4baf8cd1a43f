"""Experiment trackers, read back from real local stores with the trackers' own readers: an MLflow
store in a sqlite file (MlflowClient), TensorBoard event files (EventAccumulator), an Aim repository
(aim.Repo). One run is interrupted in its second epoch and resumed: every tracker must hold one run
with one curve. Each tracker's part skips, with the reason, where its extra is not installed."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from mnist_addition.commands.cli import main

HAS = {name: importlib.util.find_spec(name) is not None for name in ("mlflow", "tensorboard", "aim")}
EPOCHS, STEPS = 3, 15  # 500 training images of the fixture in batches of 32
TINY = ["--width", "8", "--epochs", str(EPOCHS), "--batch-size", "32", "--lr", "0.01", "--val-size", "100",
        "--mixed-precision", "no", "--log-every", "5", "--cpu"]  # CPU facts (setup/device) hold on a GPU machine too
UPLOADED = {"curves.png", "confusion_digit.png", "confusion_sum.png", "config.json"}


def needs(name: str):
    return pytest.mark.skipif(not HAS[name], reason=f"the [{name}] extra is not installed")


@pytest.fixture
def mlflow_store(mlflow_db, tmp_path, monkeypatch):
    """MLflow on a sqlite file of this test (MLflow's own variable, as a user sets it)."""
    import mlflow

    uri = mlflow_db
    monkeypatch.chdir(tmp_path)  # MLflow's artefacts go to ./mlruns beside the store: never into the checkout
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def _interrupt_in_epoch(monkeypatch, epoch: int) -> None:
    """Ctrl-C at the 3rd step of ``epoch`` (after the epoch before has been checkpointed)."""
    import mnist_addition.training.step as step

    real, calls = step.train_step, []

    def train_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == (epoch - 1) * STEPS + 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(step, "train_step", train_step)


@pytest.fixture(scope="module")
def resumed_run(mnist_dir, tmp_path_factory, _mlflow_template):
    """A run logging to every installed tracker of the three, interrupted in epoch 2, then resumed
    from its folder (Aim's repository is found from the working directory, as Aim does)."""
    trackers = [name for name in ("mlflow", "tensorboard", "aim") if HAS[name]]
    if not trackers:
        pytest.skip("no tracker extra installed")
    root = tmp_path_factory.mktemp("tracked")
    run = root / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        if _mlflow_template is not None:
            shutil.copy(_mlflow_template, root / "mlflow.db")  # its tables made once for the session
        uri = f"sqlite:///{root / 'mlflow.db'}"
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        if HAS["mlflow"]:
            import mlflow

            mlflow.set_tracking_uri(uri)
        _interrupt_in_epoch(patch, 2)
        assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), "--log-with",
                     ",".join(trackers), *TINY]) == 130
        between = {"status": json.loads((run / "status.json").read_text()),
                   "trackers": json.loads((run / "trackers.json").read_text())}
        if HAS["mlflow"]:
            between["mlflow_status"] = mlflow.MlflowClient().get_run(between["trackers"]["mlflow"]["run_id"]).info.status
        patch.undo()
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        assert main(["train", "--resume", str(run)]) == 0
        yield {"run": run, "root": root, "uri": uri, "between": between, "trackers": trackers}
        if HAS["mlflow"]:
            mlflow.set_tracking_uri(None)


def test_an_interrupted_run_says_why_and_keeps_its_tracker_runs(resumed_run):
    between, run = resumed_run["between"], resumed_run["run"]
    assert between["status"]["status"] == "interrupted"
    assert not (run / "status.json").exists()  # running again, then finished
    assert set(between["trackers"]) == set(resumed_run["trackers"])
    assert json.loads((run / "trackers.json").read_text()) == between["trackers"]  # the same runs continued


@needs("mlflow")
def test_mlflow_holds_one_run_with_params_curves_test_metrics_and_files(resumed_run):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=resumed_run["uri"])
    experiment = client.get_experiment_by_name("mnist-addition")
    found = client.search_runs([experiment.experiment_id])
    assert len(found) == 1  # interrupted once: still one run
    run = found[0]
    assert run.info.run_id == resumed_run["between"]["trackers"]["mlflow"]["run_id"]
    assert resumed_run["between"]["mlflow_status"] == "KILLED" and run.info.status == "FINISHED"
    assert run.info.run_name == "run"
    params = run.data.params
    assert params["lr"] == "0.01" and params["width"] == "8" and params["setup/device"] == "cpu"
    assert params["setup/num_processes"] == "1" and params["setup/mixed_precision"] == "no"
    for key in ("train_loss", "val_digit_acc", "val_sum_acc", "lr", "images_per_s"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [STEPS, 2 * STEPS, 3 * STEPS], key
    metrics = json.loads((resumed_run["run"] / "metrics.json").read_text())
    assert run.data.metrics["test_digit_acc"] == pytest.approx(metrics["test"]["digit_acc"])
    assert run.data.metrics["val_sum_acc"] == pytest.approx(metrics["val"]["sum_acc"])
    assert UPLOADED <= {a.path for a in client.list_artifacts(run.info.run_id)}


@needs("tensorboard")
def test_tensorboard_holds_one_curve_per_metric_and_the_pictures(resumed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = resumed_run["run"] / "tensorboard"
    scalars: dict[str, list[int]] = {}
    images: set[str] = set()
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"images": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.step for e in events.Scalars(tag))
        images |= set(events.Tags()["images"])
    for tag in ("train_loss", "val_digit_acc", "val_both_acc", "lr", "images_per_s"):
        assert sorted(scalars[tag]) == [STEPS, 2 * STEPS, 3 * STEPS], tag
    assert scalars["test_digit_acc"] == [3 * STEPS]
    assert {"curves", "confusion_digit", "confusion_sum"} <= images


@needs("aim")
def test_aim_holds_one_run_with_hparams_and_curves(resumed_run):
    from aim import Repo
    from aim.sdk.index_manager import RepoIndexManager

    repo = Repo.from_path(str(resumed_run["root"]))
    assert repo.list_all_runs() == [resumed_run["between"]["trackers"]["aim"]["run_hash"]]  # one run
    RepoIndexManager.get_index_manager(repo).index(repo.list_all_runs()[0])  # what `aim up` does before showing it
    (run,) = list(repo.iter_runs())
    assert run.name == "run" and run.experiment == "mnist-addition"
    assert run["hparams"]["lr"] == 0.01 and run["hparams"]["setup/device"] == "cpu"
    steps = {metric.name: metric.data.numpy()[0].tolist() for metric in run.metrics()}
    for name in ("train_loss", "val_digit_acc", "lr"):
        assert steps[name] == [STEPS, 2 * STEPS, 3 * STEPS], name
    assert steps["test_digit_acc"] == [3 * STEPS]


@needs("mlflow")
def test_a_tracker_added_on_resume_gets_the_epochs_already_trained(mnist_dir, tmp_path, monkeypatch, mlflow_store):
    import mlflow

    run = tmp_path / "run"
    _interrupt_in_epoch(monkeypatch, 3)
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY]) == 130
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    assert main(["train", "--resume", str(run), "--log-with", "mlflow"]) == 0
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"]
    history = mlflow.MlflowClient().get_metric_history(run_id, "val_digit_acc")
    assert [m.step for m in history] == [STEPS, 2 * STEPS, 3 * STEPS]


@needs("mlflow")
def test_a_resume_that_would_log_to_another_mlflow_store_is_one_line(mnist_dir, tmp_path, monkeypatch, mlflow_store,
                                                                      capsys):
    import mlflow

    run = tmp_path / "run"
    _interrupt_in_epoch(monkeypatch, 2)
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), "--log-with", "mlflow", *TINY]) == 130
    monkeypatch.undo()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    mlflow.set_tracking_uri(other)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the start line, then the error
    assert err[-1].startswith("mnist-addition train: error: ") and err[0].startswith("resuming")
    assert len(err) == 2 and f"set MLFLOW_TRACKING_URI={mlflow_store} to continue it" in err[-1]
    assert not (run / "metrics.json").exists()


def test_an_unknown_tracker_and_a_bad_list_are_one_line(capsys, tmp_path):
    for value, says in (("mlfow", "'mlfow' is unknown"), ("mlflow,mlflow", "is not a list of trackers"),
                        ("none,mlflow", "'none' is unknown")):
        assert main(["train", "--output-dir", str(tmp_path / "r"), "--log-with", value]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err and "--log-with mlflow,tensorboard" in err, err
    assert not (tmp_path / "r").exists()


def test_a_tracker_not_installed_or_unknown_to_accelerate_names_the_install(mnist_dir, tmp_path, monkeypatch, capsys):
    import accelerate.tracking as accelerate_tracking

    monkeypatch.setattr(accelerate_tracking, "get_available_trackers", lambda: [])
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / "r"), "--log-with",
                 "comet_ml", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'needs the comet-ml package: pip install -e ".[comet_ml]"' in err
    known = dict(accelerate_tracking.LOGGER_TYPE_TO_CLASS)
    known.pop("trackio")
    monkeypatch.setattr(accelerate_tracking, "LOGGER_TYPE_TO_CLASS", known)
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / "r"), "--log-with",
                 "trackio", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no trackio tracker: upgrade it (pip install -U accelerate)" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content", [{"mlflow": {"run_id": 7}}, {"mlflow": {}}, [1, 2], {"neptune": {"id": "x"}}])
def test_a_tampered_trackers_file_is_one_line(content, mnist_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _interrupt_in_epoch(monkeypatch, 2)
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY]) == 130
    monkeypatch.undo()
    (run / "trackers.json").write_text(json.dumps(content))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--log-with", "tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the start line, then the error
    assert len(err) == 2 and "trackers.json is not what training writes" in err[-1]


@pytest.fixture(scope="module")
def stopped_run(mnist_dir, tmp_path_factory):
    """A run interrupted in its second epoch with no tracker: copied by each test that plants a trackers.json."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.MonkeyPatch.context() as patch:
        _interrupt_in_epoch(patch, 2)
        assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY]) == 130
    return run


@pytest.mark.parametrize("tracker,entry", [
    pytest.param("aim", {"run_hash": "0" * 24, "repo": "{outside}/.aim"}, marks=needs("aim")),
    pytest.param("tensorboard", {"logdir": "{outside}/tb"}, marks=needs("tensorboard")),
    pytest.param("aim", {"run_hash": "0" * 24, "repo": "relative/.aim"}, marks=needs("aim")),
])
def test_trackers_json_never_makes_a_run_write_outside_its_folder(tracker, entry, stopped_run, tmp_path, monkeypatch,
                                                                   capsys):
    """trackers.json comes with the run folder: a place it names outside the run (and not the
    tracker's own store here) is refused in one line before any tracker starts, and nothing is
    created there."""
    import shutil

    run = shutil.copytree(stopped_run, tmp_path / "run")
    outside = tmp_path / "outside"
    monkeypatch.chdir(tmp_path)  # Aim's own repository would be found from here: not the planted one
    (run / "trackers.json").write_text(json.dumps({tracker: {k: v.format(outside=outside) for k, v in entry.items()}}))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--log-with", tracker]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "outside the run folder" in err[-1] and f'remove "{tracker}" from trackers.json' in err[-1], err
    assert not outside.exists() and not (tmp_path / "relative").exists() and not (tmp_path / ".aim").exists()
    assert not (run / "metrics.json").exists() and not (run / "tensorboard").exists()


@needs("mlflow")
@pytest.mark.parametrize("uri,says", [
    ("http://127.0.0.1:1", "nothing answers at 127.0.0.1:1"),
    ("nonsense://x", "MLflow has no store for the scheme 'nonsense'"),
    ("{tmp}/afile/store", "is a file, not a folder"),
    ("sqlite:///{tmp}/afile", "is not a SQLite database"),
    ("sqlite:////nonexistent/dir/x.db", "the folder /nonexistent/dir does not exist"),
    ("sqlite:////proc/x.db", "nothing can be written in /proc"),
])
def test_a_tracking_store_that_cannot_work_is_one_line_in_seconds(uri, says, mnist_dir, tmp_path, monkeypatch, capsys):
    import time

    (tmp_path / "afile").write_text("not a database, not a folder\n")
    uri = uri.format(tmp=tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / "r"), "--log-with", "mlflow",
                 *TINY]) == 2
    assert time.monotonic() - start < 60  # not MLflow's minutes of retries (a bound, not a speed claim)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"MLFLOW_TRACKING_URI={uri!r}" in err and says in err, err
    assert not (tmp_path / "r").exists() and not Path("/nonexistent").exists()


@needs("mlflow")
def test_an_mlflow_experiment_name_over_mlflows_limit_is_one_line(mnist_dir, tmp_path, monkeypatch, mlflow_store,
                                                                  capsys):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "x" * 501)
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / "r"), "--log-with", "mlflow",
                 *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "MLFLOW_EXPERIMENT_NAME is 501 characters, more than MLflow's 500" in err


@needs("mlflow")
def test_trackers_json_naming_an_mlflow_run_the_store_lacks_is_one_line(stopped_run, tmp_path, mlflow_store, capsys):
    import shutil

    run = shutil.copytree(stopped_run, tmp_path / "run")
    (run / "trackers.json").write_text(json.dumps({"mlflow": {"run_id": "f" * 32, "experiment": "mnist-addition",
                                                              "tracking_uri": mlflow_store}}))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--log-with", "mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"names MLflow run '{'f' * 32}', which MLFLOW_TRACKING_URI=" in err[-1] and "does not hold" in err[-1], err


@needs("tensorboard")
def test_a_tracker_that_fails_mid_run_costs_the_trackers_not_the_run(mnist_dir, tmp_path, monkeypatch, capsys):
    """A store that breaks once training runs: one warning, training goes on, the run's files are complete."""
    from accelerate.tracking import TensorBoardTracker

    calls = []

    def broken(self, values, step=None, **kwargs):
        calls.append(step)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorBoardTracker, "log", broken)
    run = tmp_path / "run"
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), "--log-with", "tensorboard",
                 *TINY]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: a tracker failed (OSError: [Errno 28] No space left on device)") == 1
    assert calls == [STEPS]  # tried once, then left alone
    assert (run / "metrics.json").exists() and len((run / "metrics.jsonl").read_text().splitlines()) == EPOCHS


def test_a_sweep_tracker_that_fails_mid_sweep_warns_once_and_stops_logging(capsys):
    from mnist_addition.sweep.trackers import keep_going

    class Logger:  # stands for one of Ray Tune's logger callbacks
        def __init__(self):
            self.results = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.results.append(result)
            if len(self.results) == 2:
                raise ConnectionError("the tracking server went away")

    logger = keep_going(Logger)()
    for epoch in range(1, 5):
        assert logger.on_trial_result(0, [], None, {"epoch": epoch}) is None
    assert [r["epoch"] for r in logger.results] == [1, 2]  # tried until it failed, then left alone
    err = capsys.readouterr().err
    assert err.count("warning: the Logger tracker failed (ConnectionError: the tracking server went away); "
                     "the sweep goes on without it") == 1


@needs("mlflow")
def test_trackers_json_naming_another_mlflow_store_writes_nothing_there(stopped_run, tmp_path, mlflow_store, capsys):
    """The store MLflow logs to is the user's (MLFLOW_TRACKING_URI), never the one trackers.json names."""
    import shutil

    run = shutil.copytree(stopped_run, tmp_path / "run")
    outside = tmp_path / "outside"
    (run / "trackers.json").write_text(json.dumps({"mlflow": {"run_id": "f" * 32, "experiment": "x",
                                                              "tracking_uri": f"file://{outside}/mlruns"}}))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--log-with", "mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"set MLFLOW_TRACKING_URI=file://{outside}/mlruns to continue it" in err[-1], err
    assert not outside.exists()
