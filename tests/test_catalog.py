"""``mnist-addition runs`` and ``compare`` on real run folders: finished, interrupted (resumable),
diverged, running (its lock held), killed before its first checkpoint; bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_addition.cli import main

TINY = ["--width", "8", "--epochs", "2", "--batch-size", "32", "--val-size", "100", "--mixed-precision", "no",
        "--log-every", "5"]
PNG = b"\x89PNG\r\n\x1a\n"


def _train(mnist_dir: Path, run: Path, *extra: str) -> int:
    return main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY, *extra])


@pytest.fixture(scope="module")
def folder(mnist_dir, tmp_path_factory):
    """runs/{a (lr 0.01), b (lr 0.02, width 12)} finished, runs/group/stopped interrupted in epoch 2,
    runs/group/diverged (a NaN learning rate in epoch 2)."""
    import mnist_addition.step as step

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

    from mnist_addition.files import FolderLock

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
    code = ("import sys, json; from mnist_addition.cli import main; main(['runs', sys.argv[1], sys.argv[2], '--json']); "
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
