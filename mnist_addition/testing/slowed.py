"""Training slowed down in processes a test or benchmark starts, so that there is a "mid-run" to
interrupt: a ``sitecustomize`` that makes each optimizer step (the public seam
``step.train_step``) sleep first. The product reads no switch of it."""

from __future__ import annotations

import os
from pathlib import Path

SITECUSTOMIZE = """
import importlib.abc, sys, time
class _Slow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "mnist_addition.training.loop":
            import mnist_addition.training.step as step
            real = step.train_step
            def slow(*args, **kwargs):
                time.sleep(SECONDS)
                return real(*args, **kwargs)
            step.train_step = slow
        return None
sys.meta_path.insert(0, _Slow())
"""


def slowed_env(folder: Path, seconds: float, env: dict[str, str]) -> dict[str, str]:
    """``env`` with each optimizer step sleeping ``seconds`` first (a ``sitecustomize`` written
    to ``folder/slow``, put first on ``PYTHONPATH``)."""
    site = Path(folder) / "slow"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.replace("SECONDS", repr(float(seconds))))
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))}
