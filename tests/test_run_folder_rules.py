"""Who may write a run folder: one writer, no run replaced unless asked, --overwrite loses nothing, mistakes are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnist_addition.commands.cli import main

from .helpers import TINY, folder_files


def test_existing_run_is_not_overwritten(run_dir, mnist_dir, capsys):
    before = (run_dir / "model.safetensors").read_bytes()
    code = main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run_dir), *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "already holds a run" in err and "--overwrite" in err and "\n" not in err
    assert (run_dir / "model.safetensors").read_bytes() == before


def test_missing_data_leaves_no_run_folder(tmp_path):
    assert main(["train", "--no-download", "--data-dir", str(tmp_path / "nowhere"),
                 "--output-dir", str(tmp_path / "run"), *TINY]) == 1
    assert not (tmp_path / "run").exists()


def test_a_second_writer_is_refused_naming_the_holder(run_dir, mnist_dir, tmp_path, capsys):
    import os

    from mnist_addition.rundir.folder import RunFolder

    out = tmp_path / "busy"
    holder = RunFolder(out).open()  # as a running `train` holds it
    try:
        code = main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(out), *TINY])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and f"{out} is in use by process {os.getpid()} on " in err and "another --output-dir" in err
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".lock")) == []
    finally:
        holder.close(ok=True)
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(out), *TINY]) == 0  # free again


def test_overwrite_replaces_a_run_only_once_the_new_one_has_a_checkpoint(run_dir, mnist_dir, tmp_path, monkeypatch):
    import shutil

    import mnist_addition.rundir.checkpoint as ck

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    old = folder_files(run)
    seen_at_first_checkpoint = []
    real = ck.write_checkpoint

    def save_and_look(*args, **kwargs):
        seen_at_first_checkpoint.append((run / ".replaced" / "model.safetensors").is_file())
        return real(*args, **kwargs)

    monkeypatch.setattr(ck, "write_checkpoint", save_and_look)
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY, "--seed", "1",
                 "--overwrite"]) == 0
    assert seen_at_first_checkpoint[0] is True  # the old run was still there, set aside
    assert not (run / ".replaced").exists()
    new = folder_files(run)
    assert new.keys() >= {p for p in old if p.parts[0] != "checkpoints"}
    assert new[Path("model.safetensors")] != old[Path("model.safetensors")]
    assert json.loads(new[Path("config.json")])["config"]["seed"] == 1


def test_overwrite_that_fails_before_its_first_checkpoint_gives_the_old_run_back(run_dir, mnist_dir, tmp_path,
                                                                              monkeypatch, capsys):
    import shutil

    import mnist_addition.training.step as step

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    old = folder_files(run)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C during the first epoch

    monkeypatch.setattr(step, "train_step", crash)
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY, "--overwrite"]) == 130
    assert folder_files(run) == old and not (run / ".replaced").exists()
    assert f"before the first checkpoint: the run that was in {run} is back, unchanged" in \
        capsys.readouterr().err.replace("\n", "")

@pytest.mark.parametrize("flags,match", [
    (["--batch-size", "70000"], "--batch-size 70000 is larger than the 500 training images"),
    (["--batch-size", "30", "--gradient-accumulation-steps", "4"], "--gradient-accumulation-steps must divide"),
])
def test_a_refused_start_leaves_the_old_run_and_no_new_folder(flags, match, run_dir, mnist_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    old = folder_files(run)
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY, *flags, "--overwrite"]) == 2
    assert match in capsys.readouterr().err and folder_files(run) == old
    fresh = tmp_path / "fresh"
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(fresh), *TINY, *flags]) == 2
    assert not fresh.exists()

@pytest.mark.parametrize("case", ["below_a_file", "resume_with_output_dir"])
def test_output_dir_mistakes_are_one_line(case, run_dir, mnist_dir, tmp_path, capsys):
    if case == "below_a_file":
        (tmp_path / "file").write_text("x")
        args, match = ["--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / "file" / "run"), *TINY], \
            "is below " + str(tmp_path / "file") + ", which is a file"
    else:
        args, match = ["--resume", str(run_dir), "--output-dir", str(tmp_path / "elsewhere")], \
            "--output-dir cannot be combined with --resume"
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err
    assert not (tmp_path / "elsewhere").exists()
