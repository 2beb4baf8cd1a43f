"""Run folders someone else prepared: links planted under every name we write are replaced, never
written through; reads stay inside the run; a refused command changes nothing; an interrupt says
what is true and leaves what the suggested command can finish."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mnist_addition.commands.cli import main
from mnist_addition.rundir import files
from mnist_addition.rundir.folder import RunFolder
from mnist_addition.rundir.names import REPORT_FILES

# --cpu: the runs here are short and compared by content only
TINY = ["--width", "8", "--epochs", "2", "--batch-size", "32", "--lr", "0.01", "--val-size", "100",
        "--mixed-precision", "no", "--cpu", "--no-download"]
PRECIOUS = b"someone's file: must never change\n"
# Every name a run, a resume, a report or an export writes, and fixed temporary names beside them.
WRITTEN = ["metrics.jsonl", "metrics.json", "model.safetensors", "curves.png", *REPORT_FILES, ".lock",
           "model.safetensors.tmp", "metrics.json.tmp", "metrics.jsonl.tmp", "config.json.tmp", ".model.onnx.tmp"]


@pytest.fixture(scope="module")
def finished(run_dir) -> Path:
    """A finished run (conftest's, shared with the other run-folder tests): copied before any change."""
    return run_dir


def _copy(run: Path, dest: Path, finished: bool = True) -> Path:
    shutil.copytree(run, dest, symlinks=True)
    if not finished:  # as if killed after its last checkpoint: resume only has to finish it
        for name in ("metrics.json", "model.safetensors", "curves.png", *REPORT_FILES):
            (dest / name).unlink()
    return dest


def _plant(run: Path, outside: Path, names: list[str]) -> dict[Path, bytes | None]:
    """A link at each of ``names``: to an outside file (every other one) or to a missing outside
    path. Returns what each outside path holds now (None: must stay missing)."""
    outside.mkdir(exist_ok=True)
    victims: dict[Path, bytes | None] = {}
    for i, name in enumerate(names):
        target = outside / f"{i}-{name.strip('.')}"
        if i % 2 == 0:
            target.write_bytes(PRECIOUS)
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(target)
        victims[target] = PRECIOUS if i % 2 == 0 else None
    return victims


def _untouched(victims: dict[Path, bytes | None]) -> None:
    for target, content in victims.items():
        if content is None:
            assert not os.path.lexists(target), f"{target} was created through a planted link"
        else:
            assert target.read_bytes() == content, f"{target} was written through a planted link"


def _one_line_error(capsys, code: int, got: int, match: str) -> str:
    err = capsys.readouterr().err.strip()
    line = err.splitlines()[-1] if err else ""
    assert got == code and match in line and "Traceback" not in err, err
    return line


# ------------------------------------------------------------------------------------------------
# Links planted under every name we write
# ------------------------------------------------------------------------------------------------
def test_a_resumed_run_replaces_the_links_planted_in_its_folder(finished, tmp_path):
    run = _copy(finished, tmp_path / "run", finished=False)
    victims = _plant(run, tmp_path / "outside", WRITTEN)
    assert main(["train", "--resume", str(run)]) == 0
    _untouched(victims)
    for name in ("metrics.jsonl", "metrics.json", "model.safetensors", "curves.png", *REPORT_FILES):
        assert files.is_real_file(run / name), name
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_report_replaces_links_at_its_pictures(finished, mnist_dir, tmp_path):
    run = _copy(finished, tmp_path / "run")
    victims = _plant(run, tmp_path / "outside", list(REPORT_FILES))
    (run / "samples.png").unlink()
    (run / "samples.png").symlink_to("/dev/full")  # a write through it would fail: a rename does not
    assert main(["report", str(run), "--data-dir", str(mnist_dir), "--no-download"]) == 0
    _untouched(victims)
    assert all((run / name).read_bytes()[:4] == b"\x89PNG" and files.is_real_file(run / name) for name in REPORT_FILES)


def test_a_new_run_refuses_a_folder_of_planted_links_and_creates_nothing(mnist_dir, tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    victims = _plant(folder, tmp_path / "outside", ["curves.png", "metrics.jsonl"])
    for extra in ([], ["--overwrite"]):
        code = main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(folder), *TINY, *extra])
        _one_line_error(capsys, 2, code, "holds 'curves.png' (a link to")
        _untouched(victims)
        assert sorted(p.name for p in folder.iterdir()) == ["curves.png", "metrics.jsonl"]


