"""Where a run's training starts: from scratch, from the newest usable checkpoint of its own
(``start_state``), or from the epoch-end checkpoint of another run it continues (``Continuation``,
what population-based training's exploit is); a checkpoint must fit the run (``check_fits``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

from ..core import hparams
from ..core.config import ConfigError
from ..rundir import checkpoint
from .state import Run, TrainState


class Continuation(NamedTuple):
    """Where a run that continues another run starts (``fit(continue_from=...)``; what PBT's exploit is)."""

    checkpoint: Path  # an epoch-end checkpoint of the run continued: the same model, batch and data
    source: str | None  # whose weights they are, as the first row trained after them says (``weights_from``);


def start_state(run: Run, resume: bool, warn: Callable[[str], None],
                continue_from: Continuation | None = None) -> TrainState:
    """From scratch, from the newest usable checkpoint (model and optimizer restored too), or from
    the checkpoint of another run this one continues."""
    say = warn if run.main else (lambda _: None)
    if continue_from is not None:
        return continued_state(run, continue_from, say)
    if not resume:
        return TrainState(run.steps)

    def accept(path: Path, saved: dict[str, Any]) -> None:  # raises CheckpointError: try the one before
        check_fits(run, path, saved)
        checkpoint.load_training_state(path, run.accelerator.unwrap_model(run.model), run.optimizer)
        if run.average is not None and not checkpoint.load_average(path, run.average):
            raise checkpoint.CheckpointError(f"checkpoint {path} has no {checkpoint.EMA_FILE}, the moving average "
                                             "of the weights that --ema keeps: it was written by another run")

    path, saved = checkpoint.latest_valid(run.run_dir, warn=say, accept=accept)
    if saved["world"] != run.world:
        say(f"note: resuming a {saved['world']}-process run on {run.world} processes; "
            "the global batch is unchanged, so the maths is the same")
    state = TrainState.from_saved(saved, run.steps, run.world)
    if state.step == run.steps:  # the checkpoint closed an epoch
        state.next_epoch()
    say(f"resuming from {path.name}: epoch {state.epoch}, step {state.step}/{run.steps}")
    return state


def continued_state(run: Run, start: Continuation, say: Callable[[str], None]) -> TrainState:
    """Continue another run from the end of one of its epochs with this config's later values.

    Not a resume (which refuses any change of the run's maths): the config may differ from the
    continued run's in its scheduled values from the next epoch on (``hparams``), and must agree
    with what that run held up to the checkpoint, so that the config replays the weights' whole
    history from scratch. The first row trained after it names ``start.source``.
    """
    path, error = Path(start.checkpoint), checkpoint.CheckpointError
    saved = checkpoint.read_state(path)
    check_fits(run, path, saved)
    if saved["step"] != run.steps:
        raise error(f"checkpoint {path} is in the middle of epoch {saved['epoch']}: a run continues another from "
                    "the end of an epoch; use that run's epoch-end checkpoint")
    problem = hparams.disagreement(run.config, saved["schedule"], saved["epoch"])
    if problem:
        raise ConfigError(f"cannot continue from {path}: {problem}; a continued run's config keeps the past of the "
                          "run it continues (hparams.continued builds it)")
    checkpoint.load_training_state(path, run.accelerator.unwrap_model(run.model), run.optimizer)
    if run.average is not None and not checkpoint.load_average(path, run.average):
        run.average.reset()  # the continued run kept no average: this one starts it from the copied weights
    state = TrainState.from_saved(saved, run.steps, run.world)
    state.next_epoch()
    if start.source is not None:
        run.weights_from = f"{start.source} (epoch {saved['epoch']}, step {saved['global_step']})"
        say(f"continuing {run.weights_from} with {hparams.values_at(run.config, state.epoch)}")
    return state


def check_fits(run: Run, path: Path, saved: dict[str, Any]) -> None:
    """A checkpoint's trainer state must be a point of this run (config.json): model, position,
    images seen, one history row per finished epoch."""
    config, error = run.config, checkpoint.CheckpointError
    if (saved["preset"], saved["width"]) != (config.preset, config.width):
        raise error(f"checkpoint {path} was written by preset {saved['preset']!r} width {saved['width']}, but "
                    f"config.json says {config.preset!r} width {config.width}: the checkpoint belongs to another run")
    if not (1 <= saved["epoch"] <= config.epochs and 0 <= saved["step"] <= run.steps
            and saved["global_step"] == TrainState.from_saved(saved, run.steps, saved["world"]).global_step):
        raise error(f"checkpoint {path} (epoch {saved['epoch']}, step {saved['step']}) does not fit config.json "
                    f"({config.epochs} epochs of {run.steps} steps): the batch size, data limits or epochs were edited since")
    finished = saved["epoch"] - (saved["step"] < run.steps)
    if len(saved["history"]) != finished:
        raise error(f"checkpoint {path} holds {len(saved['history'])} epochs of history "
                    f"at epoch {saved['epoch']} step {saved['step']}: it was altered")
    if saved["samples_per_process"] * saved["world"] != saved["global_step"] * config.batch_size or \
            config.batch_size % saved["world"]:
        raise error(f"checkpoint {path} counts {saved['samples_per_process']} images per process on {saved['world']} "
                    f"processes after {saved['global_step']} steps of {config.batch_size}: it was altered")
