"""``mnist-addition runs`` and ``compare``: what the run and sweep folders under a folder hold, read
from their JSON files only (no torch, no Ray: listing a hundred runs takes a moment, not the ten
seconds torch takes to load).

A run's status comes from its files: **running** (another process holds its lock), **finished**
(``metrics.json``), else why it stopped (``status.json``: interrupted, preempted, diverged, peer
lost, failed; a run killed without a word is "stopped") and whether it can be resumed (it has a
checkpoint). A sweep (``sweep.json``) is one row: its trials, its best trial's validation accuracy,
finished or interrupted (``summary.json``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

from ..core.config import ConfigError, read_json_file
from ..core.errors import UserError, first_line, shown
from ..rundir import files
from ..rundir.names import (
    BEST_FILE,
    CHECKPOINTS,
    CONFIG,
    FINISHED,
    HISTORY,
    LOCK,
    STATUS,
    SUMMARY_FILE,
    SWEEP_FILE,
    TENSORBOARD,
    is_run_dir,
    stamp,
)

# --sort keys: accuracies and the date sort best/newest first, the rest in ascending order
NUMERIC_DESCENDING = ("val_digit", "val_sum", "test_digit", "test_sum", "date")
SORT_KEYS = ("date", "name", "status", "preset", "width", "epochs", "val_digit", "val_sum", "test_digit",
             "test_sum", "train_seconds")
MAX_DEPTH = 4  # runs/<group>/<run>: deep enough for folders of folders, not a walk of the disk
MAX_HISTORY_BYTES = 64 << 20  # metrics.jsonl of 100,000 epochs is about 60 MB


class CatalogError(UserError):
    """A folder to list or a run to compare is not what the command needs; the message says what to do."""


# ------------------------------------------------------------------------------------------------
# Finding runs and sweeps
# ------------------------------------------------------------------------------------------------
def find(folders: list[Path]) -> list[tuple[Path, Path]]:
    """(folder given, run or sweep folder) for everything found under ``folders``, in walk order."""
    found: list[tuple[Path, Path]] = []
    for folder in folders:
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise CatalogError(f"{shown(str(folder))} {what}: name a folder of runs (default: runs/)")
        before = len(found)
        found += [(folder, path) for path in _walk(folder, 0)]
        if len(found) == before:
            raise CatalogError(f"{folder} holds no runs or sweeps (no config.json or sweep.json below it, "
                               f"{MAX_DEPTH} folders deep): name the --output-dir or --storage-path of your runs")
    return found


def _walk(folder: Path, depth: int) -> Iterator[Path]:
    if is_run_dir(folder) or files.is_real_file(folder / SWEEP_FILE) or files.lock_is_held(folder / LOCK):
        yield folder  # a sweep's trial run folders are its rows in trials.csv, not rows here
        return
    if depth >= MAX_DEPTH:
        return
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        if depth:
            yield folder  # unreadable: a row says so (its runs, if any, cannot be seen)
        return
    for entry in entries:
        if entry.name.startswith(".") or entry.name in (CHECKPOINTS, TENSORBOARD):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), depth + 1)


# ------------------------------------------------------------------------------------------------
# One row: the files' values, of the types the columns hold (anything else as short text)
# ------------------------------------------------------------------------------------------------
NUMBER_COLUMNS = ("width", "epochs", "epochs_done", "trials", "val_digit", "val_sum", "test_digit", "test_sum",
                  "train_seconds")
TEXT_COLUMNS = ("name", "kind", "path", "status", "preset", "date")


def _json(path: Path, fallback: Any = None, notes: list[str] | None = None) -> Any:
    """A JSON file of the folder, or ``fallback`` where it is missing, a link, too large, too deep or
    unreadable (why, in ``notes``)."""
    if not os.path.lexists(path):
        return fallback
    if not files.is_real_file(path):
        problem = "not a regular file"
    else:
        try:
            return read_json_file(path, "file", "")
        except ConfigError as e:
            problem = "too large to read" if "too large" in str(e) else "not readable JSON"
    if notes is not None:
        notes.append(f"{path.name}: {problem}")
    return fallback


def _number(value: Any) -> float | None:
    """A finite number as a float; anything else (NaN and infinities too) None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _value(value: Any, number: bool) -> Any:
    """What a column shows: a number (or text) as it is; a value of another type as short text."""
    if value is None:
        return None
    if number and _number(value) is not None:
        return int(value) if isinstance(value, int) else float(value)
    if not number and isinstance(value, str) and len(value) <= 200:
        return value
    return shown(value)


