"""A finished (or interrupted) sweep's results: trial rows, ranking, and the files in ``STORAGE/NAME``.

``trial_status`` and ``rank`` are pure functions of the rows, tested without Ray; ``trial_rows``
reads Ray's ResultGrid into rows; ``write_results`` writes trials.csv, best_config.json, sweep.png
and summary.json, and prints the table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from .options import BEST_FILE, CSV_FILE, PLOT_FILE, SUMMARY_FILE, NoUsableTrial, SweepOptions
from .storage import Store

FINISHED, STOPPED, ERROR, UNFINISHED = "finished", "stopped early", "error", "unfinished"
METRIC_COLUMNS = ("val_digit_acc", "val_sum_acc", "val_both_acc", "val_loss", "images_per_s", "train_seconds",
                  "processes", "resumed_from_epoch", "node_id", "gpu_ids")


def trial_status(ray_status: str, errored: bool, epochs_run: int, budget: int) -> str:
    """finished: trained all of its own epochs; stopped early: the scheduler ended it sooner;
    error: it failed (after its retries); unfinished: the sweep was interrupted (--resume goes on)."""
    if errored or ray_status == "ERROR":
        return ERROR
    if ray_status != "TERMINATED":
        return UNFINISHED
    return FINISHED if epochs_run >= budget else STOPPED


def usable(trial: dict[str, Any], metric: str) -> bool:
    """A trial that may be ranked: it ran (finished or stopped by the scheduler) and its metric is a number."""
    value = trial.get(metric)
    return trial["status"] in (FINISHED, STOPPED) and isinstance(value, (int, float)) and math.isfinite(value)


def rank(trials: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """The usable trials, best first. Finished trials come before those the scheduler stopped: a
    stopped trial was scored before its schedule ended, and its config's ``epochs`` is a budget it
    never trained, so it is picked only when no trial finished."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted((t for t in trials if usable(t, metric)),
                  key=lambda t: (t["status"] != FINISHED, sign * t[metric]))


def trial_rows(grid: Any, metric: str, keys: list[str], base_epochs: int,
               statuses: dict[str, str]) -> list[dict[str, Any]]:
    """One row per trial of a Ray ResultGrid: sampled values, status, epochs, last metrics, curve."""
    rows = []
    for result in grid:
        m = result.metrics or {}
        history = result.metrics_dataframe
        curve = [] if history is None or "epoch" not in history or metric not in history else \
            history[["epoch", metric]].dropna().to_dict("records")
        trial_id = m.get("trial_id") or Path(result.path).name.removeprefix("trial-")
        epochs_run = int(m.get("epoch", 0) or 0)
        budget = int(m.get("budget_epochs") or result.config.get("epochs") or base_epochs)
        status = trial_status(statuses.get(trial_id, "TERMINATED"), bool(result.error), epochs_run, budget)
        rows.append({"trial_id": trial_id, **{k: result.config.get(k) for k in keys}, "status": status,
                     "epochs_run": epochs_run, "budget_epochs": budget, **{k: m.get(k) for k in METRIC_COLUMNS},
                     "trial_seconds": m.get("time_total_s"), "moved_from": " ".join(earlier_nodes(history)),
                     "curve": curve})
    return rows


def earlier_nodes(history: Any) -> list[str]:
    """The nodes a trial reported from before the one it ended on, in order (a retry that Ray
    placed elsewhere, e.g. after its node was lost); empty for a trial that never moved."""
    if history is None or "node_id" not in history:
        return []
    nodes = list(dict.fromkeys(str(n) for n in history["node_id"].dropna()))
    last = str(history["node_id"].dropna().iloc[-1]) if len(nodes) else None
    return [n for n in nodes if n != last]


