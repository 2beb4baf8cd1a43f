"""Ray Tune sweeps, end to end on tiny synthetic data.

Ray start-ups are slow on 2 cores, so there are two: one local Ray started by the CLI itself (the
laptop path), and one session-wide 2-node cluster on 127.0.0.1 that the other tests reach with
--address (the existing-cluster path). All Ray traffic stays on loopback
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), and each test stops only what it started.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from mnist_addition.commands.cli import main
from mnist_addition.core.config import TrainConfig

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # bind and connect on 127.0.0.1 only
import ray  # noqa: E402  (in the [dev] extra: a missing Ray fails here rather than skipping)
import ray.cloudpickle  # noqa: E402

from mnist_addition.sweep import trial as trial_module  # noqa: E402

from .helpers import proven_on_real_addresses, same_weights  # noqa: E402

pytestmark = pytest.mark.slow  # see pyproject.toml: make test-fast leaves these out

# The trial wrappers below run in Ray's worker processes, which cannot import this test module:
# send them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

HAS = lambda module: importlib.util.find_spec(module) is not None  # noqa: E731
TINY = {"epochs": 2, "width": 8, "batch_size": 32, "val_size": 100, "mixed_precision": "no"}


def tiny_space(tmp_path: Path, epochs: int = 2, search: dict | None = None) -> Path:
    """lr and sum_weight searched, plus ``search``; the rest fixed to the tiny config."""
    search = {"lr": {"loguniform": [0.005, 0.02]}, "sum_weight": {"uniform": [0.3, 0.7]}, **(search or {})}
    path = tmp_path / "space.yaml"
    fixed = {k: v for k, v in {**TINY, "epochs": epochs}.items() if k not in search}
    path.write_text(yaml.safe_dump({"fixed": fixed, "search": search}))
    return path


# -- test-side wrappers of the trial function (monkeypatched into mnist_addition.sweep.trial) --

def crash_once_after_epoch_1(marker: str, multi_worker: bool = False):
    """A trial function whose trial crashes once, right after epoch 1 and its checkpoint were reported
    (on a multi-worker trial: rank 0, the worker that reports the checkpoint)."""
    def crashing(report):
        def wrapped(metrics, checkpoint=None):
            report(metrics, checkpoint=checkpoint)
            if metrics["epoch"] == 1 and checkpoint is not None:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    return  # crashed once already
                raise RuntimeError("injected failure: this trial crashes once after epoch 1")
        return wrapped

    def run_trial(params, settings):
        import ray.train
        import ray.tune

        if not multi_worker:
            ray.tune.report = crashing(ray.tune.report)
            return trial_module.run_trial(params, settings)
        real_loop = trial_module.worker_loop

        def worker_loop(loop_config):
            ray.train.report = crashing(ray.train.report)
            real_loop(loop_config)

        trial_module.worker_loop = worker_loop  # what the TorchTrainer started by run_trial runs
        return trial_module.run_trial(params, settings)

    return run_trial


def all_at_once(folder: str, trials: int, timeout: float = 180.0):
    """A trial function that first waits until ``trials`` trials have started: it fails unless they
    all run at the same time."""
    def run_trial(params, settings):
        Path(folder, uuid.uuid4().hex).touch()
        deadline = time.monotonic() + timeout
        while len(list(Path(folder).iterdir())) < trials:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(list(Path(folder).iterdir()))} of {trials} trials ran at once")
            time.sleep(0.2)
        return trial_module.run_trial(params, settings)

    return run_trial


def run_files(sweep: Path, trial_id: str) -> set[str]:
    run = sweep / f"trial-{trial_id}" / "run"
    return {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}


def read_trials(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def tune_args(space: Path, mnist_dir: Path, storage: Path, name: str, *extra: str) -> list[str]:
    return ["tune", "--space", str(space), "--data-dir", str(mnist_dir), "--storage-path", str(storage),
            "--name", name, "--cpus-per-trial", "1", *extra]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnist_addition", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="session")
def cluster():
    """An existing Ray cluster: a head and a second node, 1 CPU each, both on 127.0.0.1."""
    from ray.cluster_utils import Cluster

    node = dict(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=100 * 1024**2)
    c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    c.add_node(**node)
    c.wait_for_nodes()
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def node_ids(cluster) -> set[str]:
    ray.init(address=cluster.address)
    try:
        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()


# -- the laptop path: the CLI starts (and stops) its own local Ray ------------------------------

def test_smoke_sweep_on_a_local_ray(tmp_path, mnist_dir, mlflow_db):
    """The laptop path, logging every trial to MLflow (a sqlite store) and TensorBoard; then `runs`
    and `train --config best_config.json`."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["MLFLOW_TRACKING_URI"] = mlflow_db
    env["OMP_NUM_THREADS"] = "2"  # a 1-CPU trial computes with 1 thread all the same
    trackers = [name for name, module in (("mlflow", "mlflow"), ("tensorboard", "tensorboard")) if HAS(module)]
    done = subprocess.run([sys.executable, "-m", "mnist_addition", *tune_args(
        tiny_space(tmp_path), mnist_dir, tmp_path / "sweeps", "smoke", "--num-samples", "3",
        "--log-with", ",".join(trackers) or "none")], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = tmp_path / "sweeps" / "smoke"
    trials = read_trials(sweep)
    assert len(trials) == 3
    for t in trials:  # every trial reported both accuracies (and the joint one) on validation
        assert 0 < float(t["val_digit_acc"]) <= 1 and 0 <= float(t["val_sum_acc"]) <= 1
        assert float(t["val_both_acc"]) <= min(float(t["val_digit_acc"]), float(t["val_sum_acc"]))
        assert 1 <= int(t["epochs_run"]) <= 2 and t["processes"] == "1" and t["threads"] == "1"
    best_row = max(trials, key=lambda t: float(t["val_both_acc"]))
    assert trials[0] == best_row  # the CSV is ranked
    best = TrainConfig.load(sweep / "best_config.json")  # what 'train --config' reads
    assert best.lr == pytest.approx(float(best_row["lr"])) and best.sum_weight == pytest.approx(float(best_row["sum_weight"]))
    assert (best.width, best.epochs, best.data_dir, best.output_dir) == (8, 2, None, None)
    assert (sweep / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["trials"] == 3 and summary["best_trial"] == best_row["trial_id"]
    assert done.stderr.count("epoch 1/2") == 3  # one progress line per trial epoch
    for t in trials:  # every trial's run folder is in the storage, stopped trials' too
        files = run_files(sweep, t["trial_id"])
        assert {"config.json", "metrics.jsonl"} <= files
        assert ("model.safetensors" in files) == (t["status"] == "finished")
    assert "Top trials by val_both_acc" in done.stderr
    assert not ray.is_initialized()
    if "mlflow" in trackers:  # (the [mlflow] and [tensorboard] extras are in [dev]: CI checks both)
        check_trials_in_mlflow(env["MLFLOW_TRACKING_URI"], "smoke", trials)
    if "tensorboard" in trackers:
        check_trials_in_tensorboard(sweep, trials)

    # ... and 'mnist-addition train --config best_config.json' takes it as it is
    run = tmp_path / "retrained"
    assert main(["train", "--config", str(sweep / "best_config.json"), "--data-dir", str(mnist_dir),
                 "--output-dir", str(run)]) == 0
    assert TrainConfig.load(run / "config.json") == best.replace(data_dir=str(mnist_dir), output_dir=str(run))
    assert json.loads((run / "metrics.json").read_text())["test"]["n"] == 200  # the test set, scored after the sweep
    listed = subprocess.run([sys.executable, "-m", "mnist_addition", "runs", str(tmp_path), "--json"],
                            capture_output=True, text=True, check=True)
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {"sweeps/smoke", "retrained"} and rows["retrained"]["status"] == "finished"
    assert rows["sweeps/smoke"]["kind"] == "sweep" and rows["sweeps/smoke"]["trials"] == 3
    assert rows["sweeps/smoke"]["val_sum"] == pytest.approx(float(best_row["val_sum_acc"]))


def check_trials_in_mlflow(uri: str, sweep: str, trials: list[dict[str, str]]) -> None:
    """One MLflow run per trial in the experiment named after the sweep: the sampled values as
    parameters, validation metrics at every epoch it ran, how it ended and its budget as tags."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    found = {r.data.tags["trial_name"]: r for r in client.search_runs([client.get_experiment_by_name(sweep).experiment_id])}
    assert set(found) == {f"trial-{t['trial_id']}" for t in trials}
    for t in trials:
        run = found[f"trial-{t['trial_id']}"]
        assert float(run.data.params["lr"]) == pytest.approx(float(t["lr"]))
        assert float(run.data.params["sum_weight"]) == pytest.approx(float(t["sum_weight"]))
        history = client.get_metric_history(run.info.run_id, "val_both_acc")
        assert [m.step for m in history] == list(range(1, int(t["epochs_run"]) + 1))
        assert history[-1].value == pytest.approx(float(t["val_both_acc"]))
        assert run.data.tags["status"] == t["status"] and run.data.tags["budget_epochs"] == t["budget_epochs"]


def check_trials_in_tensorboard(sweep: Path, trials: list[dict[str, str]]) -> None:
    """Each trial's event file holds its validation curve and an HParams row with its sampled values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for t in trials:
        (path,) = (sweep / f"trial-{t['trial_id']}").glob("events.out.tfevents.*")
        events = EventAccumulator(str(path))
        events.Reload()
        scalars = {tag.split("/")[-1]: tag for tag in events.Tags()["scalars"]}
        steps = [e.step for e in events.Scalars(scalars["val_both_acc"])]
        assert len(steps) == int(t["epochs_run"])
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert hparams["lr"].number_value == pytest.approx(float(t["lr"]))


# -- an existing cluster -----------------------------------------------------------------------

def seeded_sweeps(root: Path, mnist_dir: Path, cluster, search: str) -> list[Path]:
    """Two sweeps of one space with --seed 7: two 1-epoch trials each, both at once (FIFO)."""
    space = tiny_space(root, epochs=1)
    for name in ("first", "second"):
        assert main(tune_args(space, mnist_dir, root, name, "--num-samples", "2", "--scheduler", "fifo",
                              "--search", search, "--seed", "7", "--address", cluster.address)) == 0
    return [root / "first", root / "second"]


@pytest.fixture(scope="module")
def random_sweeps(tmp_path_factory, mnist_dir, cluster) -> list[Path]:
    return seeded_sweeps(tmp_path_factory.mktemp("seeded"), mnist_dir, cluster, "random")


def test_sweep_runs_on_an_existing_cluster_across_its_nodes(random_sweeps, cluster):
    ids = node_ids(cluster)
    assert len(ids) == 2
    trials = read_trials(random_sweeps[0])  # two 1-CPU trials at once on two 1-CPU nodes: one ran on each
    assert {t["node_id"] for t in trials} == ids
    assert all(t["status"] == "finished" for t in trials)
    assert not ray.is_initialized()  # the CLI disconnected ...
    assert len(node_ids(cluster)) == 2  # ... and left the cluster running


def test_a_sweep_warm_started_from_an_earlier_one_gives_optuna_its_trials(random_sweeps, tmp_path, mnist_dir,
                                                                            cluster, capsys):
    """--warm-start OLD: OLD's trials that this sweep could have trained are Optuna's prior
    observations (the start says how many); sweep.json keeps where they came from, and --resume
    cannot change it."""
    old = random_sweeps[0]
    assert main(tune_args(old.parent / "space.yaml", mnist_dir, tmp_path, "warm", "--num-samples", "1",
                          "--scheduler", "fifo", "--search", "optuna", "--warm-start", str(old),
                          "--address", cluster.address)) == 0
    assert f"warm start: 2 trial(s) of {old} given to Optuna as prior observations\n" in capsys.readouterr().err
    (trial,) = read_trials(tmp_path / "warm")
    assert trial["status"] == "finished"
    assert json.loads((tmp_path / "warm" / "sweep.json").read_text())["options"]["warm_start"] == [str(old)]
    assert main(["tune", "--resume", "--name", "warm", "--storage-path", str(tmp_path), "--warm-start", str(old)]) == 2
    assert "--warm-start cannot change when resuming" in capsys.readouterr().err


def test_a_finished_sweep_grows_and_optuna_goes_on_from_what_it_learned(tmp_path, mnist_dir, cluster, monkeypatch,
                                                                        capsys):
    """--resume --num-samples 3 of a finished 2-trial Optuna sweep: the restored study holds both
    results when it suggests the third trial, the two earlier trials are kept as they were and
    ranked with the new one; a sweep cannot shrink."""
    from ray.tune.search.optuna import OptunaSearch

    seen, real = [], OptunaSearch.suggest

    def suggest(self, trial_id):
        seen.append(sum(t.state.name == "COMPLETE" for t in self._ot_study.trials))
        return real(self, trial_id)

    monkeypatch.setattr(OptunaSearch, "suggest", suggest)
    args = tune_args(tiny_space(tmp_path, epochs=1), mnist_dir, tmp_path, "grows", "--scheduler", "fifo",
                     "--search", "optuna", "--max-concurrent", "1", "--address", cluster.address)
    assert main([*args, "--num-samples", "2"]) == 0
    before = {t["trial_id"]: t for t in read_trials(tmp_path / "grows")}
    seen.clear()
    resume = ["tune", "--resume", "--name", "grows", "--storage-path", str(tmp_path), "--address", cluster.address]
    assert main([*resume, "--num-samples", "3"]) == 0
    assert "from 2 to 3 trials" in capsys.readouterr().err
    assert seen == [2]  # the one new suggestion, made knowing both earlier results
    after = {t["trial_id"]: t for t in read_trials(tmp_path / "grows")}
    (new,) = set(after) - set(before)
    for trial_id, trial in before.items():  # kept, not trained again
        assert (after[trial_id]["val_both_acc"], after[trial_id]["lr"]) == (trial["val_both_acc"], trial["lr"])
    assert after[new]["status"] == "finished"
    assert json.loads((tmp_path / "grows" / "sweep.json").read_text())["options"]["num_samples"] == 3
    assert json.loads((tmp_path / "grows" / "summary.json").read_text())["trials"] == 3
    assert main([*resume, "--num-samples", "2"]) == 2
    assert "--num-samples 2 is fewer than the 3 trials" in capsys.readouterr().err


@pytest.mark.parametrize("search", ["random", "optuna"])
def test_the_same_seed_samples_the_same_configs(tmp_path, mnist_dir, cluster, search, request):
    sweeps = request.getfixturevalue("random_sweeps") if search == "random" else \
        seeded_sweeps(tmp_path, mnist_dir, cluster, search)
    sampled = [sorted((t["lr"], t["sum_weight"]) for t in read_trials(sweep)) for sweep in sweeps]
    assert sampled[0] == sampled[1] and len(set(sampled[0])) == 2


@pytest.mark.parametrize("search, scheduler", [("optuna", "asha"), ("random", "fifo")])
def test_a_multi_objective_sweep_finds_the_front_and_picks_the_cheapest_trial_meeting_the_rule(
        tmp_path, mnist_dir, cluster, capsys, search, scheduler):
    """Optuna's multi-objective sampling (ASHA pruning on the first metric) and random search, on
    validation accuracy against training seconds; --pick takes the fastest trial meeting the rule."""
    from mnist_addition.sweep.results import pareto_front

    space = tiny_space(tmp_path, search={"width": {"choice": [4, 16]}})
    assert main(tune_args(space, mnist_dir, tmp_path, "mo", "--num-samples", "4", "--search", search,
                          "--scheduler", scheduler, "--metric", "val_both_acc", "--metric", "train_seconds",
                          "--pick", "val_both_acc>=0.05", "--address", cluster.address)) == 0
    err = capsys.readouterr().err
    assert "search on val_both_acc and train_seconds" in err
    assert ("(asha prunes on val_both_acc)" in err) == (scheduler == "asha")
    sweep = tmp_path / "mo"
    trials = read_trials(sweep)
    for t in trials:
        for key in ("val_both_acc", "train_seconds", "lr", "sum_weight", "width"):
            t[key] = float(t[key])
    front = pareto_front(trials, ("val_both_acc", "train_seconds"), ("max", "min"))
    with (sweep / "pareto.csv").open() as f:
        assert [r["trial_id"] for r in csv.DictReader(f)] == [t["trial_id"] for t in front] != []
    assert {t["trial_id"] for t in trials if t["pareto"] == "yes"} == {t["trial_id"] for t in front}
    assert (sweep / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finished = [t for t in trials if t["status"] == "finished" and t["val_both_acc"] >= 0.05]
    fastest = min(finished, key=lambda t: t["train_seconds"])
    best = TrainConfig.load(sweep / "best_config.json")
    assert best.lr == pytest.approx(fastest["lr"]) and best.width == fastest["width"]
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["metrics"] == ["val_both_acc", "train_seconds"] and summary["best_trial"] == fastest["trial_id"]


def test_population_based_training_copies_weights_and_the_copied_schedule_replays_from_scratch(
        tmp_path, mnist_dir, cluster, capsys):
    """4 trials, 4 epochs, a perturbation after every epoch, 2 at a time (a synchronous population
    takes turns): the worst quarter copies the best one's weights three times. A trial that copied
    records whose weights it took; its config.json holds the schedule it held epoch by epoch, and
    `train --config` of it follows that schedule from scratch."""
    from mnist_addition.core import hparams

    space = tiny_space(tmp_path, epochs=4, search={"lr": {"loguniform": [0.001, 0.05]}})
    assert main(tune_args(space, mnist_dir, tmp_path, "pbt", "--num-samples", "4", "--scheduler", "pbt",
                          "--perturbation-epochs", "1", "--address", cluster.address)) == 0
    sweep = tmp_path / "pbt"
    trials = read_trials(sweep)
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["copies"] >= 3 and summary["finished"] == 4, summary
    donors = {c.split("@")[0].removeprefix("trial-") for t in trials for c in t["copied_from"].split()}
    assert len(donors | {t["trial_id"] for t in trials if t["copied_from"]}) >= 3  # a population, not a pair
    copier = next(t for t in trials if t["copied_from"])
    run = sweep / f"trial-{copier['trial_id']}" / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    donor, _, at = copier["copied_from"].split()[-1].partition("@")
    assert donor != f"trial-{copier['trial_id']}" and (sweep / donor).is_dir()
    assert rows[int(at)]["weights_from"].startswith(f"{donor} (epoch {at}, step ")
    config = TrainConfig.load(run / "config.json")
    assert config.schedule == "constant" and config.hparam_schedule, config.hparam_schedule
    for row in rows:  # the config says what each epoch held
        held = hparams.values_at(config, row["epoch"])
        assert [held[k] for k in hparams.SCHEDULED] == [row[k] for k in hparams.SCHEDULED]
    best = TrainConfig.load(sweep / "best_config.json")
    winner = TrainConfig.load(sweep / f"trial-{summary['best_trial']}" / "run" / "config.json")
    assert best == winner.replace(data_dir=None, output_dir=None)

    replay = tmp_path / "replay"
    assert main(["train", "--config", str(run / "config.json"), "--data-dir", str(mnist_dir), "--output-dir",
                 str(replay), "--cpu"]) == 0
    again = [json.loads(line) for line in (replay / "metrics.jsonl").read_text().splitlines()]
    assert [[r[k] for k in hparams.SCHEDULED] for r in again] == [[r[k] for k in hparams.SCHEDULED] for r in rows]
    capsys.readouterr()


def test_a_crashed_trial_is_retried_from_its_checkpoint(tmp_path, mnist_dir, cluster, monkeypatch):
    marker = tmp_path / "crashed-once"
    monkeypatch.setattr(trial_module, "run_trial", crash_once_after_epoch_1(str(marker)))
    args = tune_args(tiny_space(tmp_path), mnist_dir, tmp_path, "faults", "--num-samples", "2",
                     "--scheduler", "fifo", "--address", cluster.address, "--max-failures", "1")
    assert main(args) == 0
    assert marker.exists()  # a trial did crash after epoch 1
    trials = read_trials(tmp_path / "faults")
    assert sorted(t["resumed_from_epoch"] for t in trials) == ["0", "1"]  # one retry, from epoch 1's checkpoint
    assert all(t["status"] == "finished" and t["epochs_run"] == "2" for t in trials)
    retried = next(t for t in trials if t["resumed_from_epoch"] == "1")
    history = (tmp_path / "faults" / f"trial-{retried['trial_id']}" / "run" / "metrics.jsonl").read_text()
    assert [json.loads(line)["epoch"] for line in history.splitlines()] == [1, 2]  # epoch 1 was not trained again


def hang_after_epoch_1(marker: str):
    """A trial function whose training hangs (a step that never returns) after epoch 1's report:
    trial ..._00000 on every attempt, the others on their first attempt only."""
    def run_trial(params, settings):
        import ray.tune

        from mnist_addition.training import step

        real, trial_id = ray.tune.report, ray.tune.get_context().get_trial_id()
        hang = lambda *args: time.sleep(3600)  # noqa: E731

        def hang_after_epoch_1(metrics, checkpoint=None):
            real(metrics, checkpoint=checkpoint)
            if metrics["epoch"] == 1:
                os.close(os.open(f"{marker}-{trial_id}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                step.train_step = hang

        ray.tune.report = hang_after_epoch_1
        if os.path.exists(f"{marker}-{trial_id}") and trial_id.endswith("_00000"):
            step.train_step = hang  # its retry, from epoch 1's checkpoint, hangs at its first step
        return trial_module.run_trial(params, settings)

    return run_trial


def test_a_hung_trial_is_stopped_marked_hung_and_retried_from_its_checkpoint(tmp_path, mnist_dir, cluster,
                                                                              monkeypatch, capsys, mlflow_db):
    """--trial-timeout 8: a trial that stops making steps is stopped 8 s later, with where it was
    in hung.json; retried from its epoch-1 checkpoint it finishes (hangs 1), or, hanging again on
    its last retry, it ends "hung", not "error", in trials.csv and in MLflow."""
    monkeypatch.setattr(trial_module, "run_trial", hang_after_epoch_1(str(tmp_path / "hung")))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db)
    assert main(tune_args(tiny_space(tmp_path), mnist_dir, tmp_path, "hangs", "--num-samples", "2",
                          "--scheduler", "fifo", "--address", cluster.address, "--max-failures", "1",
                          "--trial-timeout", "8", "--log-with", "mlflow")) == 0
    err = capsys.readouterr().err
    sweep = tmp_path / "hangs"
    trials = {t["trial_id"][-5:]: t for t in read_trials(sweep)}
    hung, recovered = trials["00000"], trials["00001"]
    assert (hung["status"], hung["hangs"], hung["epochs_run"]) == ("hung", "2", "1")
    assert (recovered["status"], recovered["hangs"], recovered["resumed_from_epoch"]) == ("finished", "1", "1")
    marker = json.loads((sweep / f"trial-{hung['trial_id']}" / "hung.json").read_text())
    assert marker["hangs"] == 2 and marker["idle_seconds"] >= 8 and "train_epoch" in marker["stack"]
    assert marker["stack"].rstrip().endswith("time.sleep(3600)  # noqa: E731")  # where it was: the hung step
    assert f"{recovered['trial_id']} failed hung: no training step" in err
    summary = json.loads((sweep / "summary.json").read_text())
    assert (summary["hung"], summary["errors"], summary["finished"]) == (1, 1, 1)
    assert json.loads((sweep / "best_config.json").read_text())["lr"] == pytest.approx(float(recovered["lr"]))
    check_trials_in_mlflow(mlflow_db, "hangs", list(trials.values()))  # the status tag: hung, finished


def sleep_after_epoch_1_but_00000(seconds: float):
    """A trial function whose trials, all but ..._00000, sleep after reporting epoch 1."""
    def run_trial(params, settings):
        import ray.tune

        real, trial_id = ray.tune.report, ray.tune.get_context().get_trial_id()

        def slow(metrics, checkpoint=None):
            real(metrics, checkpoint=checkpoint)
            if metrics["epoch"] == 1 and not trial_id.endswith("_00000"):
                time.sleep(seconds)

        ray.tune.report = slow
        return trial_module.run_trial(params, settings)

    return run_trial


def test_a_spent_time_budget_writes_what_finished_and_the_sweep_resumes_and_grows(tmp_path, mnist_dir, cluster,
                                                                                   monkeypatch, capsys):
    """--time-budget: the trials still running are stopped resumably, trials.csv and best_config.json
    are written from the one that finished, exit 0; --resume --num-samples 3 finishes the stopped
    trial from its checkpoint and adds a third (random search, grown through the command line)."""
    real = trial_module.run_trial
    monkeypatch.setattr(trial_module, "run_trial", sleep_after_epoch_1_but_00000(600))
    args = tune_args(tiny_space(tmp_path), mnist_dir, tmp_path, "budget", "--num-samples", "2", "--scheduler", "fifo",
                     "--address", cluster.address)
    assert main([*args, "--time-budget", "20"]) == 0
    err = capsys.readouterr().err
    assert "the time budget of 20 s is spent: 1 of 2 trials unfinished" in err
    assert err.rstrip().endswith(f"continue with  mnist-addition tune --resume --name budget --storage-path {tmp_path}")
    sweep = tmp_path / "budget"
    trials = {t["trial_id"][-5:]: t for t in read_trials(sweep)}
    assert (trials["00000"]["status"], trials["00001"]["status"]) == ("finished", "unfinished")
    assert json.loads((sweep / "best_config.json").read_text())["lr"] == pytest.approx(float(trials["00000"]["lr"]))
    monkeypatch.setattr(trial_module, "run_trial", real)
    assert main(["tune", "--resume", "--name", "budget", "--storage-path", str(tmp_path), "--address",
                 cluster.address, "--num-samples", "3"]) == 0
    assert "from 2 to 3 trials" in capsys.readouterr().err
    resumed = {t["trial_id"][-5:]: t for t in read_trials(sweep)}
    assert resumed["00001"]["status"] == "finished" and resumed["00001"]["resumed_from_epoch"] == "1"
    assert resumed["00000"]["val_both_acc"] == trials["00000"]["val_both_acc"]  # kept, not trained again
    assert (resumed["00002"]["status"], resumed["00002"]["resumed_from_epoch"]) == ("finished", "0")  # the new one
    assert resumed["00002"]["lr"] not in (trials["00000"]["lr"], trials["00001"]["lr"])


def test_a_k_seed_sweep_ranks_the_mean_picks_on_the_worst_seed_and_resumes_all_seeds_bit_identically(
        tmp_path, mnist_dir, cluster, monkeypatch, capsys):
    """--seeds 2: every report is the mean over the trial's two seeds with their spread and worst
    beside it; --pick on the worst seed; a trial crashed after epoch 1 resumes both seeds from its
    one checkpoint; each seed ends bit-identical to `train` of that seed alone."""
    from mnist_addition.training.run import train
    from mnist_addition.training.seeds import over_seeds

    threads = torch.get_num_threads()
    marker = tmp_path / "crashed-once"
    monkeypatch.setattr(trial_module, "run_trial", crash_once_after_epoch_1(str(marker)))
    assert main(tune_args(tiny_space(tmp_path), mnist_dir, tmp_path, "k2", "--num-samples", "2", "--seeds", "2",
                          "--scheduler", "fifo", "--address", cluster.address, "--max-failures", "1",
                          "--metric", "val_both_acc", "--metric", "train_seconds",
                          "--pick", "val_both_acc_min>=0.0")) == 0
    assert "worst of 2 seeds" in capsys.readouterr().err and marker.exists()
    sweep = tmp_path / "k2"
    trials = read_trials(sweep)
    assert sorted(t["resumed_from_epoch"] for t in trials) == ["0", "1"]  # one trial retried from epoch 1
    for t in trials:
        run = sweep / f"trial-{t['trial_id']}" / "run"
        assert sorted(p.name for p in run.iterdir()) == ["seed-0", "seed-1"]  # the space's seed 0 and the next
        last = [json.loads((run / f"seed-{s}" / "metrics.jsonl").read_text().splitlines()[-1]) for s in (0, 1)]
        means = over_seeds(last)
        for key in ("val_both_acc", "val_both_acc_std", "val_both_acc_min", "train_seconds"):
            assert float(t[key]) == pytest.approx(means[key])
        assert t["seeds"] == "2" and float(t["val_both_acc_min"]) == min(r["val_both_acc"] for r in last)
        for s in (0, 1):  # neither the lockstep nor the retry changed a seed's training
            history = (run / f"seed-{s}" / "metrics.jsonl").read_text().splitlines()
            assert [json.loads(line)["epoch"] for line in history] == [1, 2]
            alone = tmp_path / f"{t['trial_id']}-seed-{s}"
            torch.set_num_threads(int(t["threads"]))  # as the trial computed: float sums depend on it
            train(TrainConfig.load(run / f"seed-{s}" / "config.json").replace(output_dir=str(alone)), progress=False)
            assert same_weights(run / f"seed-{s}", alone)
    torch.set_num_threads(threads)
    best = json.loads((sweep / "best_config.json").read_text())
    fastest = min(trials, key=lambda t: float(t["train_seconds"]))
    assert best["seeds"] == 2 and best["lr"] == pytest.approx(float(fastest["lr"]))  # picked by the mean time
    with (sweep / "pareto.csv").open() as f:
        assert {"val_both_acc_std", "train_seconds_std"} <= set(csv.DictReader(f).fieldnames)


def test_a_sweep_whose_only_trial_failed_exits_1_without_a_best_config(tmp_path, mnist_dir, cluster, monkeypatch,
                                                                         capsys):
    monkeypatch.setattr(trial_module, "run_trial", crash_once_after_epoch_1(str(tmp_path / "marker")))
    args = tune_args(tiny_space(tmp_path), mnist_dir, tmp_path, "nofaults", "--num-samples", "1",
                     "--scheduler", "fifo", "--address", cluster.address, "--max-failures", "0")
    assert main(args) == 1  # epoch 1 was reported, but a failed trial is never ranked
    err = capsys.readouterr().err
    assert "error: no trial produced a usable val_both_acc (1 failed" in err
    (trial,) = read_trials(tmp_path / "nofaults")
    assert trial["status"] == "error" and trial["epochs_run"] == "1"
    assert not (tmp_path / "nofaults" / "best_config.json").exists()


def test_an_interrupted_sweep_on_uri_storage_resumes_and_every_trial_folder_arrives(tmp_path, mnist_dir, cluster):
    # A file:// URI: Ray and the trials go through pyarrow.fs as for s3://, and the trials' run
    # folders reach the storage only by being uploaded (they are written in Ray's working dirs).
    storage = f"file://{tmp_path}/remote"
    space = tiny_space(tmp_path, epochs=3)
    args = tune_args(space, mnist_dir, storage, "interrupted", "--num-samples", "4", "--scheduler", "fifo",
                     "--max-concurrent", "1", "--address", cluster.address)
    proc = subprocess.Popen([sys.executable, "-m", "mnist_addition", *args], stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # Ctrl-C as soon as the first trial has finished
        lines.append(line)
        if " finished: " in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, "".join(lines) + rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith("mnist-addition tune: interrupted by Ctrl-C: ") and "Traceback" not in rest
    assert last.endswith(f"mnist-addition tune --resume --name interrupted --storage-path {storage}")
    sweep = tmp_path / "remote" / "interrupted"
    so_far = read_trials(sweep)  # what ran, and nothing said of a trial that did not end
    assert {t["status"] for t in so_far} <= {"finished", "unfinished"} and "finished" in {t["status"] for t in so_far}
    assert not (sweep / "best_config.json").exists()  # chosen when the sweep ends, not from unfinished trials
    finished = [p for p in sweep.glob("trial-*") if (p / "progress.csv").exists()
                and len((p / "progress.csv").read_text().splitlines()) == 1 + 3]
    assert finished, "no trial had finished before the interrupt"
    before = {p.name: (p / "progress.csv").read_text() for p in finished}

    assert main(["tune", "--resume", "--name", "interrupted", "--storage-path", storage,
                 "--address", cluster.address]) == 0
    trials = read_trials(sweep)
    assert len(trials) == 4 and all(t["status"] == "finished" for t in trials)
    for name, progress in before.items():  # finished trials were kept, not trained again
        assert (sweep / name / "progress.csv").read_text() == progress
    for t in trials:  # every trial's run folder, its checkpoint and Ray's results are in the storage
        files = run_files(sweep, t["trial_id"])
        assert {"config.json", "metrics.jsonl", "metrics.json", "model.safetensors", "curves.png"} <= files
        assert not any(f.startswith("checkpoints/") for f in files)  # Ray keeps the reported checkpoint
        assert list((sweep / f"trial-{t['trial_id']}").glob("checkpoint_*/trainer_state.json"))
        epochs = [json.loads(line)["epoch"] for line in (sweep / f"trial-{t['trial_id']}" / "run" / "metrics.jsonl")
                  .read_text().splitlines()]
        assert epochs == [1, 2, 3]
    assert json.loads((sweep / "summary.json").read_text())["best_trial"] == trials[0]["trial_id"]


def _tune_process(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mnist_addition", *args], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_sweep_killed_just_after_rays_first_save_resumes(tmp_path, mnist_dir, cluster):
    """SIGKILL right after Ray first wrote its state, before a trial reported: the moment that used
    to leave a state no signature covered, so that --resume refused the user's own sweep."""
    sweep = tmp_path / "killed"
    proc = _tune_process(tune_args(tiny_space(tmp_path), mnist_dir, tmp_path, "killed", "--num-samples", "2",
                                   "--scheduler", "fifo", "--max-concurrent", "1", "--address", cluster.address))
    deadline = time.monotonic() + 300
    while not list(sweep.glob("experiment_state-*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.communicate(timeout=60)
    assert list(sweep.glob("experiment_state-*.json")), "Ray never saved its state"
    assert main(["tune", "--resume", "--name", "killed", "--storage-path", str(tmp_path), "--address",
                 cluster.address]) == 0
    trials = read_trials(sweep)
    assert len(trials) == 2 and all(t["status"] == "finished" for t in trials)


def test_sigterm_stops_a_sweep_resumably_and_either_way_back_continues_its_trials(tmp_path, mnist_dir, cluster,
                                                                                 capsys):
    """SIGTERM (a scheduler's preemption) mid-trial: exit 75, one line naming the command that
    continues, no trial called stopped early, no best_config.json. While it ran, its name had one
    writer. Resumed as Ray saved it, and rebuilt without Ray's state (as after a kill mid-save),
    the interrupted trial continues from its checkpoint."""
    name, epochs = "preempted", 30  # long enough that the first trial is still training when SIGTERM comes
    sweep = tmp_path / name
    proc = _tune_process(tune_args(tiny_space(tmp_path, epochs=epochs), mnist_dir, tmp_path, name, "--num-samples", "1",
                                   "--scheduler", "fifo", "--address", cluster.address))
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if f" epoch 2/{epochs} " in line:
            break
    assert main(tune_args(tiny_space(tmp_path), mnist_dir, tmp_path, name)) == 2  # the name has one writer
    assert "already exists: pass --resume" in capsys.readouterr().err
    assert main(["tune", "--resume", "--name", name, "--storage-path", str(tmp_path)]) == 2
    assert f"is in use by process {proc.pid}" in capsys.readouterr().err
    assert main(["runs", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "running"
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=300)[1]
    assert proc.returncode == 75, "".join(lines) + rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith("mnist-addition tune: interrupted by SIGTERM: ") and "Traceback" not in rest
    assert last.endswith(f"continue with  mnist-addition tune --resume --name {name} --storage-path {tmp_path}")
    stopped = read_trials(sweep)
    assert {t["status"] for t in stopped} == {"unfinished"} and 2 <= int(stopped[0]["epochs_run"]) < epochs
    assert not (sweep / "best_config.json").exists()
    assert main(["runs", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "interrupted, resumable (1 trial left)"

    rebuilt = shutil.copytree(sweep, tmp_path / "rebuilt")  # the same sweep, its Ray state unsigned
    signatures = json.loads((rebuilt / "state-signatures.json").read_text())
    signatures["files"] = {k: v for k, v in signatures["files"].items() if not k.startswith("experiment_state-")}
    (rebuilt / "state-signatures.json").write_text(json.dumps(signatures))
    for folder, how in ((name, "resuming " + str(sweep)), ("rebuilt", "resuming without Ray's saved state")):
        assert main(["tune", "--resume", "--name", folder, "--storage-path", str(tmp_path), "--address",
                     cluster.address]) == 0
        assert how in capsys.readouterr().err
        (trial,) = read_trials(tmp_path / folder)
        assert trial["status"] == "finished" and trial["epochs_run"] == str(epochs)
        assert (trial["lr"], trial["sum_weight"]) == (stopped[0]["lr"], stopped[0]["sum_weight"])
        assert int(trial["resumed_from_epoch"]) >= int(stopped[0]["epochs_run"]), trial  # from its checkpoint
    assert trial["continued_from"] == f"trial-{stopped[0]['trial_id']}"


def test_a_multi_worker_trial_trains_data_parallel_with_world_size_2_and_survives_a_crash(
        tmp_path, mnist_dir, own_cluster, monkeypatch):
    monkeypatch.setattr(trial_module, "run_trial",  # rank 0 crashes after epoch 1
                        crash_once_after_epoch_1(str(tmp_path / "crashed-once"), multi_worker=True))
    # Half a CPU a trial (a quarter a worker): room on the 2-CPU cluster for the restarted worker
    # group even while Ray has not yet released the crashed one's CPUs (it once kept them for good:
    # ray-project/ray #54305; the trial then waited for resources until CI's limit). A cluster of
    # its own: such a leak cannot starve the other tests' trials.
    assert main(tune_args(tiny_space(tmp_path), mnist_dir, tmp_path, "ddp", "--num-samples", "1",
                          "--workers-per-trial", "2", "--address", own_cluster[0].address, "--cpus-per-trial", "0.5")) == 0
    assert (tmp_path / "crashed-once").exists()
    (trial,) = read_trials(tmp_path / "ddp")
    assert trial["processes"] == "2" and trial["status"] == "finished"
    assert trial["resumed_from_epoch"] == "1"  # Ray Train restarted both workers from epoch 1's checkpoint
    run = tmp_path / "ddp" / f"trial-{trial['trial_id']}" / "run"
    setup = json.loads((run / "config.json").read_text())["setup"]
    assert setup["num_processes"] == 2 and setup["distributed_type"] == "MULTI_CPU"
    assert setup["per_process_batch_size"] == 16  # each worker took half of every global batch of 32
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def slow_reports(seconds: float):
    """A trial function whose trial pauses after every report: time for a test to act mid-trial."""
    def run_trial(params, settings):
        import ray.tune

        real = ray.tune.report

        def slow(metrics, checkpoint=None):
            real(metrics, checkpoint=checkpoint)
            time.sleep(seconds)

        ray.tune.report = slow
        return trial_module.run_trial(params, settings)

    return run_trial


@pytest.fixture
def own_cluster():
    """A cluster for one test: a head that runs no trial (0 CPUs) and two 1-CPU nodes, one of which
    the test may remove (or leave with resources Ray never gives back)."""
    from ray.cluster_utils import Cluster

    node = dict(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=100 * 1024**2)
    c = Cluster(initialize_head=True, head_node_args={**node, "num_cpus": 0, "include_dashboard": False})
    workers = [c.add_node(**node) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@proven_on_real_addresses("tests/test_sweep_machines.py: a trial's worker cut off")
def test_a_trial_whose_node_is_lost_goes_on_on_another_node(tmp_path, mnist_dir, own_cluster, monkeypatch):
    """The node of a running trial removed after the trial reported epoch 1: Ray retries it on the
    other node from that checkpoint; trials.csv says where it ran before."""
    import threading

    c, workers = own_cluster
    monkeypatch.setattr(trial_module, "run_trial", slow_reports(4.0))
    sweep, removed = tmp_path / "lossy", []

    def remove_the_trials_node() -> None:  # once epoch 1 is reported, from the trial's result.json
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not removed:
            for result in sweep.glob("trial-*/result.json"):
                rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
                node = next((r["node_id"] for r in rows if r.get("epoch") == 1), None)
                victim = next((w for w in workers if w.node_id == node), None)
                if victim is not None:
                    c.remove_node(victim)
                    removed.append(node)
                    return
            time.sleep(0.2)

    watcher = threading.Thread(target=remove_the_trials_node, daemon=True)
    watcher.start()
    assert main(tune_args(tiny_space(tmp_path, epochs=3), mnist_dir, tmp_path, "lossy", "--num-samples", "1",
                          "--scheduler", "fifo", "--address", c.address, "--max-failures", "2")) == 0
    watcher.join(timeout=10)
    assert removed, "the trial's node was never removed"
    (trial,) = read_trials(sweep)
    assert trial["status"] == "finished" and trial["epochs_run"] == "3"
    assert int(trial["resumed_from_epoch"]) >= 1  # from a reported checkpoint, not from scratch
    assert trial["moved_from"] == removed[0] and trial["node_id"] not in ("", removed[0])


@pytest.mark.parametrize("scheduler", ["asha", "fifo"])
def test_searched_epochs_set_the_budget_and_a_cut_trial_is_never_finished(tmp_path, mnist_dir, cluster, capsys,
                                                                          scheduler):
    space = tiny_space(tmp_path, search={"epochs": {"choice": [1, 3]}})
    assert main(tune_args(space, mnist_dir, tmp_path, scheduler, "--num-samples", "4", "--scheduler", scheduler,
                          "--max-concurrent", "1", "--seed", "3", "--address", cluster.address)) == 0
    assert "4 trials x up to 3 epochs" in capsys.readouterr().err  # the budget is the largest searched epochs
    trials = read_trials(tmp_path / scheduler)
    assert {t["epochs"] for t in trials} == {"1", "3"}
    for t in trials:
        assert t["budget_epochs"] == t["epochs"] and int(t["epochs_run"]) <= int(t["epochs"])
        assert (t["status"] == "finished") == (t["epochs_run"] == t["epochs"]), t
    if scheduler == "fifo":
        assert all(t["status"] == "finished" for t in trials)
    best = TrainConfig.load(tmp_path / scheduler / "best_config.json")
    assert trials[0]["status"] == "finished" and best.epochs == int(trials[0]["epochs_run"])


@pytest.mark.parametrize("grace, max_epochs, rungs", [(1, 6, [4, 2, 1]), (4, 16, [16, 8, 4]), (1, 3, [2, 1])])
def test_asha_rungs_start_at_the_grace_epochs_and_end_at_the_budget(grace, max_epochs, rungs):
    from mnist_addition.sweep.driver import _tune_config
    from mnist_addition.sweep.options import SweepOptions

    scheduler = _tune_config(SweepOptions(grace_epochs=grace), None, max_epochs, concurrent=1).scheduler
    assert scheduler._max_t == max_epochs  # Ray's private names: what ASHA was built with
    assert [milestone for milestone, _ in scheduler._brackets[0]._rungs] == rungs


@pytest.fixture(scope="module")
def gpu_cluster():
    """One node declaring 4 CPUs and 1 GPU that it does not have: Ray schedules shares of it all the same."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=4, num_gpus=1, node_ip_address="127.0.0.1", object_store_memory=100 * 1024**2,
        include_dashboard=False))
    c.wait_for_nodes()
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@pytest.mark.parametrize("gpus", [["--gpus-per-trial", "0.25"], []], ids=["quarter", "default"])
def test_four_trials_share_one_gpu_at_once(tmp_path, mnist_dir, gpu_cluster, monkeypatch, capsys, gpus):
    barrier = tmp_path / "started"
    barrier.mkdir()
    monkeypatch.setattr(trial_module, "run_trial", all_at_once(str(barrier), 4))
    assert main(tune_args(tiny_space(tmp_path, epochs=1), mnist_dir, tmp_path, "gpus", "--num-samples", "4",
                          "--scheduler", "fifo", "--address", gpu_cluster.address, *gpus)) == 0
    assert "(4 at a time, 1 worker(s) and 1 CPU, 0.25 GPU each)" in capsys.readouterr().err
    trials = read_trials(tmp_path / "gpus")
    assert len(trials) == 4 and all(t["status"] == "finished" for t in trials)
    assert {t["gpu_ids"] for t in trials} == {"0"}  # each trial saw the one GPU Ray gave it a share of


# -- errors: one line, exit 2, before Ray starts, nothing overwritten ---------------------------

def test_sweep_errors_are_one_line_and_touch_nothing(tmp_path, mnist_dir, capsys):
    space = tiny_space(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  lr: {uniform: [0.1, 0.01]}\n")
    storage = tmp_path / "sweeps"
    big_batch = tmp_path / "big.yaml"  # fine for TrainConfig; larger than the 500 training images
    big_batch.write_text(yaml.safe_dump({"fixed": {k: v for k, v in TINY.items() if k != "batch_size"},
                                         "search": {"batch_size": {"choice": [32, 512]}}}))
    width_only, searched_epochs, onecycle, owned = (tmp_path / f"{n}.yaml" for n in ("w", "e", "o", "h"))
    width_only.write_text(yaml.safe_dump({"fixed": {k: v for k, v in TINY.items() if k != "width"},
                                          "search": {"width": {"choice": [4, 8]}}}))
    searched_epochs.write_text(yaml.safe_dump({"fixed": {k: v for k, v in TINY.items() if k != "epochs"},
                                               "search": {"lr": {"uniform": [0.01, 0.02]},
                                                          "epochs": {"randint": [2, 3]}}}))
    onecycle.write_text(yaml.safe_dump({"fixed": {**TINY, "epochs": 4, "schedule": "onecycle"},
                                        "search": {"lr": {"uniform": [0.01, 0.02]}}}))
    owned.write_text(yaml.safe_dump({"fixed": {**TINY, "hparam_schedule": []}, "search": {"lr": {"uniform": [0.01, 0.02]}}}))
    refit = tmp_path / "refit.yaml"  # a sweep ranks on validation: a space without it is refused
    refit.write_text(yaml.safe_dump({"fixed": {**TINY, "val_size": 0}, "search": {"lr": {"uniform": [0.01, 0.02]}}}))
    cases = [
        (["--space", str(refit), "--data-dir", str(mnist_dir)],
         "val_size 0 leaves no validation split, and a sweep ranks its trials on validation", 2),
        (["--space", str(bad)], "lr: uniform needs low < high", 2),
        (["--space", "nonsense"], "--space nonsense: no such file", 2),
        (["--space", str(space), "--metric", "val_loss", "--mode", "max"], "would pick the worst trial", 2),
        (["--space", str(space), "--num-samples", "0"], "--num-samples must be at least 1", 2),
        (["--space", str(space), "--gpus-per-trial", "1.5"], "whole number of GPUs", 2),
        (["--space", str(space), "--gpus-per-trial", "0.5", "--workers-per-trial", "2"], "fraction of a GPU", 2),
        (["--space", str(space), "--name", "../escape"], "must be one folder name inside --storage-path", 2),
        (["--space", str(space), "--storage-path", str(bad)], "is a file, not a folder", 2),
        (["--space", str(space), "--grace-epochs", "0"], "--grace-epochs must be at least 1", 2),
        (["--space", str(space), "--data-dir", str(mnist_dir), "--grace-epochs", "3"],
         "--grace-epochs 3 is more than the 2 epochs a trial can get", 2),
        (["--space", str(space), "--resume"], "--space cannot change when resuming", 2),
        (["--log-with", "mlflow", "--resume", "--name", "x"], "--log-with cannot change when resuming", 2),
        (["--space", str(space), "--log-with", "mlfow"], "is not a list of sweep trackers", 2),
        (["--space", str(space), "--metric", "val_both_acc", "--metric", "train_seconds", "--pick", "fast"],
         "--pick 'fast' is not a rule", 2),
        (["--space", str(space), "--pick", "val_both_acc>=0.99"], "needs another --metric to pick the best by", 2),
        (["--space", str(space), "--metric", "val_both_acc", "--metric", "train_seconds", "--mode", "max"],
         "once per --metric", 2),
        (["--resume"], "--resume needs --name", 2),
        (["--resume", "--name", "never-ran"], "is not a sweep started by mnist-addition tune", 2),
        (["--space", str(space), "--data-dir", str(tmp_path / "nowhere"), "--no-download"], "MNIST not found", 1),
        (["--space", str(big_batch), "--data-dir", str(mnist_dir)],
         "a trial with batch_size=512 would fail: --batch-size 512 is larger than the 500 training images", 2),
        (["--space", str(space), "--data-dir", str(mnist_dir), "--workers-per-trial", "3"],
         "--batch-size 32 is not divisible by 3 processes", 2),
        (["--space", str(space), "--scheduler", "pbt", "--metric", "val_both_acc", "--metric", "train_seconds"],
         "--scheduler pbt ranks its population on one --metric", 2),
        (["--space", str(space), "--scheduler", "pbt", "--search", "optuna"], "drop --search optuna", 2),
        (["--space", str(space), "--scheduler", "pbt", "--workers-per-trial", "2"], "drop --workers-per-trial 2", 2),
        (["--space", str(space), "--scheduler", "pbt", "--max-concurrent", "2"], "cannot limit a pbt population", 2),
        (["--space", str(space), "--scheduler", "pbt", "--perturbation-epochs", "0"],
         "--perturbation-epochs must be at least 1", 2),
        (["--space", str(space), "--data-dir", str(mnist_dir), "--scheduler", "pbt", "--perturbation-epochs", "2"],
         "--perturbation-epochs 2 leaves no perturbation in the trials' 2 epochs", 2),
        (["--space", str(width_only), "--data-dir", str(mnist_dir), "--scheduler", "pbt"],
         "searches none of them: add one", 2),
        (["--space", str(searched_epochs), "--data-dir", str(mnist_dir), "--scheduler", "pbt"],
         "searches epochs, but a population trains together", 2),
        (["--space", str(onecycle), "--data-dir", str(mnist_dir), "--scheduler", "pbt"],
         "trains with a constant learning rate between its perturbations", 2),
        (["--space", str(owned), "--data-dir", str(mnist_dir)],
         "'hparam_schedule' is set by the sweep, not the space: remove it and use --scheduler pbt", 2),
    ]
    for extra, message, expected in cases:
        code = main(["tune", "--storage-path", str(storage), *extra])
        err = capsys.readouterr().err
        assert code == expected and message in err, (extra, code, err)
        assert err.count("\n") == 1, err
    assert not storage.exists()
    assert not ray.is_initialized()

    taken = storage / "taken"
    taken.mkdir(parents=True)
    (taken / "keep.txt").write_text("precious")
    assert main(["tune", "--space", str(space), "--data-dir", str(mnist_dir), "--storage-path", str(storage),
                 "--name", "taken"]) == 2
    assert "already exists: pass --resume" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]


def test_cluster_problems_are_one_line_errors(tmp_path, mnist_dir, cluster, capsys):
    space = str(tiny_space(tmp_path))
    common = ["tune", "--space", space, "--data-dir", str(mnist_dir), "--storage-path", str(tmp_path)]
    assert main([*common, "--address", "127.0.0.1:1"]) == 2  # nothing listens there: seconds, not minutes
    assert "no Ray cluster at --address 127.0.0.1:1" in capsys.readouterr().err
    assert main([*common, "--address", cluster.address, "--cpus-per-trial", "4"]) == 2  # nodes have 1 CPU each
    assert "no Ray node has 4 CPUs" in capsys.readouterr().err
    assert main([*common, "--address", cluster.address, "--gpus-per-trial", "1"]) == 2
    assert "0 GPUs" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_without_ray_the_command_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("ray") else real(name, *a))
    assert main(["tune", "--space", str(tiny_space(tmp_path)), "--storage-path", str(tmp_path)]) == 2
    assert 'pip install -e ".[tune]"' in capsys.readouterr().err


def test_ray_cluster_launcher_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = Path(__file__).resolve().parents[1] / "launch" / "ray" / "cluster.yaml"
    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(config))  # what `ray up` does first: defaults, then Ray's JSON schema
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


# -- what --resume trusts: Ray's state signed by this user's key ---------------------------------

class _Payload:
    """Unpickling this makes a folder: proof that code from a sweep folder ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def signed_sweep(tmp_path_factory, mnist_dir, cluster):
    """A finished Optuna sweep (so the searcher keeps a pickle too), run once for these tests."""
    root = tmp_path_factory.mktemp("signed")
    assert main(tune_args(tiny_space(root, epochs=1), mnist_dir, root, "s", "--num-samples", "2", "--scheduler", "fifo",
                          "--search", "optuna", "--address", cluster.address)) == 0
    return root / "s"


def _ray_pickles(sweep: Path) -> list[str]:
    """Every file of a sweep folder that Ray unpickles on restore (JSON with embedded pickles too)."""
    return sorted(p.relative_to(sweep).as_posix() for p in sweep.rglob("*") if p.is_file() and (
        p.suffix == ".pkl" or p.name.startswith(("experiment_state-", "basic-variant-state-", "searcher-state-"))))


def _plant(sweep: Path, name: str, marker: Path) -> None:
    """A pickle that makes ``marker`` when loaded, at ``name`` (in Ray's JSON envelope where Ray expects JSON)."""
    from ray import cloudpickle
    from ray._common.utils import binary_to_hex

    blob = cloudpickle.dumps(_Payload(marker))
    if name.endswith(".json") and name.startswith("experiment_state-"):  # JSON with Ray's pickle fallback
        blob = json.dumps({"runner_data": {"_type": "CLOUDPICKLE_FALLBACK", "value": binary_to_hex(blob)}}).encode()
    (sweep / name).write_bytes(blob)


def test_every_pickle_ray_keeps_is_signed_and_a_planted_payload_never_runs(signed_sweep, tmp_path, cluster, capsys):
    """Each file Ray unpickles, replaced by a payload, fails its signature; a resume then goes on
    without Ray's state (its trials continue from their checkpoints) and the payload never runs."""
    from mnist_addition.sweep.storage import Store
    from mnist_addition.sweep.trust import Signer

    names = _ray_pickles(signed_sweep)
    assert {"tuner.pkl"} <= set(names) and any(n.startswith("experiment_state-") for n in names)
    assert any(n.startswith("searcher-state-") for n in names) and any(n.endswith("/params.pkl") for n in names)
    marker = tmp_path / "payload-ran"
    for i, name in enumerate(names):
        copy = shutil.copytree(signed_sweep, tmp_path / f"c{i}")
        _plant(copy, name, marker)
        assert Signer.verified(Store(str(copy))).unverified == [name]
    planted = shutil.copytree(signed_sweep, tmp_path / "planted")
    for name in names:
        _plant(planted, name, marker)
    assert main(["tune", "--resume", "--name", "planted", "--storage-path", str(tmp_path), "--address",
                 cluster.address]) == 0
    err = capsys.readouterr().err
    assert "resuming without Ray's saved state" in err and "not signed by your key" in err and "never loaded" in err
    assert not marker.exists(), "a planted payload ran"
    trials = read_trials(planted)
    before = {t["trial_id"]: t for t in read_trials(signed_sweep)}
    assert len(trials) == 2 and all(t["status"] == "finished" for t in trials)
    for t in trials:  # each trial of the rebuilt sweep continued its earlier self: nothing trained again
        earlier = before[t["continued_from"].removeprefix("trial-")]
        assert t["resumed_from_epoch"] == "1" and t["val_both_acc"] == earlier["val_both_acc"]
        assert (t["lr"], t["sum_weight"]) == (earlier["lr"], earlier["sum_weight"])
    aside = {p.relative_to(next((planted / ".unverified").iterdir())).as_posix()
             for p in (planted / ".unverified").rglob("*") if p.is_file()}
    assert set(names) <= aside  # kept, never read
    assert main(["tune", "--resume", "--name", "planted", "--storage-path", str(tmp_path), "--address",
                 cluster.address]) == 0  # and the rebuilt sweep's own state resumes as Ray saved it
    assert "resuming without" not in capsys.readouterr().err
    # the same folder untouched resumes (under another name too: signatures cover paths inside it)
    shutil.copytree(signed_sweep, tmp_path / "intact")
    assert main(["tune", "--resume", "--name", "intact", "--storage-path", str(tmp_path), "--address",
                 cluster.address]) == 0
    assert "resuming without" not in capsys.readouterr().err


def test_resume_refuses_a_sweep_without_this_users_key_or_with_a_link_or_an_unsigned_sweep_json(
        signed_sweep, tmp_path, monkeypatch, capsys):
    args = ["tune", "--resume", "--storage-path", str(tmp_path), "--name"]
    linked = shutil.copytree(signed_sweep, tmp_path / "linked")
    trial = next(linked.glob("trial-*"))
    (trial / "result.json").unlink()
    (trial / "result.json").symlink_to(tmp_path / "elsewhere")
    assert main([*args, "linked"]) == 2
    assert "result.json is a link" in capsys.readouterr().err and not (tmp_path / "elsewhere").exists()
    edited = shutil.copytree(signed_sweep, tmp_path / "edited")
    (edited / "sweep.json").write_text((edited / "sweep.json").read_text().replace('"num_samples": 2', '"num_samples": 9'))
    assert main([*args, "edited"]) == 2
    assert "sweep.json is not signed by your key" in capsys.readouterr().err
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another-user"))
    shutil.copytree(signed_sweep, tmp_path / "theirs")
    assert main([*args, "theirs"]) == 2
    assert "was not started by you on this machine" in capsys.readouterr().err


@pytest.mark.parametrize("edit,match", [
    (lambda saved: "not json", "is not what mnist-addition tune writes"),
    (lambda saved: {}, "is not what mnist-addition tune writes"),
    (lambda saved: {**saved, "options": {**saved["options"], "metric": "val_nonsense"}}, "holds options that are refused"),
    (lambda saved: {**saved, "options": {**saved["options"], "cpus_per_trial": 0.00001}}, "holds options that are refused"),
])
def test_resume_rechecks_the_options_of_a_signed_sweep_json(edit, match, signed_sweep, tmp_path, capsys):
    """Edited by its own user (and signed again, as if by hand): every option is checked again."""
    from mnist_addition.sweep.storage import Store
    from mnist_addition.sweep.trust import Signer

    copy = shutil.copytree(signed_sweep, tmp_path / "edited")
    signer = Signer.verified(Store(str(copy)))
    edited = edit(json.loads((copy / "sweep.json").read_text()))
    data = (edited if isinstance(edited, str) else json.dumps(edited)).encode()
    (copy / "sweep.json").write_bytes(data)
    signer.sign("sweep.json", data)
    signer.save()
    assert main(["tune", "--resume", "--name", "edited", "--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err and "Traceback" not in err


def test_the_signing_key_never_reaches_the_sweep_folder(signed_sweep):
    from mnist_addition.sweep.trust import signing_key

    key = signing_key(create=False)
    assert key and not any(key in p.read_bytes() or key.hex().encode() in p.read_bytes()
                           for p in signed_sweep.rglob("*") if p.is_file())
