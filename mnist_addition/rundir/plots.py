"""Pictures of a run. matplotlib is imported lazily and always headless (Agg)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def save(fig: Any, path: Path, dpi: int) -> None:
    """Render ``fig`` and write it as ``files`` writes everything (a link at ``path`` is replaced)."""
    from .files import write_bytes

    write_bytes(path, png_bytes(fig, dpi))


def png_bytes(fig: Any, dpi: int) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(fig)
    return buffer.getvalue()


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "", label_smoothing: float = 0.0) -> None:
    """Training loss and validation accuracy (digit, sum) per epoch: the plot the seed shows."""
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    # the training loss includes label smoothing (it cannot reach 0); validation loss does not
    train_label = f"train (label smoothing {label_smoothing:g})" if label_smoothing else "train"
    ax_loss.plot(epochs, [row["train_loss"] for row in history], "o-", label=train_label)
    validated = "val_loss" in history[0]  # not in a --val-size 0 refit
    if validated:
        ax_loss.plot(epochs, [row["val_loss"] for row in history], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss", yscale="log")
    ax_loss.legend()
    if validated:
        for key, label, marker in (("val_digit_acc", "digit", "o-"), ("val_sum_acc", "sum", "s-")):
            ax_acc.plot(epochs, [100 * row[key] for row in history], marker, label=label)
        low = min(100 * min(row["val_digit_acc"], row["val_sum_acc"]) for row in history)
    else:
        ax_acc.text(0.5, 0.5, "no validation split (--val-size 0)", ha="center", va="center",
                    transform=ax_acc.transAxes)
        low = 99.27
    ax_acc.axhline(99.27, color="grey", ls="--", lw=1, label="seed net, 25 epochs")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Accuracy", ylim=(max(low - 0.5, 0), 100))
    ax_acc.legend(loc="lower right")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if len(epochs) < 12:
            ax.set_xticks(epochs)
    if title:
        fig.suptitle(title)
    save(fig, path, dpi=120)


def plot_confusion(truth: "torch.Tensor", pred: "torch.Tensor", classes: int, path: Path, title: str) -> None:
    """Row-normalised confusion matrix with counts in the off-diagonal cells that are not zero."""
    import torch

    plt = pyplot()
    counts = torch.zeros(classes, classes, dtype=torch.long)
    counts.index_put_((truth.long(), pred.long()), torch.ones_like(truth, dtype=torch.long), accumulate=True)
    share = counts.float() / counts.sum(1, keepdim=True).clamp(min=1)
    size = 5 if classes <= 10 else 8
    fig, ax = plt.subplots(figsize=(size + 1, size), constrained_layout=True)
    # log-ish colour scale: the diagonal is ~99%, the interesting cells are the few mistakes
    image = ax.imshow(share.sqrt().numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(classes):
        for j in range(classes):
            n = int(counts[i, j])
            if n and i != j:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=7 if classes > 10 else 9, color="crimson")
    ax.set(xticks=range(classes), yticks=range(classes), xlabel="predicted", ylabel="true",
           title=f"{title}: {int(counts.trace())}/{int(counts.sum())} right; red = mistakes")
    fig.colorbar(image, ax=ax, shrink=0.8, label="sqrt(share of row)")
    save(fig, path, dpi=110)


def plot_examples(images: "torch.Tensor", numbers, digits, sums, digit_pred, sum_pred, path: Path, title: str,
                  columns: int = 8) -> None:
    """A grid of test images with the number, the predictions and the truth; mistakes framed in red.

    One image of all the digits on one axes, not an axes per digit: drawn in a tenth of the time
    (it is drawn at the end of every run)."""
    import numpy as np
    from matplotlib.patches import Rectangle

    plt = pyplot()
    n = len(images)
    rows = max(1, -(-n // columns))
    cell_w, cell_h = 34, 48  # pixels of the mosaic per digit: 28 + a margin, + room for two lines of text
    mosaic = np.ones((rows * cell_h, columns * cell_w))  # white paper
    fig = plt.figure(figsize=(columns * 1.35, rows * 1.6 + 0.4))
    ax = fig.add_axes((0.0, 0.0, 1.0, rows * 1.6 / (rows * 1.6 + 0.4)))
    for k in range(n):
        top, left = (k // columns) * cell_h + cell_h - 31, (k % columns) * cell_w + 3
        mosaic[top:top + 28, left:left + 28] = images[k].reshape(28, 28).numpy()
        wrong = int(digit_pred[k]) != int(digits[k]) or int(sum_pred[k]) != int(sums[k])
        label = f"{int(digit_pred[k])} + {int(numbers[k])} = {int(sum_pred[k])}"
        if wrong:
            label += f"\ntrue {int(digits[k])} + {int(numbers[k])} = {int(sums[k])}"
            ax.add_patch(Rectangle((left - 1.5, top - 1.5), 30, 30, fill=False, edgecolor="crimson", linewidth=2))
        ax.text(left + 14, top - 3, label, ha="center", va="bottom", fontsize=8, color="crimson" if wrong else "black")
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    fig.suptitle(title)
    save(fig, path, dpi=110)


def plot_sweep(trials: list[dict[str, Any]], keys: list[str], metric: str, epochs: int) -> bytes:
    """A sweep as PNG bytes. Left: each trial's final score against lr (or the first searched
    number), coloured by width (or the first choice); right: every trial's score per epoch, showing
    where ASHA stopped it. ``trials`` are the rows of trials.csv plus each trial's ``curve``."""
    plt = pyplot()
    numeric = [k for k in keys if all(isinstance(t[k], (int, float)) for t in trials)]
    x_key = "lr" if "lr" in keys else (numeric[0] if numeric else None)
    colour_key = "width" if "width" in keys else next((k for k in keys if k != x_key), None)
    shown = [t for t in trials if isinstance(t[metric], (int, float)) and math.isfinite(t[metric])]
    colours = sorted({t[colour_key] for t in shown}, key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0, str(v))) \
        if colour_key else [None]
    cmap = plt.get_cmap("viridis", max(len(colours), 2))
    fig, (ax, curves) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, c in enumerate(colours):
        group = [t for t in shown if colour_key is None or t[colour_key] == c]
        for finished, marker in ((True, "o"), (False, "x")):
            pts = [t for t in group if (t["status"] == "finished") == finished]
            if pts and x_key:
                ax.scatter([t[x_key] for t in pts], [100 * t[metric] for t in pts], color=cmap(i), marker=marker,
                           s=60, label=f"{colour_key}={c}" + ("" if finished else " (stopped)") if colour_key else None)
                spread = [t for t in pts if _spread(t, metric) is not None]  # a K-seed trial: mean ± std
                if spread:
                    ax.errorbar([t[x_key] for t in spread], [100 * t[metric] for t in spread],
                                yerr=[100 * _spread(t, metric) for t in spread], fmt="none", ecolor=cmap(i),
                                alpha=0.6, capsize=3)
        for t in group:
            if t["curve"]:
                curves.plot([r["epoch"] for r in t["curve"]], [100 * r[metric] for r in t["curve"]],
                            color=cmap(i), marker="o", ms=3, alpha=0.8)
    if x_key == "lr" or (x_key and all(t[x_key] > 0 for t in shown) and
                         max(t[x_key] for t in shown) / max(min(t[x_key] for t in shown), 1e-12) > 20):
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")  # plain numbers at 1, 2 and 5 x 10^k
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.set_xlabel(x_key or "")
    ax.set_ylabel(f"{metric} at the last epoch run (%)")
    ax.set_title("final score per trial")
    if colour_key:
        ax.legend(fontsize=8)
    curves.set_xlabel("epoch")
    curves.set_ylabel(f"{metric} (%)")
    curves.set_xlim(0.8, epochs + 0.2)
    curves.set_title("per epoch (lines end where the scheduler stopped a trial)")
    values = [100 * t[metric] for t in shown]
    if values and metric != "val_loss":
        top = max(values)
        for axis in (ax, curves):
            axis.set_ylim(max(min(values) - 0.5, top - 10), min(top + 0.3, 100.05))
    for axis in (ax, curves):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig, dpi=110)


