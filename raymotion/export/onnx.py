"""Export a trained model to ONNX (dynamic batch axis) and prove it computes what torch computes."""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Callable

import numpy as np
import onnx
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


def strip_debug_info(path: str) -> str:
    """Drop per-node debug records (doc strings, metadata_props) from the ONNX file at ``path``, in place.

    torch's dynamo exporter writes each node's Python stack trace, FX node and module hierarchy into its
    metadata_props, and onnxruntime's quantizer copies them onto its QDQ nodes: 217 KB of MobileNetV2's
    9.1 MB (2.4%), 143 KB of its 2.76 MB int8 file (5%), and absolute source paths of the machine that
    exported it. Nothing reads them at inference time."""
    proto = onnx.load(path)
    for graph in [proto.graph] + [f for f in proto.functions]:
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
    onnx.save(proto, path)
    return path


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


# Offline optimisation levels that are safe to write to disk. "basic" rewrites with standard ONNX ops
# only (constant folding, Conv+BatchNorm / Conv+Add fusion, redundant node removal), so the file still
# runs on any execution provider (CPU, CUDA, TensorRT) and any CPU. "extended" adds com.microsoft fused
# ops (FusedConv, FusedGemm, ...) that only the CPU/CUDA providers implement; "all" would also bake in
# the NCHWc layout of *this* CPU's vector width (onnxruntime warns such files are hardware specific).
# Sessions still apply "all" at load time on whatever machine they run on, so nothing is lost.
OFFLINE_LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
SESSION_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, **OFFLINE_LEVELS,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
DEFAULT_OFFLINE_LEVEL = "basic"
EXECUTION_MODES = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL, "parallel": ort.ExecutionMode.ORT_PARALLEL}


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


