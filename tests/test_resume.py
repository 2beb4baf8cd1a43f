"""A run killed mid-epoch resumes bit-identically; what may change on resume, and what is refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mnist_addition.commands.cli import main
from mnist_addition.rundir.checkpoint import list_checkpoints

from .helpers import (
    copy_run,
    crashed_run_args,
    folder_contents,
    resumed_like_uninterrupted,
    run_weights,
    train_and_kill,
    train_to_the_end,
)

pytestmark = pytest.mark.slow  # see pyproject.toml: make test-fast leaves these out


def test_resume_after_sigkill_is_bit_identical(crashed, uninterrupted, tmp_path, capsys):
    run = copy_run(crashed, tmp_path / "run")
    assert main(["train", "--resume", str(run)]) == 0
    resumed_like_uninterrupted(run, uninterrupted, capsys.readouterr().err)

@pytest.mark.gpu
def test_resume_after_sigkill_is_bit_identical_on_the_gpu_with_deterministic(mnist_dir, tmp_path, capsys):
    args = crashed_run_args(mnist_dir, device=["--deterministic"])
    uninterrupted = train_to_the_end(args, tmp_path / "full")
    assert json.loads((uninterrupted / "config.json").read_text())["setup"]["device"].startswith("cuda")
    run = train_and_kill(args, tmp_path / "run")
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    resumed_like_uninterrupted(run, uninterrupted, capsys.readouterr().err)

@pytest.mark.parametrize("case,match", [
    ("missing", "no such run folder"),
    ("no_checkpoint", "the run has no checkpoints"),
    ("finished", "already finished"),
    ("other_width", "was written by preset 'fast' width 8, but config.json says 'fast' width 12"),
    ("changed_lr", "--lr cannot change when resuming"),
    ("with_config", "--config cannot be combined with --resume"),
])
def test_bad_resume_is_one_line_and_changes_nothing(case, match, crashed, uninterrupted, tmp_path, capsys):
    run = copy_run(crashed, tmp_path / "run")
    extra: list[str] = []
    if case == "missing":
        run = tmp_path / "nope"
    elif case == "no_checkpoint":
        shutil.rmtree(run / "checkpoints")
    elif case == "finished":
        run = copy_run(uninterrupted, tmp_path / "done")
    elif case == "other_width":
        config = json.loads((run / "config.json").read_text())
        config["config"]["width"] = 12
        (run / "config.json").write_text(json.dumps(config))
    elif case == "changed_lr":
        extra = ["--lr", "0.5"]
    elif case == "with_config":
        extra = ["--config", str(run / "config.json")]
    before = folder_contents(run)
    assert main(["train", "--resume", str(run), *extra]) == 2
    err = capsys.readouterr().err.strip()
    error = err.splitlines()[-1]  # the error is one line (a header line may come before it)
    assert error.startswith("mnist-addition train: error: ") and match in error and "Traceback" not in err
    assert folder_contents(run) == before


def test_the_same_command_with_resume_is_accepted_and_resumes_bit_identically(crashed, uninterrupted, mnist_dir,
                                                                              tmp_path, capsys):
    """Flags given with the values the run already has (--cpu, --lr, --width ...) are not changes."""
    run = copy_run(crashed, tmp_path / "run")
    assert main(["train", *crashed_run_args(mnist_dir), "--resume", str(run), "--output-dir", str(run)]) == 0
    resumed_like_uninterrupted(run, uninterrupted, capsys.readouterr().err)


def test_fit_itself_enforces_the_resume_rules(crashed, uninterrupted, tmp_path):
    """The Python API refuses what the command line refuses, and accepts what it accepts."""
    from mnist_addition.core.config import ConfigError, TrainConfig
    from mnist_addition.training.loop import fit

    run = copy_run(crashed, tmp_path / "run")
    own = TrainConfig.load(run / "config.json").replace(output_dir=str(run))
    before = folder_contents(run)
    with pytest.raises(ConfigError, match=r"--lr cannot change when resuming \(.*config.json has 0.01, not 0.5\)"):
        fit(own.replace(lr=0.5), start="resume", progress=False)
    with pytest.raises(ConfigError, match="--cpu cannot change when resuming"):
        fit(own.replace(cpu=False, mixed_precision="no"), start="resume", progress=False)
    assert folder_contents(run) == before
    fit(own.replace(log_every=3, keep_checkpoints=1), start="resume", progress=False)  # where and how often: allowed
    a, b = run_weights(run), run_weights(uninterrupted)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(list_checkpoints(run)) == 1
