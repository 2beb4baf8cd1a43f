"""Damaged checkpoints: a corrupt or half-written one is skipped for the one before, a payload never runs, none usable is one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mnist_addition.commands.cli import main
from mnist_addition.rundir.checkpoint import list_checkpoints

from .helpers import copy_run, folder_contents, run_weights

pytestmark = pytest.mark.slow  # see pyproject.toml: make test-fast leaves these out


def test_corrupt_checkpoint_falls_back_to_the_previous_one(crashed, uninterrupted, tmp_path, capsys):
    run = copy_run(crashed, tmp_path / "run")
    weights = run / "checkpoints" / "step-00000016" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # damaged after it was written
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert "checkpoint" in err and "step-00000016 is corrupt (model.safetensors does not match its checksum)" in err
    assert "resuming from step-00000015" in err
    a, b = run_weights(run), run_weights(uninterrupted)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_half_written_checkpoint_is_ignored(crashed, tmp_path, capsys):
    run = copy_run(crashed, tmp_path / "run")
    shutil.copytree(run / "checkpoints" / "step-00000016", run / "checkpoints" / ".tmp-step-00000020")
    (run / "checkpoints" / ".tmp-step-00000020" / "MANIFEST.json").unlink()  # died before the rename
    assert main(["train", "--resume", str(run)]) == 0
    assert "resuming from step-00000016" in capsys.readouterr().err

@pytest.mark.parametrize("name,needed", [
    ("model.safetensors", True), ("optimizer.safetensors", True), ("optimizer.json", True),
    ("trainer_state.json", True),
    # files Accelerate's pickle-based checkpoints had: never opened, so the newest checkpoint is used
    ("custom_checkpoint_0.pkl", False), ("random_states_0.pkl", False), ("optimizer.bin", False),
    ("scheduler.bin", False),
])
def test_a_code_running_payload_in_a_checkpoint_never_runs(name, needed, crashed, tmp_path, capsys):
    """A pickle payload is written into (or next to) each file of the newest checkpoint and the
    manifest regenerated to match, as a careful attacker would: resuming never runs it. A file the
    resume needs is reported in one line (naming it) and the checkpoint before is used; a file it
    does not need is never opened."""
    import pickle

    from mnist_addition.rundir.checkpoint import _files, _sha256
    from mnist_addition.rundir.names import MANIFEST

    run = copy_run(crashed, tmp_path / "run")
    marker = tmp_path / "payload-ran"
    found = list_checkpoints(run)
    newest, previous = found[-1], found[-2]
    (newest / name).write_bytes(pickle.dumps(_Payload(marker)))
    manifest = {str(p.relative_to(newest)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(newest)}
    (newest / MANIFEST).write_text(json.dumps(manifest))
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert not marker.exists() and "Traceback" not in err and (run / "model.safetensors").exists()
    warnings = [line for line in err.splitlines() if line.startswith("warning: checkpoint")]
    if needed:
        assert len(warnings) == 1 and newest.name in warnings[0] and name in warnings[0]
        assert f"resuming from {previous.name}" in err
    else:
        assert warnings == [] and f"resuming from {newest.name}" in err


def test_all_checkpoints_damaged_is_one_line_and_changes_nothing(crashed, tmp_path, capsys):
    run = copy_run(crashed, tmp_path / "run")
    for checkpoint in list_checkpoints(run):
        weights = checkpoint / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8])
    before = folder_contents(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if "is corrupt" in line and line.startswith("warning")] != []
    assert len([line for line in err if line.startswith("warning: checkpoint")]) == 3  # each one reported
    assert err[-1].startswith("mnist-addition train: error: every checkpoint in ") and "train again" in err[-1]
    assert folder_contents(run) == before


class _Payload:
    """Unpickling this makes a folder: proof that code from a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))
