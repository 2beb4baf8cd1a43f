"""A finished (or interrupted) sweep's results: trial rows, ranking, and the files in ``STORAGE/NAME``.

``trial_status``, ``rank``, ``pareto_front`` and ``choose`` are pure functions of the rows, tested
without Ray; ``trial_rows`` reads Ray's ResultGrid into rows; ``write_results`` writes trials.csv,
best_config.json, sweep.png and summary.json (and, with several metrics, pareto.csv and
pareto.png), and prints the table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ..core.config import TrainConfig
from ..rundir.names import BEST_FILE, CONFIG, CSV_FILE, PARETO_CSV, PARETO_PLOT, PLOT_FILE, SUMMARY_FILE, TRIAL_RUN
from .options import NoUsableTrial, SweepOptions
from .storage import Store

FINISHED, STOPPED, ERROR, UNFINISHED = "finished", "stopped early", "error", "unfinished"
HUNG = "hung"  # an error: --trial-timeout stopped the trial's last attempt (watchdog.py)
METRIC_COLUMNS = ("val_digit_acc", "val_sum_acc", "val_both_acc", "val_loss", "images_per_s", "train_seconds",
                  "processes", "threads", "resumed_from_epoch", "node_id", "gpu_ids")
# A K-seed sweep's (--seeds above 1): the metrics above are means over the seeds; these say their
# spread and the worst seed (training/seeds.py's over_seeds). A one-seed sweep has none of them.
SEED_COLUMNS = ("seeds", "val_both_acc_std", "val_both_acc_min", "val_digit_acc_std", "val_digit_acc_min",
                "val_sum_acc_std", "val_sum_acc_min", "val_loss_std", "val_loss_max", "train_seconds_std",
                "train_seconds_max")


def trial_status(ray_status: str, errored: bool, epochs_run: int, budget: int, hung: bool = False) -> str:
    """A trial's status, the one rule (``trials.csv``, the trackers, the printed lines): finished:
    trained all of its own epochs; stopped early: the scheduler ended it sooner; error: it failed
    (after its retries); hung: it failed, its last attempt stopped by --trial-timeout; unfinished:
    the sweep was interrupted (--resume goes on)."""
    if errored or ray_status == "ERROR":
        return HUNG if hung else ERROR
    if ray_status != "TERMINATED":
        return UNFINISHED
    return FINISHED if epochs_run >= budget else STOPPED


def ended_status(last: dict[str, Any] | None, failed: bool = False, hung: bool = False) -> dict[str, Any]:
    """How a trial that has just ended ended, from its last report: status, epochs run, budget."""
    epoch, budget = (last or {}).get("epoch", 0), (last or {}).get("budget_epochs", 0)
    return {"status": trial_status("TERMINATED", failed, epoch, budget, hung), "epochs_run": epoch,
            "budget_epochs": budget}


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


def score_metric(metrics: tuple[str, ...]) -> str:
    """The accuracy a sweep's picture and curves show: the first accuracy among its metrics."""
    return next((m for m in metrics if m.endswith("_acc")), "val_both_acc")


def dominates(a: dict[str, Any], b: dict[str, Any], metrics: tuple[str, ...], modes: tuple[str, ...]) -> bool:
    """``a`` is at least as good as ``b`` on every metric and better on one."""
    signs = [1.0 if mode == "max" else -1.0 for mode in modes]
    better = [s * a[m] > s * b[m] for m, s in zip(metrics, signs)]
    worse = [s * a[m] < s * b[m] for m, s in zip(metrics, signs)]
    return any(better) and not any(worse)


def pareto_front(trials: list[dict[str, Any]], metrics: tuple[str, ...], modes: tuple[str, ...]) -> list[dict[str, Any]]:
    """The non-dominated trials among those usable on every metric, finished ones only while any
    finished (a trial the scheduler stopped was never trained to its own config's end, so its
    accuracy-for-time is not what its config gives), ordered by the first metric, best first."""
    pool = [t for t in trials if all(usable(t, m) for m in metrics)]
    if any(t["status"] == FINISHED for t in pool):
        pool = [t for t in pool if t["status"] == FINISHED]
    front = [t for t in pool if not any(dominates(o, t, metrics, modes) for o in pool if o is not t)]
    sign = -1.0 if modes[0] == "max" else 1.0
    return sorted(front, key=lambda t: sign * t[metrics[0]])


class NoTrialMeetsRule(NoUsableTrial):
    """--pick: no ranked trial meets the rule (exit 1, after the results files are written)."""


