"""Export a trained model to ONNX (dynamic batch axis) and prove it computes what torch computes.

onnxruntime sessions over the written files are in ``raymotion.export.sessions`` (no torch).
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

from raymotion.export.sessions import (DEFAULT_OFFLINE_LEVEL, INPUT_NAME, OFFLINE_LEVELS, OUTPUT_NAME, create_session,
                                       onnx_probabilities, strip_debug_info)
from raymotion.train.metrics import softmax

log = logging.getLogger(__name__)

OPSET = 18
# Export acceptance: probabilities of torch and onnxruntime agree within this on real images.
PARITY_TOLERANCE = 1e-4


def export_onnx(model: nn.Module, path: str, input_size: int) -> str:
    """Write ``path`` (one self-contained file, debug records stripped) and return the exporter used
    ("dynamo" or "torchscript")."""
    model = model.eval()
    example = (torch.zeros(2, 3, input_size, input_size),)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, example, path, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=OPSET, dynamo=True, external_data=False,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            )
        strip_debug_info(path)
        return "dynamo"
    except Exception as err:  # some architectures only trace with the older exporter
        log.warning("dynamo ONNX export failed (%s); falling back to the TorchScript exporter", err)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, example, path, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=OPSET, dynamo=False, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        strip_debug_info(path)
        return "torchscript"


class ParityError(AssertionError):
    """An exported / optimised file does not compute what the torch model computes."""


def optimize_onnx(src: str, dst: str, level: str = DEFAULT_OFFLINE_LEVEL) -> str:
    """Write onnxruntime's offline-optimised graph of ``src`` to ``dst`` (``level``: basic or extended)."""
    if level not in OFFLINE_LEVELS:
        raise ValueError(f"offline optimisation level {level!r}: use one of {sorted(OFFLINE_LEVELS)} "
                         "(\"all\" writes a hardware-specific file)")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("optimize_onnx needs a destination different from its source")
    options = ort.SessionOptions()
    options.graph_optimization_level = OFFLINE_LEVELS[level]
    options.optimized_model_filepath = dst
    options.log_severity_level = 3
    # Creating the session writes the file; the CPU provider alone so that no GPU-only node lands in it.
    ort.InferenceSession(src, sess_options=options, providers=["CPUExecutionProvider"])
    return dst


def export_optimized(model: nn.Module, path: str, input_size: int, check_images: np.ndarray, *,
                     level: str | None = DEFAULT_OFFLINE_LEVEL, tolerance: float = PARITY_TOLERANCE) -> dict:
    """Export ``model`` to ``path`` (optimised offline unless ``level`` is None) and check, on
    ``check_images`` (normalized float32 NCHW, real images), that the written file agrees with torch.

    Returns {"exporter", "optimization", "parity_max_abs_diff"}; raises ParityError beyond ``tolerance``.
    """
    raw = path if level is None else path + ".raw.onnx"
    exporter = export_onnx(model, raw, input_size)
    try:
        if level is not None:
            optimize_onnx(raw, path, level)
    finally:
        if raw != path and os.path.exists(raw):
            os.remove(raw)
    diff = parity_max_abs_diff(model, create_session(path), check_images)
    if not diff <= tolerance:
        raise ParityError(f"{path}: ONNX and torch probabilities differ by {diff:.2e} > {tolerance:.0e}")
    return {"exporter": exporter, "optimization": level or "none", "parity_max_abs_diff": diff}


@torch.no_grad()
def torch_probabilities(model: nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return softmax(torch.cat(out).double().numpy())


def parity_max_abs_diff(model: nn.Module, session: ort.InferenceSession, images: np.ndarray) -> float:
    """Max |p_torch - p_onnx| over the images and classes."""
    return float(np.abs(torch_probabilities(model, images) - onnx_probabilities(session, images)).max())
