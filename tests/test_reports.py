"""Run reports (pictures), TensorBoard logging and ONNX export."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from mnist_addition.commands.cli import main
from mnist_addition.rundir.names import REPORT_FILES

PNG = b"\x89PNG\r\n\x1a\n"
HAS_TB = importlib.util.find_spec("tensorboard") is not None
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


@pytest.fixture(scope="module")
def run_dir(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "run"
    argv = ["train", "--data-dir", str(mnist_dir), "--output-dir", str(out), "--width", "8", "--epochs", "2",
            "--batch-size", "32", "--lr", "0.01", "--val-size", "100", "--mixed-precision", "no"]
    assert main(argv + (["--log-with", "tensorboard"] if HAS_TB else [])) == 0
    return out


def test_training_writes_the_report_pictures(run_dir):
    for name in REPORT_FILES:
        assert (run_dir / name).read_bytes()[:8] == PNG, name


def test_report_command_redraws_them(run_dir, capsys):
    import json

    (run_dir / "mistakes.png").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "mistakes.png").read_bytes()[:8] == PNG
    # the pictures count the same mistakes as the run's metrics
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    wrong = round((1 - test["both_acc"]) * test["n"])
    assert f"({wrong} of {test['n']} test pairs wrong)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.skipif(not HAS_TB, reason="tensorboard not installed")
def test_tensorboard_logs_every_epoch(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    scalars = {}
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [e.step for e in acc.Scalars(tag)]
    for tag in ("train_loss", "val_digit_acc", "val_sum_acc", "lr", "images_per_s"):
        assert scalars.get(tag) == [15, 30], tag  # the global step at each epoch's end (500 images, batches of 32)


@pytest.mark.skipif(not HAS_ONNX, reason="onnx extra not installed")
def test_onnx_export_matches_pytorch(run_dir, tmp_path):
    """onnxruntime vs PyTorch on batches of 1 and 37: max |diff| of the logits <= 1e-4
    (float32, different kernels; measured ~2e-6)."""
    import onnxruntime as ort

    from mnist_addition.commands.predict import load_model

    out = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--output", str(out)]) == 0
    session = ort.InferenceSession(str(out))
    model = load_model(run_dir)
    for n in (1, 37):
        images, numbers = torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,))
        digit_onnx, sum_onnx = session.run(None, {"image": images.numpy(), "number": numbers.numpy()})
        with torch.no_grad():
            digit_pt, sum_pt = model(images, numbers)
        assert digit_onnx.shape == (n, 10) and sum_onnx.shape == (n, 19)
        assert abs(torch.from_numpy(digit_onnx) - digit_pt).max() <= 1e-4
        assert abs(torch.from_numpy(sum_onnx) - sum_pt).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ONNX, reason="onnx extra not installed")
def test_onnx_export_carries_the_tta_views(run_dir, tmp_path):
    """A run with --tta 5 exports its five views into the graph: onnxruntime matches PyTorch's TTA."""
    import json
    import shutil

    import onnxruntime as ort

    from mnist_addition.commands.predict import load_model

    tta_run = tmp_path / "tta-run"
    shutil.copytree(run_dir, tta_run)
    config = json.loads((tta_run / "config.json").read_text())
    config["config"]["tta"] = 5  # the same weights, evaluated with five views
    (tta_run / "config.json").write_text(json.dumps(config))
    assert main(["export", str(tta_run), "--output", str(tmp_path / "m.onnx")]) == 0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    model, plain = load_model(tta_run), load_model(run_dir)
    images, numbers = torch.randn(7, 1, 28, 28), torch.randint(0, 10, (7,))
    digit_onnx, sum_onnx = session.run(None, {"image": images.numpy(), "number": numbers.numpy()})
    with torch.no_grad():
        digit_pt, sum_pt = model(images, numbers)
        assert not torch.allclose(digit_pt, plain(images, numbers)[0].log_softmax(1), atol=1e-4)
    assert abs(torch.from_numpy(digit_onnx) - digit_pt).max() <= 1e-4
    assert abs(torch.from_numpy(sum_onnx) - sum_pt).max() <= 1e-4
    # export --tta 5 of the plain run: the same graph as the run whose config.json says 5
    assert main(["export", str(run_dir), "--tta", "5", "--output", str(tmp_path / "m5.onnx")]) == 0
    digit_5, sum_5 = ort.InferenceSession(str(tmp_path / "m5.onnx")).run(
        None, {"image": images.numpy(), "number": numbers.numpy()})
    assert abs(torch.from_numpy(digit_5) - digit_pt).max() <= 1e-4 and abs(torch.from_numpy(sum_5) - sum_pt).max() <= 1e-4


