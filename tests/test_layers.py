"""The layers import one way: core -> rundir -> training -> sweep -> commands. Read with ``ast``
(nothing executed), and checked by what importing a layer loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mnist_addition"
LAYERS = ("core", "rundir", "training", "sweep", "commands")
# What each layer may import beyond the standard library, torch and the small helpers (rich, yaml...)
FORBIDDEN = {"core": {"accelerate", "ray"}, "rundir": {"accelerate", "ray"}, "training": {"ray"}}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] in LAYERS)


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path`` (a module of the package at
    ``root``), at any depth (function-level too)."""
    parts = ("mnist_addition", *path.relative_to(root).with_suffix("").parts)
    package = parts if path.name == "__init__.py" else parts[:-1]
    package = package[:-1] if package[-1] == "__init__" else package
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(filter(None, (base, node.module)))
            # `from . import x`: each name may be a module of that package
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names] if not node.module else [(node.lineno, module)]
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mnist_addition" and parts[1] in LAYERS else None


def test_every_import_points_down_the_layers_or_stays_in_its_own():
    wrong = []
    for path in _modules():
        own = path.relative_to(PACKAGE).parts[0]
        for line, module in _imports(path):
            target = _layer(module)
            if target is not None and LAYERS.index(target) > LAYERS.index(own):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {module} ({own} -> {target})")
            if module.split(".")[0] in FORBIDDEN.get(own, ()):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {module} (not in {own})")
    assert not wrong, "\n".join(wrong)


def test_the_import_reader_sees_an_import_that_points_up(tmp_path):
    """The check above can fail: an import of the sweep from the core is seen, at any depth."""
    (tmp_path / "core").mkdir()
    bad = tmp_path / "core" / "probe.py"
    bad.write_text("def f():\n    from ..sweep.options import SweepOptions\n    from . import config\n")
    assert _imports(bad, tmp_path) == [(2, "mnist_addition.sweep.options"), (3, "mnist_addition.core.config")]
    assert _layer("mnist_addition.sweep.options") == "sweep" and _layer("torch.nn") is None


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def _import_all(layer: str) -> str:
    names = sorted(".".join(("mnist_addition", *p.relative_to(PACKAGE).with_suffix("").parts))
                   for p in (PACKAGE / layer).glob("*.py") if p.name != "__init__.py")
    return "import " + ", ".join(names)


def test_the_core_and_the_run_folder_load_neither_accelerate_nor_ray():
    loaded = _loaded_after(f"{_import_all('core')}; {_import_all('rundir')}")
    assert "torch" in loaded
    assert "accelerate" not in loaded and "ray" not in loaded


def test_training_loads_accelerate_but_not_ray():
    loaded = _loaded_after(_import_all("training"))
    assert "accelerate" in loaded and "ray" not in loaded


def test_the_command_line_parser_and_the_sweep_package_load_neither_torch_nor_ray():
    loaded = _loaded_after("import mnist_addition, mnist_addition.sweep, mnist_addition.sweep.options; "
                           "from mnist_addition.commands.cli import build_parser; build_parser()")
    assert "mnist_addition" in loaded
    assert not loaded & {"torch", "accelerate", "ray"}


def test_the_testing_tools_stand_apart():
    """``mnist_addition/testing`` (the network-namespace harness) serves tests and benchmarks: no
    layer imports it, and it imports no part of the package, nor torch."""
    users = [f"{p.relative_to(PACKAGE)}:{line}" for p in _modules() for line, module in _imports(p)
             if module.startswith("mnist_addition.testing")]
    assert not users
    own = [module for p in (PACKAGE / "testing").glob("*.py") for _, module in _imports(p)]
    assert own and not [m for m in own if m.split(".")[0] in {"mnist_addition", "torch", "accelerate", "ray"}]
