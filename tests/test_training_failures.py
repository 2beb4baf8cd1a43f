"""Training that cannot go on: too large a model, out of memory, Ctrl-C before the first checkpoint, a full disk: one line each."""

from __future__ import annotations

from mnist_addition.commands.cli import main

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
