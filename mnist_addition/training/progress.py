"""The training progress bar (rich), drawn on the main process only."""

from __future__ import annotations

from typing import Any


class Progress:
    """A rich epoch/step bar with loss and throughput, or nothing (non-main processes, tests)."""

    def __init__(self, enabled: bool, epochs: int, steps: int) -> None:
        self.enabled, self.epochs, self.steps = enabled, epochs, steps
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                                     TextColumn("{task.fields[speed]:,.0f} img/s"), TimeElapsedColumn(), transient=False)
            self.task = None

    def __enter__(self) -> "Progress":
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.progress.stop()

    def start_epoch(self, epoch: int, first_step: int = 0) -> None:
        if self.enabled:
            self.task = self.progress.add_task("train", total=self.steps, completed=first_step, epoch=epoch,
                                               epochs=self.epochs, loss=float("nan"), speed=0.0)

    def update(self, step: int, loss: float, speed: float) -> None:
        if self.enabled:
            self.progress.update(self.task, completed=step, loss=loss, speed=speed)
