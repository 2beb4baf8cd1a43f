"""The inputs a hostile or careless user gives, each answered in one line with its exit code and
nothing changed (in-process; ``benchmarks/bad_inputs.py`` replays them as separate processes)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_addition.commands.cli import main
from mnist_addition.core.synthetic import write_idx, write_mnist
from mnist_addition.rundir.checkpoint import _files, _sha256, list_checkpoints
from mnist_addition.rundir.names import MANIFEST

TINY = ["--width", "8", "--epochs", "2", "--batch-size", "32", "--lr", "0.01", "--val-size", "100",
        "--mixed-precision", "no", "--cpu", "--no-download"]
LONG = "x" * 300  # longer than any file name a filesystem takes


def _peak_memory() -> int:
    """This process's peak resident memory so far, in bytes (Linux reports kB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse
        return int(e.code)


def _one_line(capsys, argv: list[str], code: int, match: str) -> str:
    got = _run(argv)
    err = capsys.readouterr().err.strip()
    assert got == code and "Traceback" not in err, (argv[:3], got, err[-600:])
    line = err.splitlines()[-1]
    assert match in line and len(line) < 600, line
    return line


@pytest.fixture(scope="module")
def crashed(mnist_dir, tmp_path_factory) -> Path:
    """A run as if killed after its last checkpoint: three checkpoints, nothing written after them."""
    run = tmp_path_factory.mktemp("crashed") / "run"
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY, "--checkpoint-every", "10",
                 "--keep-checkpoints", "3"]) == 0
    for name in ("metrics.json", "model.safetensors", "curves.png", "confusion_digit.png", "confusion_sum.png",
                 "samples.png", "mistakes.png"):
        (run / name).unlink()
    return run


@pytest.fixture(scope="module")
def finished(mnist_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY, "--eval-limit", "50"]) == 0
    return run