def choose(trials: list[dict[str, Any]], options: SweepOptions) -> dict[str, Any] | None:
    """The trial best_config.json is: the best on the first metric, or with ``--pick METRIC>=X``
    the best on the other metric among those meeting the rule. None if no trial is usable;
    NoTrialMeetsRule (naming the trial closest to the rule) if none meets it."""
    if options.pick is None:
        ranked = rank(trials, options.primary, options.resolved_mode())
        return ranked[0] if ranked else None
    metric, op, threshold, by = options.pick_rule()
    meets = (lambda v: v >= threshold) if op == ">=" else (lambda v: v <= threshold)
    ranked = rank(trials, by, options.modes()[options.metric.index(by)])
    picked = [t for t in ranked if usable(t, metric) and meets(t[metric])]
    if picked:
        return picked[0]
    closest = rank(trials, metric, "max" if op == ">=" else "min")
    if not closest:
        return None
    t = closest[0]
    other = f" ({by} {t[by]:.4g})" if usable(t, by) else ""
    raise NoTrialMeetsRule(f"no trial meets --pick {options.pick}: the closest is {t['trial_id']} with {metric} "
                           f"{t[metric]:.4g}{other}; no best_config.json was written: relax the rule, or sweep more "
                           "trials")


def trial_rows(grid: Any, metric: str, keys: list[str], base_epochs: int, statuses: dict[str, str],
               configs: dict[str, dict[str, Any]] | None = None,
               hangs: dict[str, tuple[int, bool]] | None = None) -> list[dict[str, Any]]:
    """One row per trial of a Ray ResultGrid: sampled values, status, epochs, last metrics, curve.
    ``configs``: each trial's sampled values as Tune holds them (a trial stopped before its first
    report has no results for the grid to read them from); ``hangs``: with --trial-timeout, each
    trial's hung attempts and whether its last attempt hung (``watchdog.hang_of``)."""
    rows = []
    for result in grid:
        m = result.metrics or {}
        history = result.metrics_dataframe
        curve = [] if history is None or "epoch" not in history or metric not in history else \
            history[["epoch", metric]].dropna().to_dict("records")
        trial_id = m.get("trial_id") or Path(result.path).name.removeprefix("trial-")
        config = result.config or (configs or {}).get(trial_id) or {}
        epochs_run = int(m.get("epoch", 0) or 0)
        budget = int(m.get("budget_epochs") or config.get("epochs") or base_epochs)
        hung = (hangs or {}).get(trial_id, (0, False))
        status = trial_status(statuses.get(trial_id, "TERMINATED"), bool(result.error), epochs_run, budget, hung[1])
        rows.append({"trial_id": trial_id, **{k: config.get(k) for k in keys}, "status": status, "hangs": hung[0],
                     "epochs_run": epochs_run, "budget_epochs": budget,
                     **{k: m.get(k) for k in (*METRIC_COLUMNS, *(SEED_COLUMNS if "seeds" in m else ()))},
                     "trial_seconds": m.get("time_total_s"), "moved_from": " ".join(earlier_nodes(history)),
                     "continued_from": m.get("continued_from") or "",
                     "copied_from": " ".join(copies(history)), "curve": curve})
    return rows


def copies(history: Any) -> list[str]:
    """Whose weights a PBT trial copied, in order (``weights_from`` of the epochs after each copy)."""
    if history is None or "weights_from" not in history:
        return []
    return [str(w).split(" (")[0] + "@" + str(int(e) - 1)
            for w, e in zip(history["weights_from"], history["epoch"]) if isinstance(w, str)]


def earlier_nodes(history: Any) -> list[str]:
    """The nodes a trial reported from before the one it ended on, in order (a retry that Ray
    placed elsewhere, e.g. after its node was lost); empty for a trial that never moved."""
    if history is None or "node_id" not in history:
        return []
    nodes = list(dict.fromkeys(str(n) for n in history["node_id"].dropna()))
    last = str(history["node_id"].dropna().iloc[-1]) if len(nodes) else None
    return [n for n in nodes if n != last]


