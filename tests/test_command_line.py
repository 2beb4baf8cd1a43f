"""The command line as a user meets it: run folders, evaluate, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_addition.commands.cli import main

from .helpers import REAL_MNIST, TINY


def test_train_writes_the_run_folder(run_dir):
    for name in ("config.json", "metrics.jsonl", "metrics.json", "model.safetensors", "curves.png"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["width"] == 8 and config["setup"]["num_processes"] == 1
    assert {"torch", "accelerate"} <= set(config["versions"])
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in lines] == [1, 2]
    final = json.loads((run_dir / "metrics.json").read_text())
    assert set(final) >= {"val", "test", "params", "train_seconds"}
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_json_reproduces_the_run(run_dir, mnist_dir, tmp_path):
    out = tmp_path / "again"
    assert main(["train", "--config", str(run_dir / "config.json"), "--output-dir", str(out)]) == 0
    a = json.loads((run_dir / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert a["test"] == b["test"]


def test_evaluate_matches_training_metrics(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["test"]
    want = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert got["digit_acc"] == want["digit_acc"] and got["sum_acc"] == want["sum_acc"] and got["n"] == want["n"]


def test_evaluate_split_val_matches_the_last_epochs_validation(run_dir, mnist_dir, tmp_path, capsys):
    """--split val scores the run's held-out pairs (choosing --tta there leaves the test set unseen);
    a refit (--val-size 0) has none, and says so in one line."""
    assert main(["evaluate", str(run_dir), "--split", "val", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["val"]
    want = json.loads((run_dir / "metrics.json").read_text())["val"]
    assert got["digit_acc"] == want["digit_acc"] and got["sum_acc"] == want["sum_acc"] and got["n"] == want["n"] == 100
    refit = tmp_path / "refit"
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(refit), *TINY, "--val-size", "0"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(refit), "--split", "val"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no validation split; use --split test" in err and "\n" not in err


def test_evaluate_all_numbers_pairs_every_image_with_every_number(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--all-numbers", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["all_numbers"] and got["test"]["n"] == 10 * 200


def test_smoke_sets_small_run_and_flags_still_win(mnist_dir, tmp_path):
    from mnist_addition.core.config import TrainConfig

    config = TrainConfig.resolve(smoke=True, flags={"epochs": 2})
    assert config.epochs == 2 and config.train_limit == 10_000 and config.batch_size == 128 and config.eval_limit == 1000


@pytest.mark.parametrize("argv,code,match", [
    (["train", "--lr", "-1"], 2, "--lr must be > 0"),
    (["train", "--lr", "abc"], 2, "argument --lr: invalid float value: 'abc'"),
    (["train", "--preset", "huge"], 2, "argument --preset: invalid choice"),
    (["train", "--sum-weight", "2"], 2, "--sum-weight must be in [0, 1]"),
    (["train", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["evaluate", "/nonexistent/run"], 2, "run folder /nonexistent/run does not exist"),
])
def test_bad_usage_is_one_line_and_exit_2(argv, code, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no stray runs/ folders
    try:
        got = main(argv)
    except SystemExit as e:  # argparse
        got = e.code
    err = capsys.readouterr().err.strip()
    assert got == code and match in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_data_is_one_line_exit_1(tmp_path, capsys):
    code = main(["train", "--no-download", "--data-dir", str(tmp_path / "nowhere"),
                 "--output-dir", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "MNIST not found in" in err and "--data-dir" in err and "\n" not in err


def test_evaluate_refuses_a_run_without_weights(run_dir, tmp_path, capsys):
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text((run_dir / "config.json").read_text())
    assert main(["evaluate", str(half)]) == 2
    assert "has no model.safetensors" in capsys.readouterr().err


def test_evaluate_refuses_corrupt_weights(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((run_dir / "config.json").read_text())
    (bad / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes()[:100])
    assert main(["evaluate", str(bad)]) == 2
    assert "is unreadable" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "mnist_addition", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--sum-weight" in out.stdout and "--smoke" in out.stdout


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_MNIST / "MNIST" / "raw").is_dir(), reason="real MNIST not at ../shared/mnist")
def test_smoke_on_real_mnist(tmp_path):
    out = tmp_path / "smoke"
    assert main(["train", "--smoke", "--no-download", "--data-dir", str(REAL_MNIST), "--output-dir", str(out)]) == 0
    final = json.loads((out / "metrics.json").read_text())
    assert final["test"]["n"] == 1000 and final["test"]["digit_acc"] > 0.9 and final["test"]["sum_acc"] > 0.9


def test_every_expected_failure_shares_one_base_with_an_exit_code():
    from mnist_addition.commands.predict import ImageError
    from mnist_addition.core.config import ConfigError
    from mnist_addition.core.data import DataError
    from mnist_addition.core.errors import UserError
    from mnist_addition.rundir.checkpoint import CheckpointError
    from mnist_addition.rundir.contents import RunError
    from mnist_addition.sweep import NoUsableTrial, SweepError
    from mnist_addition.sweep.spaces import SpaceError

    codes = {cls: cls.exit_code for cls in (ConfigError, RunError, CheckpointError, ImageError, SpaceError,
                                            SweepError, DataError, NoUsableTrial)}
    assert all(issubclass(cls, UserError) for cls in codes)
    assert codes[DataError] == codes[NoUsableTrial] == 1  # the input was fine; the job could not be done
    assert {code for cls, code in codes.items() if cls not in (DataError, NoUsableTrial)} == {2}


def test_cli_prints_a_user_error_as_one_line_and_lets_a_bug_raise(monkeypatch, capsys):
    import mnist_addition.commands.cli as cli
    from mnist_addition.core.errors import UserError

    class Refused(UserError):
        exit_code = 7

    def refuse(args):
        raise Refused("the thing is wrong: do the other thing")

    monkeypatch.setattr(cli, "cmd_report", refuse)
    assert cli.main(["report", "somewhere"]) == 7
    assert capsys.readouterr().err == "mnist-addition report: error: the thing is wrong: do the other thing\n"

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_report", bug)
    with pytest.raises(KeyError):
        cli.main(["report", "somewhere"])


@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "report"])
def test_weights_that_are_not_finite_are_refused_by_every_reader(command, run_dir, mnist_dir, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    weights = load_file(str(run / "model.safetensors"))
    weights["classifier.bias"][3] = float("nan")
    save_file(weights, str(run / "model.safetensors"))
    from PIL import Image

    image = tmp_path / "digit.png"
    ink = Image.new("L", (28, 28), 0)
    ink.paste(255, (10, 6, 16, 22))  # a bar of light ink: a readable image, so only the weights are wrong
    ink.save(image)
    args = {"evaluate": [str(run), "--data-dir", str(mnist_dir), "--no-download"],
            "predict": [str(run), str(image), "3"],
            "export": [str(run), "--output", str(tmp_path / "m.onnx")],
            "report": [str(run), "--data-dir", str(mnist_dir), "--no-download"]}[command]
    before = sorted(p.name for p in run.iterdir())
    assert main([command, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds NaN or infinite weights (classifier.bias)" in err and "lower --lr" in err
    assert sorted(p.name for p in run.iterdir()) == before and not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------------------------
# Run folders: one writer, --overwrite loses nothing, a refused start leaves nothing behind
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing folder", "device with overwrite", "folder"])
def test_export_output_mistakes_are_one_line_and_replace_nothing(case, run_dir, tmp_path, capsys):
    output, extra, match = {
        "missing folder": (tmp_path / "nope" / "m.onnx", [], "does not exist: create it, or choose another --output"),
        "device with overwrite": (Path("/dev/null"), ["--overwrite"], "is not a regular file"),
        "folder": (tmp_path, ["--overwrite"], "is not a regular file"),
    }[case]
    assert main(["export", str(run_dir), "--output", str(output), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err
    assert Path("/dev/null").is_char_device() and not (tmp_path / "nope").exists()


def test_val_size_leaving_no_training_images_is_a_usage_error(mnist_dir, tmp_path, capsys):
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / "r"), *TINY,
                 "--val-size", "600"]) == 2
    assert "--val-size 600 leaves no training images" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