def session_options(*, intra_op_threads: int = 0, inter_op_threads: int = 1, graph_optimization: str = "all",
                    enable_mem_arena: bool = True, execution_mode: str = "sequential",
                    allow_spinning: bool = True, stop_spinning_after_run: bool = False) -> ort.SessionOptions:
    """SessionOptions from plain arguments (see ``create_session`` for what the defaults rest on)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = SESSION_LEVELS[graph_optimization]
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.enable_cpu_mem_arena = enable_mem_arena
    options.execution_mode = EXECUTION_MODES[execution_mode]
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    if stop_spinning_after_run:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3
    return options


def session_providers(device: str = "cpu") -> list[str]:
    """Execution providers for ``device`` ("cpu", "cuda", "tensorrt"), best first, CPU always last.

    A provider this onnxruntime build lacks is skipped (so "cuda" on a CPU-only machine runs on CPU).
    """
    if device not in ("cpu", "cuda", "tensorrt"):
        raise ValueError(f"device {device!r}: use cpu, cuda or tensorrt")
    wanted = {"cpu": [], "cuda": ["CUDAExecutionProvider"],
              "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}[device]
    available = set(ort.get_available_providers())
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


def create_session(path: str, *, device: str = "cpu", intra_op_threads: int = 0, inter_op_threads: int = 1,
                   graph_optimization: str = "all", enable_mem_arena: bool = True,
                   execution_mode: str = "sequential", allow_spinning: bool = True,
                   stop_spinning_after_run: bool = False) -> ort.InferenceSession:
    """An onnxruntime session; ``device`` picks CUDA / TensorRT first when present, CPU stays the fallback.

    The defaults are onnxruntime's own, kept because nothing measured better on the 2-core CPU
    (trained MobileNetV2 96 px / LeNet 64 px, batch 1, p50, best of 15 interleaved rounds):
      * ``intra_op_threads=0`` (one per core, here 2) with spinning: MobileNetV2 fp32 0.84 ms vs 1.30 ms
        with 1 thread, int8 0.50 vs 0.67, LeNet fp32 0.31 vs 0.58; batch 32 about 1.7x faster too.
        Without spinning 2 threads lose most of that at batch 1 (1.31 ms). But when other processes
        keep the cores busy, 2 spinning threads were *slower* than 1 (batch 32: 98 vs 47 ms): several
        sessions on one machine (one Serve replica per model) should each get ``intra_op_threads=1``.
      * ``stop_spinning_after_run=True`` (threads spin during a run, not after it): for several
        sessions run one after the other in one process (an in-process ensemble). Each session owns a
        pool whose threads otherwise keep spinning after its run, on the cores the next session needs:
        LeNet + MobileNetV2 in sequence took 1.20 ms instead of 1.43 (fp32), 0.72 instead of 0.94
        (int8), i.e. the sum of the members alone. A session used alone: 0-8% slower, so off by default.
      * memory arena off: no difference (within noise); left on.
      * ``execution_mode="parallel"``: 1.6-7x slower (a chain of convolutions has no parallel branches).
      * ``graph_optimization`` "basic"/"extended" instead of "all": 1.3-14x slower on CPU ("all" adds the
        NCHWc layout kernels; it is applied at load time, so offline files stay portable).
      * IO binding (input bound once, output pre-allocated): no gain on CPU (1.57 vs 1.48 ms, 0.34 vs
        0.34 ms): ``run`` already reads numpy inputs without a copy, so it is not used.
    """
    options = session_options(intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads,
                              graph_optimization=graph_optimization, enable_mem_arena=enable_mem_arena,
                              execution_mode=execution_mode, allow_spinning=allow_spinning,
                              stop_spinning_after_run=stop_spinning_after_run)
    providers = session_providers(device)
    try:
        return ort.InferenceSession(path, sess_options=options, providers=providers)
    except Exception as err:  # a GPU provider that is installed but cannot start (no driver, no device)
        if providers == ["CPUExecutionProvider"]:
            raise
        log.warning("onnxruntime providers %s failed (%s); using the CPU", providers[:-1], err)
        return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def measure_latency(call: Callable[[], object], *, iters: int = 200, warmup: int = 5,
                    max_seconds: float = 10.0) -> dict[str, float]:
    """Time ``call()`` up to ``iters`` times (after ``warmup`` calls), stopping early after ``max_seconds``;
    p50/p95/mean in milliseconds and the number of timed calls (at least one)."""
    started = time.perf_counter()
    for _ in range(warmup):
        call()
        if time.perf_counter() - started > max_seconds / 4:
            break
    times = []
    deadline = time.perf_counter() + max_seconds
    for _ in range(max(1, iters)):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if t0 > deadline:
            break
    ms = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "iters": len(ms)}


def interleaved_latency(calls: dict[str, Callable[[], object]], *, iters: int = 200, rounds: int = 5,
                        warmup: int = 3, max_seconds: float = 10.0, pause_s: float = 0.1) -> dict[str, dict[str, float]]:
    """Time several callables in ``rounds`` interleaved rounds (a, b, c, a, b, c, ...), up to ``iters``
    calls and ``max_seconds`` each in all, so that a background load hits every one alike. Per key:
    p50/p95/mean over all calls, the best round's p50 (closest to an idle machine) and the call count.

    ``pause_s`` between blocks lets the previous block's worker threads stop spinning (onnxruntime's
    intra-op pool and torch's OpenMP threads busy-wait after a call) before the next one is timed:
    without it, torch right after onnxruntime on 2 cores measured up to 100x slower."""
    per_round, budget = max(1, iters // rounds), max_seconds / rounds
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[list[float]]] = {k: [] for k in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            time.sleep(pause_s)
            call()  # untimed: caches and thread pool back in this call's state
            chunk, deadline = [], time.perf_counter() + budget
            for _ in range(per_round):
                t0 = time.perf_counter()
                call()
                chunk.append(time.perf_counter() - t0)
                if t0 > deadline:
                    break
            times[key].append(chunk)
    out = {}
    for key, chunks in times.items():
        ms = np.concatenate(chunks) * 1e3
        out[key] = {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                    "mean_ms": float(ms.mean()), "best_round_p50_ms": float(min(np.median(c) for c in chunks)) * 1e3,
                    "iters": len(ms)}
    return out


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