def write_results(trials: list[dict[str, Any]], options: SweepOptions, keys: list[str], base: dict[str, Any],
                  max_epochs: int, store: Store, wall: float, console: Any,
                  interrupted: str | None = None) -> dict[str, Any]:
    """Rank, write the result files, print the top trials; return the summary.

    Raises NoUsableTrial (after writing trials.csv and summary.json, and no best_config.json) when
    the sweep ran to its end without one rankable trial, or (NoTrialMeetsRule) none meeting --pick.
    ``interrupted`` (by a signal): the trials so far (``_write_so_far``), nothing chosen yet.
    """
    if interrupted:
        return _write_so_far(trials, options, keys, max_epochs, store, wall, console, interrupted)
    ranked = rank(trials, options.primary, options.resolved_mode())
    summary = _summary(trials, options, store, wall, len(ranked))
    written = [CSV_FILE]
    columns = _columns(keys, options)
    if options.scheduler == "pbt":
        summary["copies"] = sum(len(t["copied_from"].split()) for t in trials if t.get("copied_from"))
    if len(options.metric) > 1:  # a multi-objective sweep: the front, marked in trials.csv, and its files
        front = pareto_front(trials, options.metric, options.modes())
        for t in trials:
            t["pareto"] = "yes" if any(t is f for f in front) else ""
        columns.append("pareto")
        summary["pareto"] = [t["trial_id"] for t in front]
        if front:
            _write_pareto(trials, front, keys, options, store)
            written += [PARETO_CSV, PARETO_PLOT]
    store.write(CSV_FILE, _csv(ranked + [t for t in trials if t not in ranked], columns))
    try:
        best, unmet = choose(trials, options), None
    except NoTrialMeetsRule as refusal:
        best, unmet = None, refusal
    if best is not None:
        summary.update(_write_best(best, keys, base, store, options.scheduler == "pbt"))
        written.append(BEST_FILE)
    if ranked:
        from ..rundir.plots import plot_sweep

        store.write(PLOT_FILE, plot_sweep(trials, keys, score_metric(options.metric), max_epochs))
        written.append(PLOT_FILE)
    store.write(SUMMARY_FILE, json.dumps(summary, indent=2).encode())
    if ranked:
        _print_table(console, ranked, keys, options)
    console.print(f"{len(trials)} trials ({summary['finished']} finished, {summary['stopped_early']} stopped early, "
                  f"{summary['errors']} failed{_hung(summary)}), {summary['epochs_run']} epochs in {wall:.0f} s "
                  f"({summary['sum_train_seconds']:.0f} s of it training)")
    if not ranked and not summary["unfinished"]:
        unusable = len(trials) - summary["errors"]
        raise NoUsableTrial(f"no trial produced a usable {options.primary} ({summary['errors']} failed, {unusable} "
                            f"without a finite value): see the error.txt files under {store.uri}, fix the cause and "
                            "start a new sweep; no best_config.json was written")
    console.print(f"wrote {', '.join([*written, SUMMARY_FILE])} to {store.uri}")
    if unmet is not None:
        if not summary["unfinished"]:
            raise unmet
        console.print(f"so far {unmet}")  # the sweep is not over: --resume may still find one
    if best is not None:
        console.print(f"next: mnist-addition train --config {store.where(BEST_FILE)}"
                      f"{' --data-dir ' + options.data_dir if options.data_dir else ''}"
                      "  (with --val-size 0: the final fit on every training image)")
    return summary


def _write_so_far(trials: list[dict[str, Any]], options: SweepOptions, keys: list[str], max_epochs: int, store: Store,
                  wall: float, console: Any, interrupted: str) -> dict[str, Any]:
    """What an interrupted sweep's trials did so far (``write_results``)."""
    ranked = rank(trials, options.primary, options.resolved_mode())
    summary = {**_summary(trials, options, store, wall, len(ranked)), "interrupted": interrupted}
    store.write(CSV_FILE, _csv(ranked + [t for t in trials if t not in ranked], _columns(keys, options)))
    if ranked:
        from ..rundir.plots import plot_sweep

        store.write(PLOT_FILE, plot_sweep(trials, keys, score_metric(options.metric), max_epochs))
    store.write(SUMMARY_FILE, json.dumps(summary, indent=2).encode())
    console.print(f"so far: {summary['finished']} finished, {summary['stopped_early']} stopped early, {summary['errors']} "
                  f"failed{_hung(summary)}, {summary['unfinished']} of {options.num_samples} trials unfinished; wrote {CSV_FILE}, "
                  f"{SUMMARY_FILE} to {store.uri}")
    return summary


def _columns(keys: list[str], options: SweepOptions) -> list[str]:
    """trials.csv's columns: the trial, its sampled values, how it ended, its last metrics."""
    columns = ["trial_id", *keys, "status", *(["hangs"] if options.trial_timeout else []), "epochs_run",
               "budget_epochs", *METRIC_COLUMNS[:6],
               *(SEED_COLUMNS if (options.seeds or 1) > 1 else ()), "trial_seconds", *METRIC_COLUMNS[6:],
               "moved_from", "continued_from"]
    if options.scheduler == "pbt":  # whose weights each trial copied, at which epoch's end
        columns.append("copied_from")
    return columns


def _hung(summary: dict[str, Any]) -> str:
    return f" ({summary['hung']} of them hung)" if summary.get("hung") else ""


