"""Pictures of a run. matplotlib is imported lazily and always headless (Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_examples(images: "torch.Tensor", numbers, digits, sums, digit_pred, sum_pred, path: Path, title: str,
                  columns: int = 8) -> None:
    """A grid of test images with the number, the predictions and the truth; mistakes in red."""
    plt = pyplot()
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.35, rows * 1.6), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        wrong = int(digit_pred[k]) != int(digits[k]) or int(sum_pred[k]) != int(sums[k])
        ax.imshow(images[k].reshape(28, 28).numpy(), cmap="gray", vmin=0, vmax=1)
        label = f"{int(digit_pred[k])} + {int(numbers[k])} = {int(sum_pred[k])}"
        if wrong:
            label += f"\ntrue {int(digits[k])} + {int(numbers[k])} = {int(sums[k])}"
        ax.set_title(label, fontsize=8, color="crimson" if wrong else "black")
        if wrong:
            for spine in ax.spines.values():
                spine.set(visible=True, color="crimson", linewidth=2)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
