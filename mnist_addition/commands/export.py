"""Export a run's model to ONNX: two inputs (image batch, number batch), dynamic batch size.

Needs the ``onnx`` extra (``pip install -e ".[onnx]"``): onnx and onnxscript for torch's exporter,
onnxruntime to check the file.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch

from ..core.errors import shown
from ..rundir.contents import RunError, check_output_file, load_run, read_run_config, replace_file, run_files

FORMATS = ("onnx",)


def export(run_dir: str | os.PathLike, format: str = "onnx", output: str | os.PathLike | None = None,
           overwrite: bool = False, tta: int | None = None) -> Path:
    """``mnist-addition export``: the run's model in ``format`` at ``output`` (default
    RUN_DIR/model.FORMAT), never over a file of the run; an existing file only with ``overwrite``;
    ``tta``: the graph scores that many test-time views instead of the run's own."""
    import contextlib
    import io

    if format not in FORMATS:
        raise RunError(f"unknown export format {shown(format)}: use --format {' or '.join(FORMATS)}")
    read_run_config(run_dir)  # a missing or broken run is said as such, before anything about --output
    own = Path(run_dir) / f"model.{format}"
    path = check_output_file(Path(output) if output else own, overwrite, "--output", protected=run_files(Path(run_dir)),
                             own=own)
    with contextlib.redirect_stdout(io.StringIO()):  # torch's exporter narrates every stage
        return export_onnx(run_dir, path, tta)


def export_onnx(run_dir: str | os.PathLike, output: str | os.PathLike, tta: int | None = None) -> Path:
    """Write ``output`` (weights inside the file, no side .data file) and return its path."""
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise RunError(f"ONNX export needs {' and '.join(missing)}: pip install -e \".[onnx]\"")
    model = load_run(run_dir, tta=tta).model
    output = Path(output)
    images, numbers = torch.zeros(2, 1, 28, 28), torch.tensor([3, 7])
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():  # "axis name batch will not be used": both inputs share it, as meant
        warnings.simplefilter("ignore", UserWarning)
        program = torch.onnx.export(
            model, (images, numbers), dynamo=True, verbose=False,
            input_names=["image", "number"], output_names=["digit_logits", "sum_logits"],
            dynamic_shapes={"images": {0: batch}, "numbers": {0: batch}})
    replace_file(output, lambda tmp: program.save(str(tmp), external_data=False), "--output")
    return output