def write_results(trials: list[dict[str, Any]], options: SweepOptions, keys: list[str], base: dict[str, Any],
                  max_epochs: int, store: Store, wall: float, console: Any) -> dict[str, Any]:
    """Rank, write the result files, print the top trials; return the summary.

    Raises NoUsableTrial (after writing trials.csv and summary.json, and no best_config.json) when
    the sweep ran to its end without one rankable trial.
    """
    ranked = rank(trials, options.metric, options.resolved_mode())
    counts = {status: sum(t["status"] == status for t in trials) for status in (FINISHED, STOPPED, ERROR, UNFINISHED)}
    trained = sum(t["train_seconds"] or 0 for t in trials)
    summary: dict[str, Any] = {
        "name": options.name, "uri": store.uri, "trials": len(trials), "metric": options.metric,
        "mode": options.resolved_mode(), "ranked": len(ranked), "wall_seconds": wall,
        "sum_trial_seconds": sum(t["trial_seconds"] or 0 for t in trials), "sum_train_seconds": trained,
        "epochs_run": sum(t["epochs_run"] for t in trials), "finished": counts[FINISHED],
        "stopped_early": counts[STOPPED], "errors": counts[ERROR],
        # interrupted trials, and those not yet sampled when the sweep stopped (not in the grid at all)
        "unfinished": options.num_samples - counts[FINISHED] - counts[STOPPED] - counts[ERROR],
        "best_trial": None, "best": None, "best_config": None}
    columns = ["trial_id", *keys, "status", "epochs_run", "budget_epochs", *METRIC_COLUMNS[:6], "trial_seconds",
               *METRIC_COLUMNS[6:], "moved_from"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(ranked + [t for t in trials if t not in ranked])
    store.write(CSV_FILE, text.getvalue().encode())
    if ranked:
        best = ranked[0]
        best_config = TrainConfig.from_dict({**base, **{k: best[k] for k in keys}}, source="the best trial")
        best_config = best_config.replace(data_dir=None, output_dir=None)  # say where on the command line
        summary.update(best_trial=best["trial_id"], best_config=best_config.to_dict(),
                       best={k: best[k] for k in ("val_digit_acc", "val_sum_acc", "val_both_acc", "epochs_run",
                                                  "budget_epochs", "status")})
        store.write(BEST_FILE, (best_config.to_json() + "\n").encode())
        from ..plots import plot_sweep

        store.write(PLOT_FILE, plot_sweep(trials, keys, options.metric, max_epochs))
    store.write(SUMMARY_FILE, json.dumps(summary, indent=2).encode())
    if ranked:
        _print_table(console, ranked, keys, options)
    console.print(f"{len(trials)} trials ({counts[FINISHED]} finished, {counts[STOPPED]} stopped early, "
                  f"{counts[ERROR]} failed), {summary['epochs_run']} epochs in {wall:.0f} s ({trained:.0f} s of it training)")
    if not ranked and not summary["unfinished"]:
        unusable = len(trials) - counts[ERROR]
        raise NoUsableTrial(f"no trial produced a usable {options.metric} ({counts[ERROR]} failed, {unusable} without "
                            f"a finite value): see the error.txt files under {store.uri}, fix the cause and start "
                            "a new sweep; no best_config.json was written")
    written = [CSV_FILE, *([BEST_FILE, PLOT_FILE] if ranked else []), SUMMARY_FILE]
    console.print(f"wrote {', '.join(written)} to {store.uri}")
    if ranked:
        console.print(f"next: mnist-addition train --config {store.where(BEST_FILE)}"
                      f"{' --data-dir ' + options.data_dir if options.data_dir else ''}")
    return summary


def _print_table(console: Any, ranked: list[dict[str, Any]], keys: list[str], options: SweepOptions) -> None:
    from rich.table import Table

    table = Table(title=f"Top trials by {options.metric} (validation; the test set is not used)")
    for col in ("#", "trial", *keys, "epochs run/own", "val digit", "val sum", "val both", "status"):
        table.add_column(col, justify="left" if col in ("trial", "status") else "right")
    for i, t in enumerate(ranked[:options.top], 1):
        table.add_row(str(i), t["trial_id"], *(f"{t[k]:.3g}" if isinstance(t[k], float) else str(t[k]) for k in keys),
                      f"{t['epochs_run']}/{t['budget_epochs']}",
                      *(f"{100 * t[k]:.2f}%" for k in ("val_digit_acc", "val_sum_acc", "val_both_acc")), t["status"])
    console.print(table)
