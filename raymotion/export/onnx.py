"""Export a trained model to ONNX (dynamic batch axis) and prove it computes what torch computes."""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

from raymotion.train.metrics import softmax

log = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Export acceptance: probabilities of torch and onnxruntime agree within this on real images.
PARITY_TOLERANCE = 1e-4


def export_onnx(model: nn.Module, path: str, input_size: int) -> str:
    """Write ``path`` (one self-contained file) and return the exporter used ("dynamo" or "torchscript")."""
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
        return "dynamo"
    except Exception as err:  # some architectures only trace with the older exporter
        log.warning("dynamo ONNX export failed (%s); falling back to the TorchScript exporter", err)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, example, path, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=OPSET, dynamo=False, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        return "torchscript"


def create_session(path: str, *, device: str = "cpu", intra_op_threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime session; ``device="cuda"`` puts CUDA first (CPU stays as the fallback)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(path, sess_options=options, providers=providers)


def onnx_probabilities(session: ort.InferenceSession, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """float32 NCHW (normalized) -> class probabilities."""
    out = [session.run([OUTPUT_NAME], {INPUT_NAME: images[i:i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    return softmax(np.concatenate(out).astype(np.float64))


@torch.no_grad()
def torch_probabilities(model: nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return softmax(torch.cat(out).double().numpy())


def parity_max_abs_diff(model: nn.Module, session: ort.InferenceSession, images: np.ndarray) -> float:
    """Max |p_torch - p_onnx| over the images and classes."""
    return float(np.abs(torch_probabilities(model, images) - onnx_probabilities(session, images)).max())