def plot_compare(runs: list[tuple[str, list[dict[str, Any]]]], path: Path) -> None:
    """Every run's validation digit and sum accuracy per epoch, one colour per run (``compare``)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True, sharey=True)
    for (name, history), colour in zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10):
        rows = [r for r in history if isinstance(r.get("epoch"), (int, float))]
        for ax, key in zip(axes, ("val_digit_acc", "val_sum_acc")):
            points = [(r["epoch"], 100 * r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), marker="o", color=colour, label=name)
    for ax, what in zip(axes, ("digit", "sum")):
        ax.set(title=f"validation {what} accuracy", xlabel="epoch", ylabel="%")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    path.write_bytes(png_bytes(fig, 110))


def _spread(trial: dict[str, Any], metric: str) -> float | None:
    """A K-seed trial's standard deviation of ``metric`` over its seeds (None: one seed, or none)."""
    value = trial.get(f"{metric}_std")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def plot_pareto(trials: list[dict[str, Any]], front: list[dict[str, Any]], metrics: tuple[str, ...], name: str) -> bytes:
    """Every trial on two metrics (finished: dots, stopped early: crosses), the front as a step line."""
    plt = pyplot()
    x_key, y_key = metrics[1], metrics[0]  # the cost across, the accuracy up (as the metrics are given)

    def shown(value: float, key: str) -> float:  # accuracies (a worst seed's too) in %
        return 100 * value if key.endswith(("_acc", "_acc_min")) else value

    def label(key: str) -> str:
        return f"{key} (%)" if key.endswith(("_acc", "_acc_min")) else \
            f"{key} (s)" if key.endswith(("seconds", "seconds_max")) else key

    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    points = [t for t in trials if all(isinstance(t.get(k), (int, float)) and math.isfinite(t[k]) for k in metrics)]
    for finished, marker, what in ((True, "o", "finished"), (False, "x", "stopped early")):
        group = [t for t in points if (t["status"] == "finished") == finished]
        if group:
            ax.scatter([shown(t[x_key], x_key) for t in group], [shown(t[y_key], y_key) for t in group],
                       marker=marker, s=40, color="tab:blue" if finished else "tab:gray", label=f"trials ({what})")
            spread = [t for t in group if _spread(t, x_key) is not None or _spread(t, y_key) is not None]
            if spread:  # K-seed trials: mean ± std of each metric that has one (not the worst seed's)
                ax.errorbar([shown(t[x_key], x_key) for t in spread], [shown(t[y_key], y_key) for t in spread],
                            xerr=[shown(_spread(t, x_key) or 0.0, x_key) for t in spread],
                            yerr=[shown(_spread(t, y_key) or 0.0, y_key) for t in spread], fmt="none",
                            ecolor="tab:blue" if finished else "tab:gray", alpha=0.5, capsize=2)
    line = sorted(front, key=lambda t: t[x_key])
    ax.step([shown(t[x_key], x_key) for t in line], [shown(t[y_key], y_key) for t in line], where="post",
            color="tab:red", marker="o", ms=7, mfc="none", label="Pareto front")
    ax.set(xlabel=label(x_key), ylabel=label(y_key), title=f"sweep {name}\n{y_key} against {x_key}".strip())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_bytes(fig, 110)