def _summary(trials: list[dict[str, Any]], options: SweepOptions, store: Store, wall: float, ranked: int) -> dict[str, Any]:
    counts = {status: sum(t["status"] == status for t in trials) for status in (FINISHED, STOPPED, ERROR, HUNG)}
    counts[ERROR] += counts[HUNG]  # a hung trial failed
    hung = {"hung": counts[HUNG]} if options.trial_timeout else {}
    return {
        "name": options.name, "uri": store.uri, "trials": len(trials), "metric": options.primary,
        "mode": options.resolved_mode(), "metrics": list(options.metric), "modes": list(options.modes()),
        "pick": options.pick, "ranked": ranked, "wall_seconds": wall,
        "sum_trial_seconds": sum(t["trial_seconds"] or 0 for t in trials),
        "sum_train_seconds": sum(t["train_seconds"] or 0 for t in trials),
        "epochs_run": sum(t["epochs_run"] for t in trials), "finished": counts[FINISHED],
        "stopped_early": counts[STOPPED], "errors": counts[ERROR], **hung,
        # interrupted trials, and those not yet sampled when the sweep stopped (not in the grid at all)
        "unfinished": options.num_samples - counts[FINISHED] - counts[STOPPED] - counts[ERROR],
        "best_trial": None, "best": None, "best_config": None}


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def _write_best(best: dict[str, Any], keys: list[str], base: dict[str, Any], store: Store,
                schedule: bool = False) -> dict[str, Any]:
    """best_config.json (for ``train --config``); what summary.json says of it. ``schedule`` (PBT):
    the best trial's own config.json, whose hparam_schedule replays what it held epoch by epoch."""
    if schedule:
        from .trial import trial_dirname

        where = f"{trial_dirname(best['trial_id'])}/{TRIAL_RUN}/{CONFIG}"
        best_config = TrainConfig.from_dict(json.loads(store.read_small(where))["config"], source=store.where(where))
    else:
        best_config = TrainConfig.from_dict({**base, **{k: best[k] for k in keys}}, source="the best trial")
    best_config = best_config.replace(data_dir=None, output_dir=None)  # say where on the command line
    seeds = {"seeds": best["seeds"]} if best.get("seeds") else {}  # what it was scored over (train --seeds K)
    store.write(BEST_FILE, (json.dumps({**best_config.to_dict(), **seeds}, indent=2) + "\n").encode())
    return {"best_trial": best["trial_id"], "best_config": best_config.to_dict(),
            "best": {k: best[k] for k in ("val_digit_acc", "val_sum_acc", "val_both_acc", "train_seconds",
                                          "epochs_run", "budget_epochs", "status", *SEED_COLUMNS) if k in best}}


def _write_pareto(trials: list[dict[str, Any]], front: list[dict[str, Any]], keys: list[str], options: SweepOptions,
                  store: Store) -> None:
    """pareto.csv (the non-dominated trials) and pareto.png (every trial on the first two metrics, the front drawn)."""
    from ..rundir.plots import plot_pareto

    spread = [f"{m}_std" for m in options.metric if (options.seeds or 1) > 1 and f"{m}_std" in SEED_COLUMNS]
    columns = ["trial_id", *keys, *options.metric, *spread, "status", "epochs_run", "budget_epochs"]
    store.write(PARETO_CSV, _csv(front, list(dict.fromkeys(columns))))
    store.write(PARETO_PLOT, plot_pareto(trials, front, options.metric[:2], options.name or ""))


def _print_table(console: Any, ranked: list[dict[str, Any]], keys: list[str], options: SweepOptions) -> None:
    from rich.table import Table

    seeds = (options.seeds or 1) > 1  # the mean over each trial's seeds, its spread and the worst seed
    table = Table(title=f"Top trials by {options.primary} (validation{f', mean of {options.seeds} seeds' if seeds else ''}"
                        "; the test set is not used)")
    worst = ("both ± std", "worst both") if seeds else ()
    for col in ("#", "trial", *keys, "epochs run/own", "val digit", "val sum", "val both", *worst, "status"):
        table.add_column(col, justify="left" if col in ("trial", "status") else "right")
    for i, t in enumerate(ranked[:options.top], 1):
        spread = (f"± {100 * t['val_both_acc_std']:.2f}", f"{100 * t['val_both_acc_min']:.2f}%") \
            if seeds and t.get("val_both_acc_std") is not None else ("-", "-") if seeds else ()
        table.add_row(str(i), t["trial_id"], *(f"{t[k]:.3g}" if isinstance(t[k], float) else str(t[k]) for k in keys),
                      f"{t['epochs_run']}/{t['budget_epochs']}",
                      *(f"{100 * t[k]:.2f}%" for k in ("val_digit_acc", "val_sum_acc", "val_both_acc")), *spread,
                      t["status"])
    console.print(table)
