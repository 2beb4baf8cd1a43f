"""The built wheel carries the search spaces, and a non-editable install finds them by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # see pyproject.toml: make test-fast leaves these out

REPO = Path(__file__).resolve().parents[1]


def _setuptools_major() -> int:
    try:
        import setuptools
    except ImportError:
        return 0
    return int(setuptools.__version__.split(".")[0])


def test_the_wheel_ships_the_search_spaces_and_tune_finds_them_by_name(tmp_path):
    # Built from a copy without build outputs: a stale build/ or *.egg-info could supply the files.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "runs", "__pycache__", ".pytest_cache"))
    # pyproject asks for setuptools>=77: use this environment's when it has one (a machine with no
    # package index, such as the GPU box), else let pip fetch it for an isolated build.
    no_isolation = ["--no-build-isolation"] if _setuptools_major() >= 77 else []
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", *no_isolation,
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    if built.returncode and not no_isolation and "setuptools" in built.stderr and "find" in built.stderr.lower():
        pytest.skip("cannot build the wheel: no setuptools>=77 here and no package index to fetch it from")
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("mnist_addition-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    spaces = sorted(n for n in names if n.endswith(".yaml"))
    assert spaces == [f"mnist_addition/sweep/spaces/{name}.yaml"
                      for name in ("accurate", "cpu_default", "default", "fastest", "gpu_recipe", "pbt", "smoke", "speed",
                                   "wide")]

    # The wheel's files alone (no checkout, no tune/ beside them), from another folder.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import mnist_addition, mnist_addition.sweep as s, mnist_addition.sweep.spaces as sp; "
            "path = s.find_space('default'); sp.load_space(path); print(mnist_addition.__file__); print(path)")
    found = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(site)})
    assert found.returncode == 0, found.stderr[-2000:]
    package, path = found.stdout.split()
    assert Path(package).is_relative_to(site) and Path(path) == site / "mnist_addition/sweep/spaces/default.yaml"
