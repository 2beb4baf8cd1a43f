"""What the command line prints (rich): training's lines, a run's results, predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from ..core.errors import shown


def start_line(config: Any, resume: bool, processes: int) -> str:
    """``train``'s first line: what trains, where to."""
    return (f"[bold]{'resuming' if resume else 'training'}[/] preset={config.preset} width={config.width} "
            f"epochs={config.epochs} batch={config.batch_size} lr={config.lr:g} seed={config.seed} "
            f"processes={processes} -> {config.output_dir}")


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """One line per epoch of ``train``: loss, validation accuracies, speed."""
    val = (f"val digit {100 * row['val_digit_acc']:.2f}%  sum {100 * row['val_sum_acc']:.2f}%"
           if "val_digit_acc" in row else "no validation (--val-size 0)")
    if "val_both_acc_std" in row:  # K seeds: the mean, the spread of both right, the worst seed
        val += (f"  both {100 * row['val_both_acc']:.2f} ± {100 * row['val_both_acc_std']:.2f}% (worst "
                f"{100 * row['val_both_acc_min']:.2f}%, mean of {row['seeds']} seeds)")
    return f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f}  {val}  {row['images_per_s']:,.0f} img/s"


def results(final: dict[str, Any], run_dir: str | Path | None) -> list[Any]:
    """What ``train`` and ``evaluate`` print: accuracies and loss per split, then (after training)
    the parameters, training time, speed and precision."""
    table = Table(title="Results" + (f" - {run_dir}" if run_dir else ""))
    table.add_column("split")
    for col in ("digit acc", "sum acc", "both acc", "sum right, digit wrong", "loss", "images"):
        table.add_column(col, justify="right")
    for split in ("val", "test"):
        m = final.get(split)
        if m:
            table.add_row(split, f"{100 * m['digit_acc']:.2f}%", f"{100 * m['sum_acc']:.2f}%",
                          f"{100 * m['both_acc']:.2f}%", str(m["sum_right_digit_wrong"]), f"{m['loss']:.4f}",
                          f"{m['n']:,}")
    if "params" not in final:
        return [table]
    return [table, f"{final['params']:,} parameters, {final['train_seconds']:.1f} s of training "
                   f"({final['images_per_s']:,.0f} img/s, {final['setup']['mixed_precision']} precision)"]


def seeds_table(result: dict[str, Any], parent: str) -> Table:
    """``train --seeds K``: each seed's test (and validation) accuracies, their mean ± std and the worst seed."""
    table = Table(title=f"{len(result['seeds'])} seeds - {parent} (test: the official 10k; val: held out of training)")
    columns = [k for k in ("test_digit_acc", "test_sum_acc", "test_both_acc", "val_both_acc")
               if k in result["runs"][0]]
    for col in ("seed", *(k.replace("_acc", "").replace("_", " ") for k in columns), "train s"):
        table.add_column(col, justify="right")
    for run in result["runs"]:
        table.add_row(str(run["seed"]), *(_pct(run[k]) for k in columns), _seconds(run["train_seconds"]))
    if result["mean"]:
        mean, std, worst = result["mean"], result["std"], result["worst"]
        table.add_row("mean ± std", *(f"{100 * mean[k]:.2f} ± {100 * std[k]:.2f}%" for k in columns),
                      f"{mean['train_seconds']:.1f} ± {std['train_seconds']:.1f}")
        table.add_row("worst seed", *(_pct(worst[k]) for k in columns), _seconds(worst["train_seconds"]))
    return table


def _top(probs: list[float]) -> str:
    """The three likeliest classes, e.g. ``7:98% 1:1% 9:0%``."""
    return " ".join(f"{i}:{100 * p:.0f}%" for p, i in sorted(((p, i) for i, p in enumerate(probs)), reverse=True)[:3])


def predictions_table(rows: list[dict[str, Any]], run_dir: str | Path) -> Table:
    """``predict``'s rows: file, number, digit, sum and each head's three likeliest classes."""
    table = Table(title=f"Predictions - {run_dir}")
    for col in ("file", "number", "digit", "sum", "top digits", "top sums"):
        table.add_column(col, justify="left" if col.startswith(("file", "top")) else "right",
                         no_wrap=col.startswith("top"))
    for r in rows:
        table.add_row(Path(r["file"]).name, str(r["number"]), str(r["digit"]), str(r["sum"]),
                      _top(r["digit_probs"]), _top(r["sum_probs"]))
    return table


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}%" if isinstance(value, (int, float)) else escape(str(value))


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}" if isinstance(value, (int, float)) else escape(str(value))


def _text(value: Any) -> str:
    """A value read from a folder someone else may have written, as plain text (no rich markup)."""
    return "-" if value is None or value == "" else escape(str(value))


def runs_table(rows: list[dict[str, Any]], title: str) -> Table:
    """``mnist-addition runs``: one line per run or sweep."""
    table = Table(title=title)
    for col in ("name", "status", "preset", "width", "epochs", "val digit", "val sum", "test digit", "test sum",
                "train s", "date"):
        table.add_column(col, justify="left" if col in ("name", "status", "preset", "date") else "right")
    for r in rows:
        kind = f" [dim](sweep, {_text(r['trials'])} trials)[/]" if r["kind"] == "sweep" and r.get("trials") else \
            " [dim](sweep)[/]" if r["kind"] == "sweep" else ""
        done = r["epochs"] if r["status"] == "finished" or r["kind"] == "sweep" else f"{r['epochs_done']}/{r['epochs']}"
        table.add_row(_text(r["name"]) + kind, _text(r["status"]), _text(r["preset"]), _text(r["width"]), _text(done),
                      _pct(r["val_digit"]), _pct(r["val_sum"]), _pct(r["test_digit"]), _pct(r["test_sum"]),
                      _seconds(r["train_seconds"]), _text(r["date"])[:16])
    return table


def compare_tables(result: dict[str, Any]) -> list[Any]:
    """``mnist-addition compare``: the config keys that differ, then the final metrics, run by run."""
    out: list[Any] = []
    if result["differ"]:
        config = Table(title="config keys that differ")
        config.add_column("key")
        for name in result["runs"]:
            config.add_column(_text(name), justify="right")
        for key, values in result["differ"].items():
            config.add_row(_text(key), *(_text(shown(json_value(v))) for v in values))
        out.append(config)
    else:
        out.append("the runs' configs are the same (where they are aside)")
    metrics = Table(title="final metrics (validation; test where the run scored it)")
    metrics.add_column("")
    for name in result["runs"]:
        metrics.add_column(_text(name), justify="right")
    rows = result["metrics"]
    metrics.add_row("status", *(_text(r["status"]) for r in rows))
    metrics.add_row("epochs", *(_text(f"{r['epochs_done']}/{r['epochs']}") for r in rows))
    for key in ("val_digit", "val_sum", "test_digit", "test_sum"):
        metrics.add_row(key.replace("_", " "), *(_pct(r[key]) for r in rows))
    metrics.add_row("train seconds", *(_seconds(r["train_seconds"]) for r in rows))
    out.append(metrics)
    if result["picture"]:
        out.append(f"wrote {result['picture']} (validation curves of every run)")
    return out


def json_value(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)