@pytest.mark.parametrize("where", ["root", "home-like"])
def test_output_dir_that_holds_anything_but_a_run_is_refused(where, mnist_dir, tmp_path, capsys):
    folder = Path("/") if where == "root" else tmp_path / "home"
    if where == "home-like":
        folder.mkdir()
        (folder / ".bashrc").write_bytes(PRECIOUS)
    before = sorted(os.listdir(folder))
    for extra in ([], ["--overwrite"]):
        code = main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(folder), *TINY, *extra])
        _one_line_error(capsys, 2, code, "a run goes into a new or empty folder, or replaces a run folder")
        assert sorted(os.listdir(folder)) == before
    if where == "home-like":
        assert (folder / ".bashrc").read_bytes() == PRECIOUS


def test_export_and_predict_never_replace_a_file_of_the_run_they_read(finished, tmp_path, capsys):
    from PIL import Image

    run = _copy(finished, tmp_path / "run")
    weights = (run / "model.safetensors").read_bytes()
    os.link(run / "model.safetensors", tmp_path / "hard-link")
    image = tmp_path / "digit.png"
    ink = Image.new("L", (28, 28), 0)
    ink.paste(255, (10, 6, 16, 22))
    ink.save(image)
    checkpoint = next((run / "checkpoints").iterdir()) / "model.safetensors"
    for args in (["export", str(run), "--output", str(run / "model.safetensors")],
                 ["export", str(run), "--output", str(tmp_path / "hard-link")],
                 ["export", str(run), "--output", str(checkpoint)],
                 ["predict", str(run), str(image), "3", "--csv", str(run / "config.json")],
                 ["predict", str(run), str(image), "3", "--csv", str(image)]):
        _one_line_error(capsys, 2, main([*args, "--overwrite"]), "which this command reads: it is never replaced")
    assert (run / "model.safetensors").read_bytes() == weights and image.read_bytes()[:4] == b"\x89PNG"
    assert main(["evaluate", str(run), "--json"]) == 0


def test_reading_a_run_never_follows_a_link_out_of_it(finished, mnist_dir, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(run / "config.json", elsewhere / "config.json")
    (run / "config.json").symlink_to(elsewhere / "config.json")
    _one_line_error(capsys, 2, main(["evaluate", str(run)]), "outside the run folder: a run's files are read only")
    # a link that stays inside the run folder is followed
    (run / "config.json").unlink()
    (run / "kept").mkdir()
    shutil.move(elsewhere / "config.json", run / "kept" / "config.json")
    (run / "config.json").symlink_to(run / "kept" / "config.json")
    assert main(["evaluate", str(run), "--json"]) == 0


def test_resume_refuses_a_checkpoints_folder_that_is_a_link(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run", finished=False)
    shutil.move(run / "checkpoints", tmp_path / "elsewhere")
    (run / "checkpoints").symlink_to(tmp_path / "elsewhere")
    before = sorted(p.name for p in (tmp_path / "elsewhere").iterdir())
    _one_line_error(capsys, 2, main(["train", "--resume", str(run)]), "checkpoints is a link to")
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == before


def test_writes_are_atomic_renames_that_keep_the_umask(tmp_path):
    link = tmp_path / "x.json"
    link.symlink_to(tmp_path / "target")
    files.write_text(link, "{}")
    assert files.is_real_file(link) and link.read_text() == "{}" and not (tmp_path / "target").exists()
    umask = os.umask(0o022)
    os.umask(umask)
    assert (link.stat().st_mode & 0o777) == 0o666 & ~umask  # as any new file: readable by the group
    with pytest.raises(IsADirectoryError):
        files.write_text(tmp_path, "x")  # a folder where the file goes: refused, nothing left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


# ------------------------------------------------------------------------------------------------
# A refused command changes nothing
# ------------------------------------------------------------------------------------------------
def folder_contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def test_a_refused_writer_leaves_the_lock_and_the_folder_alone(finished, mnist_dir, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run", finished=False)
    (tmp_path / "link").symlink_to(run)
    holder = RunFolder(run, resume=True).open()  # as a running `train --resume` holds it
    try:
        before = folder_contents(run)
        spellings = [tmp_path / "nowhere" / ".." / "run", tmp_path / "link", run]
        for spelling in spellings:
            for extra in ([], ["--overwrite"]):
                code = main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(spelling), *TINY, *extra])
                _one_line_error(capsys, 2, code, f"is in use by process {os.getpid()} on ")
            _one_line_error(capsys, 2, main(["train", "--resume", str(spelling)]), f"in use by process {os.getpid()}")
        assert not (tmp_path / "nowhere").exists()
        assert files.lock_is_held(run / ".lock") and folder_contents(run) == before
    finally:
        holder.close(ok=True)
    assert not files.lock_is_held(run / ".lock")
    assert main(["train", "--resume", str(run)]) == 0  # free again, and still resumable


def test_an_interrupt_while_the_pictures_are_drawn_leaves_a_run_resume_finishes(mnist_dir, tmp_path, monkeypatch,
                                                                              capsys):
    import mnist_addition.rundir.pictures as pictures

    run = tmp_path / "run"
    real = pictures.write_pictures

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pictures, "write_pictures", interrupt)
    code = main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY])
    line = _one_line_error(capsys, 130, code, f"interrupted: resume with  mnist-addition train --resume {run}")
    assert "back, unchanged" not in line and not (run / "metrics.json").exists()
    monkeypatch.setattr(pictures, "write_pictures", real)
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "metrics.json").is_file() and all((run / name).is_file() for name in REPORT_FILES)