def _strict(value: Any) -> Any:
    """``value`` with NaN and infinities as None, so that ``--json`` prints JSON (Python's json would
    write NaN and Infinity, which JSON has not; the rows' own columns are finite already)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _row(**values: Any) -> dict[str, Any]:
    return {k: _value(v, k in NUMBER_COLUMNS) for k, v in values.items()}


def history(run_dir: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """metrics.jsonl's rows (those that parse: a run killed while writing leaves whole lines only;
    a line nested too deeply is skipped)."""
    path = run_dir / HISTORY
    if not files.is_real_file(path):
        return []
    if path.stat().st_size > MAX_HISTORY_BYTES:
        if notes is not None:
            notes.append(f"{HISTORY}: over {MAX_HISTORY_BYTES:,} bytes, not read")
        return []
    rows = []
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        if notes is not None:
            notes.append(f"{HISTORY}: {e.strerror or first_line(e)}")
        return []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def run_status(run_dir: Path) -> str:
    if files.lock_is_held(run_dir / LOCK):
        return "running"
    if files.is_real_file(run_dir / FINISHED):
        return "finished"
    stopped = _json(run_dir / STATUS, {})
    why = stopped.get("status") if isinstance(stopped, dict) and isinstance(stopped.get("status"), str) else "stopped"
    try:
        resumable = files.is_real_dir(run_dir / CHECKPOINTS) and any(
            name.startswith("step-") for name in os.listdir(run_dir / CHECKPOINTS))
    except OSError as e:
        return f"{shown(why)[1:-1]}, checkpoints unreadable ({e.strerror or first_line(e)})"
    return f"{shown(why)[1:-1]}, resumable" if resumable else f"{shown(why)[1:-1]}, no checkpoint"


def run_row(run_dir: Path, name: str) -> dict[str, Any]:
    """One run's line: where it stands, what it is, how it scored."""
    notes: list[str] = []
    saved = _json(run_dir / CONFIG, {}, notes)
    config = saved.get("config") if isinstance(saved, dict) and isinstance(saved.get("config"), dict) else {}
    final = _json(run_dir / FINISHED, {}, notes)
    final = final if isinstance(final, dict) else {}
    rows = history(run_dir, notes)
    last = rows[-1] if rows else {}
    val = final.get("val") if isinstance(final.get("val"), dict) else {k[4:]: v for k, v in last.items()
                                                                         if k.startswith("val_")}
    test = final.get("test") if isinstance(final.get("test"), dict) else {}
    status = run_status(run_dir)
    if not config and status != "running":
        status = "broken: config.json is unreadable" if files.is_real_file(run_dir / CONFIG) else \
            "unreadable" if not os.access(run_dir, os.R_OK | os.X_OK) else "broken: no config.json"
    if notes:
        status += f" ({'; '.join(notes)})"
    return _row(name=name, kind="run", path=str(run_dir), status=status,
                preset=config.get("preset"), width=config.get("width"), epochs=config.get("epochs"),
                epochs_done=len(rows), val_digit=_number(val.get("digit_acc")), val_sum=_number(val.get("sum_acc")),
                test_digit=_number(test.get("digit_acc")), test_sum=_number(test.get("sum_acc")),
                train_seconds=_number(final.get("train_seconds", last.get("train_seconds"))),
                date=saved.get("created") if isinstance(saved, dict) else None)


def sweep_row(sweep_dir: Path, name: str) -> dict[str, Any]:
    """A sweep's line: its trials, and its best trial (validation only; a sweep never scores the test set)."""
    notes: list[str] = []
    summary = _json(sweep_dir / SUMMARY_FILE, {}, notes)
    summary = summary if isinstance(summary, dict) else {}
    best_config = _json(sweep_dir / BEST_FILE, {}, notes)
    best_config = best_config if isinstance(best_config, dict) else {}
    best = summary.get("best") if isinstance(summary.get("best"), dict) else {}
    left = _number(summary.get("unfinished"))
    if files.lock_is_held(sweep_dir / LOCK):
        status = "running"
    elif summary and not left:
        status = "finished"
    else:  # stopped (a summary of the trials so far), or killed before it wrote one
        status = f"interrupted, resumable ({left:.0f} trial{'s' if left != 1 else ''} left)" if left else "interrupted, resumable"
    if notes:
        status += f" ({'; '.join(notes)})"
    return _row(name=name, kind="sweep", path=str(sweep_dir), status=status, trials=summary.get("trials"),
                preset=best_config.get("preset"), width=best_config.get("width"), epochs=best.get("epochs_run"),
                epochs_done=summary.get("epochs_run"), val_digit=_number(best.get("val_digit_acc")),
                val_sum=_number(best.get("val_sum_acc")), test_digit=None, test_sum=None,
                train_seconds=_number(summary.get("sum_train_seconds")), date=_mtime(sweep_dir / SWEEP_FILE))


