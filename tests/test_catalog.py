"""``mnist-addition runs`` and ``compare`` on real run folders: finished, interrupted (resumable),
diverged, running (its lock held), killed before its first checkpoint; bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_addition.commands.cli import main

TINY = ["--width", "8", "--epochs", "2", "--batch-size", "32", "--val-size", "100", "--mixed-precision", "no",
        "--log-every", "5"]
PNG = b"\x89PNG\r\n\x1a\n"


def _train(mnist_dir: Path, run: Path, *extra: str) -> int:
    return main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY, *extra])


@pytest.fixture(scope="module")
def folder(mnist_dir, tmp_path_factory):
    """runs/{a (lr 0.01), b (lr 0.02, width 12)} finished, runs/group/stopped interrupted in epoch 2,
    runs/group/diverged (a NaN learning rate in epoch 2)."""
    import mnist_addition.training.step as step

    root = tmp_path_factory.mktemp("catalog") / "runs"
    assert _train(mnist_dir, root / "a", "--lr", "0.01") == 0
    assert _train(mnist_dir, root / "b", "--lr", "0.02", "--width", "12") == 0
    real_step, real_schedule = step.train_step, step.lr_schedule
    with pytest.MonkeyPatch.context() as patch:
        calls = []

        def interrupt(*args, **kwargs):
            calls.append(1)
            if len(calls) == 18:  # epoch 2, step 3
                raise KeyboardInterrupt
            return real_step(*args, **kwargs)

        patch.setattr(step, "train_step", interrupt)
        assert _train(mnist_dir, root / "group" / "stopped") == 130
        patch.setattr(step, "train_step", real_step)

        def poisoned(config, total):
            lr = real_schedule(config, total)
            return lambda s: float("nan") if s >= 20 else lr(s)

        patch.setattr(step, "lr_schedule", poisoned)
        assert _train(mnist_dir, root / "group" / "diverged") == 1
    return root


def _rows(capsys, *args: str) -> list[dict]:
    capsys.readouterr()
    assert main(["runs", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_runs_lists_every_run_with_its_status_recipe_and_accuracies(folder, capsys):
    rows = {r["name"]: r for r in _rows(capsys, str(folder))}
    assert set(rows) == {"a", "b", "group/stopped", "group/diverged"}
    a, b = rows["a"], rows["b"]
    metrics = json.loads((folder / "a" / "metrics.json").read_text())
    assert a["status"] == "finished" and (a["preset"], a["width"], a["epochs"], a["epochs_done"]) == ("fast", 8, 2, 2)
    assert a["val_sum"] == metrics["val"]["sum_acc"] and a["test_digit"] == metrics["test"]["digit_acc"]
    assert a["train_seconds"] == metrics["train_seconds"] and a["date"].startswith("20")
    assert b["width"] == 12
    stopped = rows["group/stopped"]
    assert stopped["status"] == "interrupted, resumable" and stopped["epochs_done"] == 1
    assert stopped["test_digit"] is None and stopped["val_digit"] is not None  # its last epoch's validation
    assert rows["group/diverged"]["status"] == "diverged, resumable"


def test_runs_sorts_by_a_key_and_prints_a_table(folder, capsys):
    rows = _rows(capsys, str(folder), "--sort", "val_sum")
    values = [r["val_sum"] for r in rows if r["val_sum"] is not None]
    assert values == sorted(values, reverse=True)  # accuracies: best first
    names = [r["name"] for r in _rows(capsys, str(folder), "--sort", "name")]
    assert names == sorted(names)
    assert main(["runs", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "interrupted, resumable" in out and "group/diverged" in out and "finished" in out


def test_a_run_whose_lock_is_held_is_running_and_one_killed_before_its_checkpoint_says_so(folder, tmp_path, capsys):
    import shutil

    from mnist_addition.rundir.files import FolderLock

    live = shutil.copytree(folder / "group" / "stopped", tmp_path / "runs" / "live")
    lock = FolderLock(live / ".lock")
    assert lock.acquire(b"{}")
    try:
        assert _rows(capsys, str(tmp_path / "runs"))[0]["status"] == "running"
    finally:
        lock.release()
    assert _rows(capsys, str(tmp_path / "runs"))[0]["status"] == "interrupted, resumable"
    shutil.rmtree(live / "checkpoints")
    (live / "status.json").unlink()
    assert _rows(capsys, str(tmp_path / "runs"))[0]["status"] == "stopped, no checkpoint"


def test_runs_reads_no_torch_and_names_what_it_found_in_several_folders(folder, tmp_path):
    code = ("import sys, json; from mnist_addition.commands.cli import main; main(['runs', sys.argv[1], sys.argv[2], '--json']); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'accelerate'))))")
    out = subprocess.run([sys.executable, "-c", code, str(folder / "group"), str(folder / "a")], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert json.loads(out[-1]) == []
    assert {r["name"] for r in json.loads(out[0])} == {"group/stopped", "group/diverged", "a"}


def test_compare_shows_the_keys_that_differ_the_metrics_and_draws_the_curves(folder, tmp_path, capsys):
    picture = tmp_path / "cmp.png"
    capsys.readouterr()
    assert main(["compare", str(folder / "a"), str(folder / "b"), str(folder / "group" / "stopped"),
                 "--output", str(picture), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runs"] == ["a", "b", "stopped"]
    assert result["differ"] == {"lr": [0.01, 0.02, 0.008], "width": [8, 12, 8]}  # output_dir aside
    assert [m["status"] for m in result["metrics"]] == ["finished", "finished", "interrupted, resumable"]
    assert picture.read_bytes()[:8] == PNG
    assert main(["compare", str(folder / "a"), str(folder / "b"), "--output", str(picture), "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "config keys that differ" in out and "val digit" in out and f"wrote {picture}" in out


@pytest.mark.parametrize("args, code, says", [
    (["runs", "{missing}"], 2, "does not exist: name a folder of runs"),
    (["runs", "{empty}"], 2, "holds no runs or sweeps"),
    (["runs", "{folder}", "--sort", "speed"], 2, "invalid choice: 'speed'"),
    (["compare", "{folder}/a"], 2, "at least two run folders"),
    (["compare", "{folder}/a", "{empty}"], 2, "has no config.json: it is not a run folder"),
    (["compare", "{folder}/a", "{folder}/a/../a"], 2, "is given twice"),
    (["compare", "{folder}/a", "{folder}/b", "--output", "{folder}/a/curves.png", "--overwrite"], 2,
     "which this command reads: it is never replaced"),
    (["compare", "{folder}/a", "{folder}/b", "--output", "{existing}"], 2, "exists: choose another --output"),
])
def test_bad_input_is_one_line(args, code, says, folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    existing = tmp_path / "old.png"
    existing.write_bytes(b"keep")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    names = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "folder": folder, "existing": existing}
    capsys.readouterr()
    try:
        got = main([a.format(**names) for a in args])
    except SystemExit as e:  # argparse's refusals exit from the parser
        got = e.code
    assert got == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert existing.read_bytes() == b"keep"
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_tracker_copy_of_config_json_is_not_a_run(folder, tmp_path, capsys):
    """MLflow keeps a run's uploaded config.json in mlruns/.../artifacts: that is not a run folder."""
    artifacts = tmp_path / "mlruns" / "1" / "abc" / "artifacts"
    os.makedirs(artifacts)
    (artifacts / "config.json").write_text((folder / "a" / "config.json").read_text())
    assert main(["runs", str(tmp_path)]) == 2
    assert "holds no runs or sweeps" in capsys.readouterr().err