# ------------------------------------------------------------------------------------------------
# Values outside what the code can use: refused up front, with the range
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,match", [
    (["--seed", "4294967296"], "--seed must be in 0..4294967295"),
    (["--seed", str(2**64 + 1)], "--seed must be in 0..4294967295"),
    (["--width", "10000000000"], "--width must be in 1..65536"),
    (["--lr", "1e308"], "--lr must be in (0, 1000]"),
    (["--epochs", "1e23"], "argument --epochs: invalid int value"),
    (["--data-dir", ""], "--data-dir is empty"),
    (["--output-dir", LONG], "cannot be used (File name too long)"),
])
def test_train_values_out_of_range_are_one_line(flags, match, mnist_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--data-dir", str(mnist_dir), *TINY, *flags]
    if "--output-dir" not in flags:
        argv += ["--output-dir", str(tmp_path / "run")]
    _one_line(capsys, argv, 2, match)
    assert sorted(os.listdir(tmp_path)) == []


def test_lr_out_of_range_with_overwrite_keeps_the_run(finished, tmp_path, capsys):
    run = shutil.copytree(finished, tmp_path / "run")
    before = (run / "model.safetensors").read_bytes()
    _one_line(capsys, ["train", "--output-dir", str(run), *TINY, "--lr", "1e308", "--overwrite"], 2, "--lr must be in")
    assert (run / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("content,match", [
    ('{"seed": 4294967296}', "--seed must be in 0..4294967295"),
    ('{"width": 1e30}', "--width must be in 1..65536"),
    ('{"epochs": 1e23}', "--epochs must be in 1..100000"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply to be a config"),
    ('{"lr": [' + ",".join(["0"] * 100_000) + "]}", "--lr must be float, got [0, 0, 0, 0, 0, 0, ...]"),
    ('{"lr": [' + ",".join(["0"] * 600_000) + "]}", "too large for a config"),
    ('{"' + "k" * 200_000 + '": 1}', "unknown config key 'kkkkk"),
])
def test_config_files_that_cannot_be_a_config_are_one_line(content, match, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(content)
    _one_line(capsys, ["train", "--config", str(path)], 2, match)


@pytest.mark.parametrize("case,match", [
    ("link loop", "Too many levels of symbolic links"),
    ("below a file", "Not a directory"),
    ("name too long", "File name too long"),
])
def test_config_paths_that_cannot_be_read_are_one_line(case, match, tmp_path, capsys):
    if case == "link loop":
        (tmp_path / "a.json").symlink_to(tmp_path / "b.json")
        (tmp_path / "b.json").symlink_to(tmp_path / "a.json")
        path = tmp_path / "a.json"
    elif case == "below a file":
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "c.json"
    else:
        path = tmp_path / LONG
    _one_line(capsys, ["train", "--config", str(path)], 2, match)


def test_evaluate_of_a_run_whose_config_is_nested_too_deeply(finished, tmp_path, capsys):
    run = shutil.copytree(finished, tmp_path / "run")
    (run / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    _one_line(capsys, ["evaluate", str(run)], 2, "nested too deeply")


@pytest.mark.parametrize("setup", ['"cuda"', "[1, 2]"])
def test_a_config_json_setup_that_training_never_writes_is_refused_everywhere(setup, finished, crashed, tmp_path,
                                                                             capsys):
    for source, argv in ((finished, ["evaluate"]), (crashed, ["train", "--resume"])):
        run = shutil.copytree(source, tmp_path / source.parent.name)
        data = json.loads((run / "config.json").read_text())
        data["setup"] = json.loads(setup)
        (run / "config.json").write_text(json.dumps(data))
        _one_line(capsys, [*argv, str(run)], 2, "'setup' is not what training writes")


def test_predict_seed_and_paths_out_of_range(finished, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    _one_line(capsys, ["predict", str(finished), str(folder), "--random-numbers", "--seed", str(2**70)], 2,
              "--seed must be a whole number in 0..4294967295")
    _one_line(capsys, ["predict", str(finished), str(tmp_path / LONG), "3"], 2, "cannot be opened (File name too long)")
    _one_line(capsys, ["export", str(finished), "--output", str(tmp_path / LONG)], 2, "cannot be used (File name too long)")


# ------------------------------------------------------------------------------------------------
# Data folders
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "test"])
def test_a_data_folder_without_images_is_one_line(split, finished, tmp_path, capsys):
    data = write_mnist(tmp_path / "data")
    raw = data / "MNIST" / "raw"
    write_idx(raw / f"{'train' if split == 'train' else 't10k'}-images-idx3-ubyte", torch.zeros(0, 28, 28))
    write_idx(raw / f"{'train' if split == 'train' else 't10k'}-labels-idx1-ubyte", torch.zeros(0))
    argv = (["train", "--data-dir", str(data), "--output-dir", str(tmp_path / "run"), *TINY] if split == "train"
            else ["report", str(finished), "--data-dir", str(data), "--no-download"])
    _one_line(capsys, argv, 1, "holds no images: replace it with the original file")
    assert not (tmp_path / "run").exists()


def test_a_huge_sparse_idx_file_is_refused_before_it_is_read(tmp_path, capsys):
    data = write_mnist(tmp_path / "data")
    path = data / "MNIST" / "raw" / "train-images-idx3-ubyte"
    n = 4_000_000  # 3.1 GB of images, all holes: a header that matches the file's size
    with path.open("wb") as f:
        f.write(bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
        f.truncate(16 + n * 784)
    before = _peak_memory()
    _one_line(capsys, ["train", "--data-dir", str(data), "--output-dir", str(tmp_path / "run"), *TINY], 1,
              "more than any MNIST-like file")
    assert _peak_memory() - before < 2**30  # the 3 GB were never read into memory


def test_evaluate_scores_the_pairs_the_run_was_scored_on(finished, capsys):
    assert main(["evaluate", str(finished), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["test"]
    want = json.loads((finished / "metrics.json").read_text())["test"]
    assert got["n"] == want["n"] == 50 and got["digit_acc"] == want["digit_acc"]


# ------------------------------------------------------------------------------------------------
# Full disks and things in the way
# ------------------------------------------------------------------------------------------------
def test_a_full_disk_at_the_first_checkpoint_under_overwrite_keeps_the_old_run(finished, mnist_dir, tmp_path,
                                                                              monkeypatch, capsys):
    import mnist_addition.rundir.checkpoint as ck

    run = shutil.copytree(finished, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ck, "_write", full)
    _one_line(capsys, ["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY, "--overwrite"], 2,
              "(No space left on device): free some space")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before


@pytest.mark.parametrize("case", ["disk full", "a folder in the way"])
def test_report_that_cannot_write_is_one_line(case, finished, mnist_dir, tmp_path, monkeypatch, capsys):
    import mnist_addition.rundir.files as files_module

    run = shutil.copytree(finished, tmp_path / "run")
    if case == "disk full":
        def full(path, data):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(files_module, "write_bytes", full)
        match = "(No space left on device)"
    else:
        (run / "samples.png").unlink()
        (run / "samples.png").mkdir()
        match = "samples.png: a folder of that name is in the way"
    _one_line(capsys, ["report", str(run), "--data-dir", str(mnist_dir), "--no-download"], 2, match)


# ------------------------------------------------------------------------------------------------
# Checkpoints altered so that their manifest still matches: reported, the one before used
# ------------------------------------------------------------------------------------------------
def _alter(checkpoint: Path, how: str) -> None:
    from safetensors.torch import load_file, save_file

    state = json.loads((checkpoint / "trainer_state.json").read_text())
    if how == "manifest a list":
        (checkpoint / MANIFEST).write_text("[]")
        return
    if how == "manifest maps a file to a number":
        (checkpoint / MANIFEST).write_text(json.dumps({"model.safetensors": 3}))
        return
    if how == "samples 1e30":
        state["samples_per_process"] = 10**30
    elif how == "history of non-objects":
        state["history"] = [1, "two"][:len(state["history"])] or [1]
    elif how == "world 0":
        state["world"] = 0
    elif how == "train_seconds -1e300":
        state["train_seconds"] = -1e300
    elif how == "moment of the wrong shape":
        tensors = load_file(str(checkpoint / "optimizer.safetensors"))
        key = next(k for k in tensors if k.endswith("exp_avg"))
        tensors[key] = torch.zeros(3)
        save_file(tensors, str(checkpoint / "optimizer.safetensors"))
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    (checkpoint / MANIFEST).write_text(json.dumps({str(p.relative_to(checkpoint)): {
        "bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(checkpoint)}))


ALTERATIONS = ["manifest a list", "manifest maps a file to a number", "samples 1e30", "history of non-objects",
               "world 0", "train_seconds -1e300", "moment of the wrong shape"]


@pytest.mark.parametrize("how", ALTERATIONS)
def test_an_altered_newest_checkpoint_is_reported_and_the_one_before_used(how, crashed, tmp_path, capsys):
    run = shutil.copytree(crashed, tmp_path / "run")
    found = list_checkpoints(run)
    _alter(found[-1], how)
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: checkpoint")]
    assert len(warnings) == 1 and found[-1].name in warnings[0] and "Traceback" not in err
    assert f"resuming from {found[-2].name}" in err


@pytest.mark.parametrize("how", ["world 0", "train_seconds -1e300", "moment of the wrong shape"])
def test_every_checkpoint_altered_is_one_line_and_changes_nothing(how, crashed, tmp_path, capsys):
    run = shutil.copytree(crashed, tmp_path / "run")
    for checkpoint in list_checkpoints(run):
        _alter(checkpoint, how)
    before = {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    _one_line(capsys, ["train", "--resume", str(run)], 2, "every checkpoint in ")
    assert {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_weights_of_the_wrong_dtype_are_refused(finished, tmp_path, capsys):
    from PIL import Image
    from safetensors.torch import load_file, save_file

    run = shutil.copytree(finished, tmp_path / "run")
    weights = {k: v.to(torch.int8) if v.is_floating_point() else v
               for k, v in load_file(str(run / "model.safetensors")).items()}
    save_file(weights, str(run / "model.safetensors"))
    ink = Image.new("L", (28, 28), 0)
    ink.paste(255, (10, 6, 16, 22))
    ink.save(tmp_path / "d.png")
    _one_line(capsys, ["evaluate", str(run)], 2, "is int8, not float32")
    _one_line(capsys, ["predict", str(run), str(tmp_path / "d.png"), "3"], 2, "is int8, not float32")


# ------------------------------------------------------------------------------------------------
# Images read as a viewer shows them
# ------------------------------------------------------------------------------------------------
def test_32_bit_images_holding_8_bit_values_and_a_nan_pixel_read_like_the_8_bit_image(tmp_path):
    import numpy as np
    from PIL import Image

    from mnist_addition.commands.predict import load_image

    eight = np.zeros((28, 28), dtype=np.uint8)
    eight[6:22, 10:16] = 255
    Image.fromarray(eight).save(tmp_path / "d8.png")
    Image.fromarray(eight.astype(np.int32), mode="I").save(tmp_path / "d32.tiff")
    as_float = eight.astype(np.float32) / 255
    as_float[0, 0] = np.nan
    Image.fromarray(as_float, mode="F").save(tmp_path / "nan.tiff")
    want = load_image(tmp_path / "d8.png")
    assert torch.equal(load_image(tmp_path / "d32.tiff"), want)
    assert torch.allclose(load_image(tmp_path / "nan.tiff"), want, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Ctrl-C anywhere: one line, exit 130
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["evaluate --all-numbers", "predict", "tune space check"])
def test_ctrl_c_outside_the_training_loop_is_one_line(where, finished, tmp_path, monkeypatch, capsys):
    import mnist_addition.commands.evaluate as evaluate_module
    import mnist_addition.commands.predict as predict_module
    import mnist_addition.sweep.folder as folder_module

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    from PIL import Image

    Image.new("L", (28, 28), 0).save(tmp_path / "d.png")
    module, name, argv = {
        "evaluate --all-numbers": (evaluate_module, "evaluate_all_numbers", ["evaluate", str(finished), "--all-numbers"]),
        "predict": (predict_module, "load_image", ["predict", str(finished), str(tmp_path / "d.png"), "3"]),
        "tune space check": (folder_module, "load_space", ["tune", "--storage-path", str(tmp_path / "sw")]),
    }[where]
    monkeypatch.setattr(module, name, interrupt)
    _one_line(capsys, argv, 130, "interrupted")


# Holds the process at the moment it starts to import torch (a sitecustomize): the signal lands there
# every time, not wherever a fixed sleep happened to end.
PAUSE_AT_TORCH = """
import importlib.abc, sys, time
class PauseAtTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            print("loading torch", file=sys.stderr, flush=True)
            time.sleep(60)
        return None
sys.meta_path.insert(0, PauseAtTorch())
"""


def test_ctrl_c_while_python_loads_torch_is_one_line(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(PAUSE_AT_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    # SIGINT as a terminal delivers it: a shell that starts the tests in the background (`cmd &`,
    # nohup) leaves SIGINT ignored, and an ignored SIGINT stays ignored in every child.
    proc = subprocess.Popen([sys.executable, "-m", "mnist_addition", "evaluate", "nowhere"], stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stderr.readline().strip() == "loading torch"
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1].strip()
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err and err.splitlines()[-1].endswith("interrupted"), err


# ------------------------------------------------------------------------------------------------
# tune: refused before anything starts or is written
# ------------------------------------------------------------------------------------------------
def _space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case,match", [
    ("storage scheme", "is not a storage pyarrow can open"),
    ("seed -1", "--seed must be in 0..4294967295"),
    ("tiny cpus", "is below Ray's smallest share of a CPU"),
    ("space link loop", "Too many levels of symbolic links"),
    ("space fixes a seed too large", "--seed must be in 0..4294967295"),
    ("alias bomb in a choice", "uses a YAML alias"),
    ("alias bomb as a fixed value", "uses a YAML alias"),
    ("3,000 choices", "lists 3,000 values, at most 100"),
    ("a key given twice", "a key is given twice ('lr') at line 3: YAML would keep only the last"),
    ("a name too long", "--name is 300 bytes long, more than a folder name may be (255)"),
])
def test_tune_inputs_are_one_line_and_make_no_sweep_folder(case, match, tmp_path, capsys):
    storage = tmp_path / "sweeps"
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n'
    argv = ["tune", "--storage-path", str(storage)]
    if case == "storage scheme":
        argv = ["tune", "--storage-path", "nosuch://x"]
    elif case == "seed -1":
        argv += ["--seed", "-1"]
    elif case == "tiny cpus":
        argv += ["--cpus-per-trial", "0.00001"]
    elif case == "space link loop":
        (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
        (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
        argv += ["--space", str(tmp_path / "a.yaml")]
    elif case == "space fixes a seed too large":
        argv += ["--space", str(_space(tmp_path, "fixed: {seed: 4294967296}\nsearch: {lr: {uniform: [0.001, 0.01]}}\n"))]
    elif case == "alias bomb in a choice":
        argv += ["--space", str(_space(tmp_path, bomb + "search:\n  width: {choice: *c}\n"))]
    elif case == "alias bomb as a fixed value":
        argv += ["--space", str(_space(tmp_path, bomb + "fixed: {data_dir: *c}\nsearch: {lr: {uniform: [0.001, 0.01]}}\n"))]
    elif case == "a key given twice":
        argv += ["--space", str(_space(tmp_path, "search:\n  lr: {uniform: [0.001, 0.01]}\n  lr: {uniform: [0.1, 1]}\n"))]
    elif case == "a name too long":
        argv += ["--space", str(_space(tmp_path, "search: {lr: {uniform: [0.001, 0.01]}}\n")), "--name", LONG]
    else:
        choices = ", ".join(str(8 + i) for i in range(3000))
        argv += ["--space", str(_space(tmp_path, f"search:\n  width: {{choice: [{choices}]}}\n"
                                                 f"  eval_batch_size: {{choice: [{choices}]}}\n"))]
    before = _peak_memory()
    _one_line(capsys, argv, 2, match)
    assert _peak_memory() - before < 2**29  # nothing was expanded (the alias bomb is gigabytes expanded)
    assert not storage.exists()


def test_an_error_without_a_message_is_named_by_its_type():
    """The one-line reason quoted in our errors: the first non-blank line, cut; an ``OSError()``
    (empty message) gives its type's name instead of an IndexError."""
    from mnist_addition.core.errors import first_line

    assert first_line(OSError()) == "OSError"
    assert first_line(ValueError("\n  \nbad header\nmore")) == "bad header"
    assert first_line(ValueError("x" * 300), 80) == "x" * 80


# ------------------------------------------------------------------------------------------------
# Corners a user meets after a crash
# ------------------------------------------------------------------------------------------------
def test_a_full_disk_at_a_later_checkpoint_is_one_line_and_leaves_no_half_checkpoint(mnist_dir, tmp_path, monkeypatch,
                                                                                      capsys):
    """ENOSPC (a real full disk, not a file size limit) in the middle of a checkpoint's files."""
    import mnist_addition.rundir.checkpoint as ck

    real, calls = ck._write, []

    def filling(path, data):
        calls.append(path)
        if len(calls) == 7:  # the second checkpoint's third file
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(ck, "_write", filling)
    run = tmp_path / "run"
    _one_line(capsys, ["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY, "--checkpoint-every",
                       "5"], 2, "(No space left on device): free some space, or choose another --output-dir; "
                                "checkpoints already written are kept")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000005"]  # no .tmp-step-* left
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


def test_advice_after_a_kill_before_the_first_checkpoint_leads_out(mnist_dir, tmp_path, capsys):
    """A run killed before its first checkpoint: training again, and --resume, each name the command that works."""
    run = tmp_path / "run"
    assert _run(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY]) == 0
    shutil.rmtree(run / "checkpoints")
    for name in ("metrics.json", "model.safetensors", "metrics.jsonl"):
        (run / name).unlink()  # as if killed in the first steps: config.json and the lock
    line = _one_line(capsys, ["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY], 2,
                     "holds a run that stopped before its first checkpoint (nothing to resume): add --overwrite")
    assert "--resume" not in line
    line = _one_line(capsys, ["train", "--resume", str(run)], 2, "start it again with  mnist-addition train --config")
    again = line.split("start it again with  ")[1].split()
    assert again[:2] == ["mnist-addition", "train"] and _run(again[1:]) == 0 and (run / "metrics.json").exists()  # the advice, followed, trains it


def test_a_folder_where_a_resumed_run_keeps_a_file_is_one_line(crashed, tmp_path, capsys):
    run = shutil.copytree(crashed, tmp_path / "run")
    (run / "status.json").unlink(missing_ok=True)
    (run / "status.json").mkdir()
    _one_line(capsys, ["train", "--resume", str(run)], 2, "status.json is not a regular file (a folder, fifo or device)")


def test_a_data_folder_named_by_config_json_is_never_created_or_downloaded_into(finished, tmp_path, capsys):
    run = shutil.copytree(finished, tmp_path / "run")
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["data_dir"] = str(tmp_path / "elsewhere")
    (run / "config.json").write_text(json.dumps(saved))
    for command in (["evaluate", str(run)], ["report", str(run)]):
        _one_line(capsys, command, 1, "the data folder the run's config.json names (a folder a run's file names is "
                                      "read, never created or downloaded into): pass --data-dir")
        assert not (tmp_path / "elsewhere").exists()


def test_ctrl_c_as_python_exits_after_the_command_is_one_line(tmp_path):
    """Ctrl-C once the command has finished, while Python runs torch's clean-up at exit: one line, 130."""
    code = ("import atexit, os, signal, sys; from mnist_addition.commands import cli; import torch; "
            "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT)); "
            f"sys.argv = ['mnist-addition', 'runs', {str(tmp_path)!r}]; cli.run()")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text('{"config": {}}')
    (tmp_path / "r" / "metrics.jsonl").write_text("")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == ["mnist-addition runs: interrupted while exiting; the command had "
                                                "finished (exit 0)"]