def _mtime(path: Path) -> str | None:
    try:
        modified = os.stat(path).st_mtime
    except OSError:
        return None
    return stamp(when=modified)


def catalog(folders: list[Path], sort: str = "date") -> list[dict[str, Any]]:
    """Every run and sweep under ``folders``, one dict each, sorted by ``sort`` (missing values last,
    values of another type just before them)."""
    if sort not in SORT_KEYS:
        raise CatalogError(f"unknown sort key {shown(sort)}: use one of {', '.join(SORT_KEYS)}")
    rows = []
    for given, path in find(folders):
        name = str(path.relative_to(given)) if path != given else path.name
        name = str(Path(given.name) / name) if len(folders) > 1 and path != given else name
        rows.append(sweep_row(path, name) if files.is_real_file(path / SWEEP_FILE) else run_row(path, name))
    number = sort in NUMBER_COLUMNS
    typed = [r for r in rows if isinstance(r[sort], (int, float) if number else str)]
    other = [r for r in rows if r[sort] is not None and r not in typed]  # text in a number column
    return (sorted(typed, key=lambda r: r[sort], reverse=sort in NUMERIC_DESCENDING)
            + sorted(other, key=lambda r: str(r[sort])) + [r for r in rows if r[sort] is None])


# ------------------------------------------------------------------------------------------------
# compare
# ------------------------------------------------------------------------------------------------
def read_run(run_dir: Path) -> dict[str, Any]:
    """A run folder's config, final metrics and history, for ``compare``; CatalogError if it is not a run."""
    if not run_dir.is_dir():
        raise CatalogError(f"{shown(str(run_dir))} {'is not a folder' if run_dir.exists() else 'does not exist'}: "
                           "compare run folders written by mnist-addition train")
    if not is_run_dir(run_dir):
        hint = " (it is a sweep: compare its trials' run folders, trial-*/run)" \
            if files.is_real_file(run_dir / SWEEP_FILE) else ""
        raise CatalogError(f"{run_dir} has no config.json: it is not a run folder{hint}")
    saved = _json(run_dir / CONFIG)
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise CatalogError(f"{run_dir}/config.json is not a run's config.json: restore it, or leave the run out")
    return {"path": run_dir, "config": saved["config"], "row": run_row(run_dir, run_dir.name),
            "history": history(run_dir)}


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The config keys whose values are not the same in every run (where a run is, aside)."""
    keys = sorted({k for c in configs for k in c} - {"output_dir"})
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def labels(paths: list[Path]) -> list[str]:
    """Short names for runs: their folder names, or more of their paths where those repeat."""
    for depth in range(1, 6):
        names = [str(Path(*p.resolve().parts[-depth:])) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def compare(run_dirs: list[Path], output: Path | None, overwrite: bool = False) -> dict[str, Any]:
    """The runs' differing config keys and final metrics; their validation curves drawn to ``output``."""
    if len(run_dirs) < 2:
        raise CatalogError("compare needs at least two run folders: mnist-addition compare RUN_A RUN_B [...]")
    real = [os.path.realpath(p) for p in run_dirs]
    twice = next((p for p, r in zip(run_dirs, real) if real.count(r) > 1), None)
    if twice is not None:
        raise CatalogError(f"{twice} is given twice: compare different runs")
    found = [read_run(p) for p in run_dirs]
    names = labels(run_dirs)
    keys = differing_keys([r["config"] for r in found])
    result = {"runs": names, "paths": [str(p) for p in run_dirs],
              "differ": _strict({k: [r["config"].get(k) for r in found] for k in keys}),
              "metrics": [r["row"] for r in found], "picture": None}
    if output is not None:
        from ..rundir import contents
        from ..rundir.plots import plot_compare

        protected = tuple(p for r in found for p in contents.run_files(r["path"]))
        contents.check_output_file(output, overwrite, "--output", protected)
        contents.replace_file(output, lambda tmp: plot_compare([(n, r["history"]) for n, r in zip(names, found)], tmp),
                          "--output")
        result["picture"] = str(output)
    return result