def _hostile(folder: Path, root: Path) -> Path:
    """Copies of run a whose files someone else wrote: values of other types, a line of
    metrics.jsonl nested 100,000 deep, NaN, rich markup in names and values."""
    import shutil

    for i, (width, epochs, preset) in enumerate((("abc", [1], {"x": 1}), (7, 2, "[red]fast"), (None, 1e400, "[/x]"))):
        run = shutil.copytree(folder / "a", root / f"[bold]h{i}")
        saved = json.loads((run / "config.json").read_text())
        saved["config"].update(width=width, epochs=epochs, preset=preset)
        (run / "config.json").write_text(json.dumps(saved))
    deep = root / "[bold]h0"
    with (deep / "metrics.jsonl").open("a") as f:
        f.write("[" * 100_000 + "]" * 100_000 + "\n")
    final = json.loads((deep / "metrics.json").read_text())
    final["val"]["sum_acc"] = float("nan")
    (deep / "metrics.json").write_text(json.dumps(final))  # Python writes NaN, which JSON has not
    return root


def test_runs_survives_folders_it_did_not_write(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # compare's default picture, compare.png, goes here
    root = _hostile(folder, tmp_path / "hostile")
    for sort in ("width", "epochs", "preset", "val_sum", "date"):
        capsys.readouterr()
        assert main(["runs", str(root), "--sort", sort, "--json"]) == 0, sort
        out = capsys.readouterr().out
        assert "NaN" not in out and "Infinity" not in out
        rows = json.loads(out)
        assert len(rows) == 3
    rows = {r["name"]: r for r in rows}
    assert rows["[bold]h0"]["width"] == "'abc'" and rows["[bold]h0"]["epochs"] == "[1]"  # shown as text
    assert rows["[bold]h0"]["val_sum"] is None and rows["[bold]h0"]["epochs_done"] == 2  # the deep line skipped
    widths = [r["width"] for r in _rows(capsys, str(root), "--sort", "width")]
    assert widths == [7, "'abc'", None]  # numbers first, then text, then nothing
    assert main(["runs", str(root)]) == 0  # the table: markup in names and values printed as it is
    out = capsys.readouterr().out
    assert "[bold]h0" in out and "[/x]" in out and "[red]fast" in out
    assert main(["compare", str(root / "[bold]h0"), str(root / "[bold]h2"), "--output", str(tmp_path / "c.png")]) == 0
    assert "[/x]" in capsys.readouterr().out
    assert main(["compare", str(root / "[bold]h0"), str(root / "[bold]h1"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"][0]["val_sum"] is None


def test_runs_notes_what_it_could_not_read_and_lists_a_run_being_started(folder, tmp_path, monkeypatch, capsys):
    import shutil

    from mnist_addition.commands import catalog
    from mnist_addition.rundir.files import FolderLock

    root = tmp_path / "runs"
    stopped = shutil.copytree(folder / "group" / "stopped", root / "stopped")
    real_listdir = os.listdir

    def listdir(path="."):
        if Path(path) == stopped / "checkpoints":
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    monkeypatch.setattr(catalog, "MAX_HISTORY_BYTES", 100)  # (64 MB in truth: too large to write here)
    starting = root / "starting"  # a run whose lock is taken and whose config.json is not written yet
    starting.mkdir(parents=True)
    lock = FolderLock(starting / ".lock")
    assert lock.acquire(b"{}")
    try:
        rows = {r["name"]: r for r in _rows(capsys, str(root))}
    finally:
        lock.release()
    assert rows["starting"]["status"] == "running"
    assert rows["stopped"]["status"] == ("interrupted, checkpoints unreadable (Permission denied) "
                                         "(metrics.jsonl: over 100 bytes, not read)")
    assert rows["stopped"]["epochs_done"] == 0


def test_no_output_ever_replaces_a_file_of_a_run_or_its_lock(folder, tmp_path, capsys):
    """compare, export and predict write where the user says, but never over a file a run or a
    sweep keeps (another run's too: RUN/.lock while it trains), --overwrite or not."""
    import shutil

    other = shutil.copytree(folder / "a", tmp_path / "other")
    (other / ".lock").write_text("")
    (other / "model.onnx").write_bytes(b"its own export")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    (sweep / "trials.csv").write_text("keep")
    before = {p: p.read_bytes() for p in [*other.rglob("*"), *sweep.rglob("*")] if p.is_file()}
    for target in (other / ".lock", other / "model.onnx", other / "checkpoints" / "x", sweep / "trials.csv",
                   other / "config.json"):
        if not target.exists():
            continue
        assert main(["compare", str(folder / "a"), str(folder / "b"), "--output", str(target), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "it is never replaced" in err, err
    assert {p: p.read_bytes() for p in [*other.rglob("*"), *sweep.rglob("*")] if p.is_file()} == before
    assert main(["compare", str(folder / "a"), str(folder / "b"), "--output", str(other / "new.png")]) == 0  # a new file
