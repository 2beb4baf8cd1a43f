"""One optimizer step, eager or compiled: the optimizer, the learning rate as a function of the
step, the (maybe compiled) forward-and-loss, its warm-up, and ``train_step`` itself."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from ..core import hparams
from ..core.backends import fused_optimizer, synchronize
from ..core.config import TrainConfig
from ..core.metrics import loss_fn
from ..core.model import param_groups
from .state import Run


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW or SGD over ``param_groups``; fused kernels where the device has them."""
    groups = param_groups(model, config.weight_decay)
    fused = {"fused": True} if fused_optimizer(device) else {}
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, **fused)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999), **fused)


def lr_schedule(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The learning rate of (0-based) global step ``step``: a pure function, nothing to checkpoint.

    'onecycle' is torch's OneCycleLR (cosine, two phases, div_factor 25, final_div_factor 1e3),
    written out so that it is the same floats step for step; 'constant' is ``config.lr``, or each
    epoch's value of ``config.hparam_schedule``.
    """
    peak = config.lr
    if config.schedule == "constant":
        if not any("lr" in change for change in config.hparam_schedule):
            return lambda step: peak
        per_epoch = hparams.per_epoch(config, "lr")
        steps = total_steps // config.epochs
        return lambda step: per_epoch[min(step // steps, config.epochs - 1)]
    initial = peak / 25.0
    final = initial / 1e3
    warm_end = float(config.warmup * total_steps) - 1  # the step at which the peak is reached

    def lr(step: int) -> float:
        start, end, lo, hi = (initial, peak, 0.0, warm_end) if step <= warm_end else \
            (peak, final, warm_end, total_steps - 1)
        pct = (step - lo) / (hi - lo) if hi != lo else 1.0
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    return lr


def cuda_graphs(config: TrainConfig, device: torch.device, world: int) -> bool:
    """Whether --compile replays the step as CUDA graphs (see ``make_loss_of``)."""
    return config.compile and device.type == "cuda" and world == 1 and config.gradient_accumulation_steps == 1


def make_loss_of(model: torch.nn.Module, config: TrainConfig, device: torch.device, world: int,
                 held: dict[str, float]) -> Callable[..., torch.Tensor]:
    """The forward pass and loss of one (micro-)batch, weighted by the values ``held`` in the epoch
    (``Run.hparams``: a schedule changes them in place; compiled code recompiles once when they
    change); with ``--compile``, compiled (its backward with it). The function is compiled, not the module: the model's state_dict keys, and so
    checkpoints and model.safetensors, are the same with and without --compile.

    On one GPU without accumulation, mode 'reduce-overhead' replays forward, loss and backward as
    CUDA graphs: one launch instead of dozens, which is most of a small model's step. Gradients
    accumulated over micro-batches or all-reduced by DDP would alias the graphs' static outputs,
    so those cases compile without CUDA graphs.
    """
    def loss_of(images, numbers, digits, sums):  # (B, 1, 28, 28), (B,), (B,), (B,) -> ()
        digit_logits, sum_logits = model(images, numbers)
        return loss_fn(digit_logits, sum_logits, digits, sums, held["sum_weight"], held["label_smoothing"])

    if not config.compile:
        return loss_of
    graphs = cuda_graphs(config, device, world)
    compiled = torch.compile(loss_of, mode="reduce-overhead" if graphs else None, dynamic=False)
    if not graphs:
        return compiled

    def graphed_loss_of(*batch: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # a new step: the last step's outputs are done with
        return compiled(*batch)

    return graphed_loss_of


def hold(run: Run, epoch: int) -> None:
    """The scheduled values of ``epoch`` (``hparams.values_at``) take effect: the loss weights read
    ``run.hparams``, the decayed parameters (``model.param_groups``' first group) get the weight decay;
    the learning rate is ``run.lr_at``'s."""
    run.hparams.update(hparams.values_at(run.config, epoch))
    run.optimizer.param_groups[0]["weight_decay"] = run.hparams["weight_decay"]


def warm_up(run: Run) -> float:
    """Compile (and record the CUDA graphs of) the step before the clock starts; returns its seconds.

    Three forward/backward passes on the first training images: dynamo compiles on the first, CUDA
    graph trees warm up and record on the next ones. Nothing is stepped, and the model's weights and
    BatchNorm statistics are put back afterwards, so the run trains exactly as it would have.
    """
    if not run.config.compile:
        return 0.0
    start = time.perf_counter()
    saved = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    n = run.config.batch_size // run.world // run.config.gradient_accumulation_steps
    images, digits = run.train.images[:n], run.train.digits[:n]
    numbers = torch.zeros_like(digits)
    run.model.train()
    for _ in range(3):
        run.accelerator.backward(run.loss_of(images, numbers, digits, digits))
        run.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        run.model.load_state_dict(saved)  # in place: the graphs' parameter addresses stay valid
    synchronize(run.accelerator.device)
    return time.perf_counter() - start


def train_step(run: Run, images: torch.Tensor, numbers: torch.Tensor, digits: torch.Tensor, sums: torch.Tensor,
               lr: float) -> torch.Tensor:
    """One optimizer step on one global batch's shard (in ``micro`` accumulation chunks); returns
    the batch's mean loss as a tensor on the device (no sync)."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    micro = run.config.gradient_accumulation_steps
    if micro == 1:  # the common case, without Accelerate's accumulation bookkeeping
        loss = run.loss_of(images, numbers, digits, sums)
        run.accelerator.backward(loss)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    total = torch.zeros((), device=digits.device)
    for chunk in range(micro):  # micro-batches of one global batch
        part = slice(chunk * len(digits) // micro, (chunk + 1) * len(digits) // micro)
        with run.accelerator.accumulate(run.model):
            loss = run.loss_of(images[part], numbers[part], digits[part], sums[part])
            run.accelerator.backward(loss)
            run.optimizer.step()  # a no-op until the last chunk
            run.optimizer.zero_grad(set_to_none=True)
        total += loss.detach() / micro
    return total