def test_evaluate_and_predict_score_other_tta_views_without_touching_the_run(run_dir, tmp_path, capsys):
    """evaluate/predict --tta N score the run's weights with N views: what a run whose config.json
    says tta N scores; the run folder is left as it was; a seed run refuses in one line."""
    import json
    import shutil

    from PIL import Image

    from mnist_addition.core.synthetic import synthetic_digits

    before = {f.name: f.read_bytes() for f in run_dir.iterdir() if f.is_file()}

    def evaluate(run, *extra):
        assert main(["evaluate", str(run), "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    plain, five = evaluate(run_dir), evaluate(run_dir, "--tta", "5")
    assert (plain["tta"], five["tta"]) == (None, 5) and five["test"]["n"] == plain["test"]["n"]
    assert five["test"]["loss"] != plain["test"]["loss"]  # the views' mean log-probabilities
    edited = tmp_path / "tta5"
    shutil.copytree(run_dir, edited)
    config = json.loads((edited / "config.json").read_text())
    config["config"]["tta"] = 5
    (edited / "config.json").write_text(json.dumps(config))
    assert evaluate(edited)["test"] == five["test"]  # the same as a run trained to evaluate with 5 views
    assert evaluate(edited, "--tta", "1")["test"] == plain["test"]  # and back

    image = tmp_path / "a.png"
    Image.fromarray(synthetic_digits(1, seed=3)[0][0].to(torch.uint8).numpy()).save(image)
    probs = {}
    for views in ("1", "9"):
        assert main(["predict", str(run_dir), str(image), "4", "--json", "--tta", views]) == 0
        probs[views] = json.loads(capsys.readouterr().out)["digit_probs"]
    assert probs["1"] != probs["9"] and abs(sum(probs["9"]) - 1) < 1e-4
    assert {f.name: f.read_bytes() for f in run_dir.iterdir() if f.is_file()} == before

    config["config"].update(preset="seed", width=32, tta=1)
    (edited / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", str(edited), "--tta", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a 'seed' run, which evaluates one view only: drop --tta" in err and "\n" not in err


@pytest.mark.parametrize("extra,match", [
    (["--format", "tflite"], "unknown export format 'tflite': use --format onnx"),
    (["--output", "EXISTING"], "exists: choose another --output, or pass --overwrite"),
])
def test_export_bad_input(extra, match, run_dir, tmp_path, capsys):
    existing = tmp_path / "keep.onnx"
    existing.write_text("keep")
    extra = [str(existing) if a == "EXISTING" else a for a in extra]
    assert main(["export", str(run_dir), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err
    assert existing.read_text() == "keep"


def test_export_without_the_onnx_extra(run_dir, tmp_path, monkeypatch, capsys):
    import mnist_addition.commands.export as export

    real = importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    assert main(["export", str(run_dir), "--output", str(tmp_path / "m.onnx")]) == 2
    assert 'ONNX export needs onnxscript: pip install -e ".[onnx]"' in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_tensorboard_needs_the_package_and_a_run_folder(mnist_dir, monkeypatch, tmp_path):
    """Checked once, by ``train`` (the one way into a run), before anything starts or is written."""
    from mnist_addition import train
    from mnist_addition.core.config import ConfigError

    from .helpers import tiny_config

    with pytest.raises(ConfigError, match="--log-with tensorboard needs a run folder"):
        train(tiny_config(mnist_dir, log_with="tensorboard", epochs=1), progress=False)
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])  # as if not installed
    with pytest.raises(ConfigError, match=r'needs the tensorboard package: pip install -e "\.\[tensorboard\]"'):
        train(tiny_config(mnist_dir, log_with="tensorboard", epochs=1, output_dir=str(tmp_path / "r")), progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_weight_files_are_byte_identical_when_their_tensors_are(tmp_path):
    """The same tensors saved by separate processes (each with its own string hashing) give the
    same bytes. safetensors writes its metadata map in a random order per process: ours holds one
    key (asserted below), so no order can vary; 4 processes with two keys all agreed with
    probability 1/8."""
    script = ("import sys, torch; from mnist_addition.core.config import TrainConfig; from mnist_addition.core.model import "
              "build_model; from mnist_addition.rundir.contents import save_weights; torch.manual_seed(0); "
              "save_weights(build_model('fast', 8), __import__('pathlib').Path(sys.argv[1]), "
              "TrainConfig.from_preset('fast', width=8))")
    files = []
    for i in range(4):  # separate processes, as separate runs are
        path = tmp_path / f"{i}.safetensors"
        env = dict(os.environ, PYTHONHASHSEED=str(i))
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env, timeout=120)
        files.append(path.read_bytes())
    assert all(f == files[0] for f in files)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert list(f.metadata()) == ["mnist_addition"]
