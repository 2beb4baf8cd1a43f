"""Which device trains, at which precision, and how reproducibly. Pure torch, no Accelerate.

* The CPU is used when asked for (``--cpu``, or ``ACCELERATE_USE_CPU=1`` as ``accelerate launch``
  sets it for ``use_cpu: true``) or when there is no GPU.
* ``--mixed-precision auto`` picks bf16 only where the hardware runs it natively.
* ``numerics(...)`` sets the process-wide switches for one run and restores them afterwards:
  TF32 matmuls and convolutions on GPUs, cuDNN autotuning, and deterministic kernels when asked.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

# cuBLAS needs a fixed workspace to give the same sums twice; read when its handle is created.
CUBLAS_WORKSPACE = ":4096:8"


def env_flag(name: str) -> bool:
    """A boolean environment variable as Accelerate writes it ("True", "1", "yes"...)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "y", "on")


def use_cpu(requested: bool = False) -> bool:
    """Train on the CPU: asked for by flag or by ``accelerate launch`` (use_cpu), or no GPU here."""
    return requested or env_flag("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def native_bf16(cuda: bool) -> bool:
    """True where bf16 runs in hardware: Ampere+ GPUs, CPUs with AMX or AVX512-BF16 (not emulated)."""
    if cuda:
        # including_emulation=False: a T4 or V100 "supports" bf16 only by emulating it, slowly
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
                or getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def resolve_mixed_precision(requested: str, cuda: bool) -> str:
    """'auto' -> 'bf16' where the hardware has native bf16, else 'no'; anything else as given."""
    if requested != "auto":
        return requested
    return "bf16" if native_bf16(cuda) else "no"


def set_deterministic_env() -> None:
    """Before CUDA starts (or at least before cuBLAS does): what deterministic cuBLAS needs."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


@contextlib.contextmanager
def numerics(cuda: bool, deterministic: bool) -> Iterator[dict[str, str]]:
    """Set TF32, cuDNN autotuning and deterministic kernels for one run; yield what was chosen.

    On a GPU, float32 matmuls and convolutions use TF32 (10-bit mantissa products, fp32 sums), the
    usual choice for training; cuDNN autotunes its algorithms unless ``deterministic``. The CPU's
    kernels are deterministic already: there ``deterministic`` only makes that explicit.
    """
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    if deterministic:
        set_deterministic_env()
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = cuda and not deterministic
    if cuda:
        torch.set_float32_matmul_precision("high")  # TF32
        torch.backends.cudnn.allow_tf32 = True
    try:
        yield {"matmul_precision": "tf32" if cuda else "fp32"}
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark = saved[1]
        torch.set_float32_matmul_precision(saved[2])
        torch.backends.cudnn.allow_tf32 = saved[3]


def free_memory(device: torch.device) -> int:
    """Bytes free for tensors on ``device`` (for a GPU: free device memory; for the CPU: available RAM)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def is_out_of_memory(error: BaseException) -> bool:
    """A failed allocation, on a GPU (OutOfMemoryError) or the CPU (the allocator's RuntimeError)."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or \
        (isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def fused_optimizer(device: torch.device) -> bool:
    """Fused AdamW/SGD kernels: one launch for all parameters. Used on GPUs; on the CPU the
    default (foreach) kernels are kept, so CPU results stay what they were."""
    return device.type == "cuda"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (before reading a clock); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
