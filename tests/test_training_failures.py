"""Training that cannot go on: too large a model, out of memory, Ctrl-C before the first checkpoint, a full disk: one line each."""

from __future__ import annotations

import pytest

from mnist_addition.commands.cli import main
from mnist_addition.training.faults import PeerLost, peers_explained

from .helpers import TINY


def test_a_model_too_large_for_memory_is_refused_before_anything_is_written(mnist_dir, tmp_path, monkeypatch, capsys):
    import mnist_addition.core.backends as backends

    monkeypatch.setattr(backends, "free_memory", lambda device: 10 * 2**20)  # 10 MiB free
    code = main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / "r"), *TINY, "--width", "200"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "--width 200 makes" in err and "more than the 0.0 GiB free" in err and "smaller --width" in err
    assert not (tmp_path / "r").exists()


def test_running_out_of_memory_while_training_is_one_line(mnist_dir, tmp_path, monkeypatch, capsys):
    import torch

    import mnist_addition.training.step as step

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(step, "train_step", out_of_memory)
    code = main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / "r"), *TINY])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "out of memory on cpu with --batch-size 32 and --width 8: lower --batch-size" in err


def test_an_interrupt_before_the_first_checkpoint_does_not_promise_a_resume(mnist_dir, tmp_path, monkeypatch, capsys):
    import mnist_addition.training.step as step

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(step, "train_step", interrupt)
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / "r"), *TINY]) == 130
    err = capsys.readouterr().err.replace("\n", "")
    assert "before the first checkpoint: nothing to resume" in err and "--resume" not in err


def test_a_full_disk_while_training_is_one_line(mnist_dir, tmp_path, monkeypatch, capsys):
    import errno

    import mnist_addition.rundir.contents as runs_module

    def full(path, rows):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(runs_module, "write_jsonl", full)
    code = main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / "r"), *TINY])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and f"cannot write {tmp_path / 'r' / 'metrics.jsonl'} (No space left on device)" in err


@pytest.mark.parametrize("raised, says", [
    ("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 10000ms for recv",
     "(Timed out waiting 10000ms for recv; --dist-timeout 10 s)"),
    ("Connection closed by peer [198.51.100.2]:40123", "(Connection closed by peer [198.51.100.2]:40123;")])
def test_a_lost_peer_is_one_line_naming_the_rank_and_what_gloo_said_without_its_source_file(raised, says):
    with pytest.raises(PeerLost) as caught:
        with peers_explained(1, 2, 10):
            raise RuntimeError(raised + "\nException raised from recv at ...")
    line = str(caught.value)
    assert line.startswith("rank 1: another process of the run stopped answering") and says in line
    assert "\n" not in line and ".cc:" not in line and "--auto-resume" in line


def test_a_bug_is_not_mistaken_for_a_lost_peer():
    with pytest.raises(ValueError):
        with peers_explained(0, 2, 10):
            raise ValueError("timed out")  # not a collective's error
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with peers_explained(0, 2, 10):
            raise RuntimeError("shape mismatch")