def test_an_interrupt_after_the_run_finished_says_it_is_complete(mnist_dir, tmp_path, monkeypatch, capsys):
    import mnist_addition.rundir.contents as runs_module

    run = tmp_path / "run"
    real = runs_module.write_json

    def then_interrupt(path, data):
        real(path, data)
        if path.name == "metrics.json":
            raise KeyboardInterrupt

    monkeypatch.setattr(runs_module, "write_json", then_interrupt)
    code = main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY])
    _one_line_error(capsys, 130, code, f"interrupted after the run finished: {run} is complete")
    monkeypatch.setattr(runs_module, "write_json", real)
    _one_line_error(capsys, 2, main(["train", "--resume", str(run)]), "already finished")


@pytest.mark.parametrize("precreated", [False, True])
def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_so_training_again_works(
        precreated, mnist_dir, tmp_path, monkeypatch, capsys):
    import mnist_addition.training.step as step

    run = tmp_path / "run"
    if precreated:
        run.mkdir()
    real = step.train_step

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(step, "train_step", interrupt)
    args = ["train", "--data-dir", str(mnist_dir), "--output-dir", str(run), *TINY]
    _one_line_error(capsys, 130, main(args), "before the first checkpoint: nothing to resume; start again to train")
    assert run.exists() == precreated and (not precreated or os.listdir(run) in ([], [".lock"]))
    monkeypatch.setattr(step, "train_step", real)
    assert main(args) == 0  # "start again" works: nothing was left to refuse it


@pytest.mark.slow
def test_export_and_predict_csv_replace_a_link_at_their_output(finished, tmp_path):
    from PIL import Image

    run = _copy(finished, tmp_path / "run")
    victims = _plant(run, tmp_path / "outside", ["model.onnx"])
    victims |= _plant(tmp_path, tmp_path / "outside2", ["out.csv"])
    image = tmp_path / "digit.png"
    ink = Image.new("L", (28, 28), 0)
    ink.paste(255, (10, 6, 16, 22))
    ink.save(image)
    assert main(["export", str(run), "--overwrite"]) == 0
    assert main(["predict", str(run), str(image), "3", "--csv", str(tmp_path / "out.csv"), "--overwrite"]) == 0
    _untouched(victims)
    assert files.is_real_file(run / "model.onnx") and (tmp_path / "out.csv").read_text().startswith("file,number")
