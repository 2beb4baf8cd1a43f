"""Imports point one way: the core needs only torch; Accelerate only in train; Ray only inside a sweep."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_core_imports_neither_accelerate_nor_ray():
    loaded = _loaded_after("import mnist_addition, mnist_addition.core.data, mnist_addition.core.model, "
                           "mnist_addition.core.metrics, mnist_addition.core.evaluation, mnist_addition.rundir.contents, mnist_addition.commands.cli, "
                           "mnist_addition.sweep.spaces, mnist_addition.sweep; mnist_addition.commands.cli.build_parser()")
    assert "torch" in loaded
    assert "accelerate" not in loaded and "ray" not in loaded


def test_training_loop_imports_accelerate_but_not_ray():
    loaded = _loaded_after("import mnist_addition.training.loop")
    assert "accelerate" in loaded and "ray" not in loaded
