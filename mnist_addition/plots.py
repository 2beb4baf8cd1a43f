"""Pictures of a run. matplotlib is imported lazily and always headless (Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "", label_smoothing: float = 0.0) -> None:
    """Training loss and validation accuracy (digit, sum) per epoch: the plot the seed shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    # the training loss includes label smoothing (it cannot reach 0); validation loss does not
    train_label = f"train (label smoothing {label_smoothing:g})" if label_smoothing else "train"
    ax_loss.plot(epochs, [row["train_loss"] for row in history], "o-", label=train_label)
    ax_loss.plot(epochs, [row["val_loss"] for row in history], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss", yscale="log")
    ax_loss.legend()
    for key, label, marker in (("val_digit_acc", "digit", "o-"), ("val_sum_acc", "sum", "s-")):
        ax_acc.plot(epochs, [100 * row[key] for row in history], marker, label=label)
    ax_acc.axhline(99.27, color="grey", ls="--", lw=1, label="seed net, 25 epochs")
    low = min(100 * min(row["val_digit_acc"], row["val_sum_acc"]) for row in history)
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Accuracy", ylim=(max(low - 0.5, 0), 100))
    ax_acc.legend(loc="lower right")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if len(epochs) < 12:
            ax.set_xticks(epochs)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
