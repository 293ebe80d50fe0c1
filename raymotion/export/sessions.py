"""onnxruntime sessions over exported files: options, providers, probabilities, latency; and the torch-free
edit of a written file (strip_debug_info).

Split from ``raymotion.export.onnx`` (the torch export) so that what only runs ONNX files (a Serve
replica, the int8 search, the bench) does not pay torch's import time and memory.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Callable, Literal, get_args

import numpy as np
import onnx
import onnxruntime as ort

from raymotion.train.metrics import softmax

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"

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
# The session options' names, as types: a misspelt one fails naming the choices, not as a KeyError.
GraphOptimization = Literal["disable", "basic", "extended", "all"]
ExecutionMode = Literal["sequential", "parallel"]
Device = Literal["cpu", "cuda", "tensorrt"]


def _choice(name: str, value: str, kind) -> None:
    if value not in get_args(kind):
        raise ValueError(f"{name} {value!r}: use {', '.join(get_args(kind))}")


def session_options(*, intra_op_threads: int = 0, inter_op_threads: int = 1,
                    graph_optimization: GraphOptimization = "all", enable_mem_arena: bool = True,
                    execution_mode: ExecutionMode = "sequential", allow_spinning: bool = True,
                    stop_spinning_after_run: bool = False) -> ort.SessionOptions:
    """SessionOptions from plain arguments (see ``create_session`` for what the defaults rest on)."""
    _choice("graph_optimization", graph_optimization, GraphOptimization)
    _choice("execution_mode", execution_mode, ExecutionMode)
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


def session_providers(device: Device = "cpu") -> list[str]:
    """Execution providers for ``device`` ("cpu", "cuda", "tensorrt"), best first, CPU always last.

    A provider this onnxruntime build lacks is skipped (so "cuda" on a CPU-only machine runs on CPU).
    """
    _choice("device", device, Device)
    wanted = {"cpu": [], "cuda": ["CUDAExecutionProvider"],
              "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}[device]
    available = set(ort.get_available_providers())
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


@functools.cache
def preload_cuda_libraries() -> bool:
    """Load the CUDA and cuDNN libraries of the pip-installed NVIDIA packages (those torch's CUDA wheels
    bring) into this process, once. onnxruntime-gpu's CUDA provider needs them, and finds them by itself
    only when torch was imported first: a Serve replica imports no torch, and without this its CUDA session
    fell back to the CPU (here: "libcublasLt.so.13: cannot open shared object file"). False when this
    onnxruntime cannot (older than 1.21) or the libraries are missing."""
    try:
        ort.preload_dlls(cuda=True, cudnn=True)
        return True
    except Exception as err:  # AttributeError on an old onnxruntime; OSError without the libraries
        log.warning("could not preload the CUDA libraries for onnxruntime: %s", err)
        return False


def create_session(path: str, *, device: Device = "cpu", intra_op_threads: int = 0, inter_op_threads: int = 1,
                   graph_optimization: GraphOptimization = "all", enable_mem_arena: bool = True,
                   execution_mode: ExecutionMode = "sequential", allow_spinning: bool = True,
                   stop_spinning_after_run: bool = False) -> ort.InferenceSession:
    """An onnxruntime session; ``device`` picks CUDA / TensorRT first when present, CPU stays the fallback.

    The defaults are onnxruntime's own; nothing measured better on a 2-core CPU (figures: docs/design.md,
    "Notes for 2-CPU machines"):
      * ``intra_op_threads=0`` (a thread per core, spinning): fastest alone, but several sessions on one
        machine (one Serve replica per model) should each take 1, or their spinning threads collide.
      * ``stop_spinning_after_run=True``: for sessions run one after the other in one process, so that one
        session's idle threads do not spin on the cores the next one needs; off, as it costs a lone session.
      * memory arena on, ``execution_mode="sequential"``, ``graph_optimization="all"`` (applied at load
        time, so offline files stay portable): the alternatives were no faster or slower.
    """
    options = session_options(intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads,
                              graph_optimization=graph_optimization, enable_mem_arena=enable_mem_arena,
                              execution_mode=execution_mode, allow_spinning=allow_spinning,
                              stop_spinning_after_run=stop_spinning_after_run)
    providers = session_providers(device)
    if providers != ["CPUExecutionProvider"]:
        preload_cuda_libraries()
    try:
        return ort.InferenceSession(path, sess_options=options, providers=providers)
    except Exception as err:  # a GPU provider that is installed but cannot start (no driver, no device)
        if providers == ["CPUExecutionProvider"]:
            raise
        log.warning("onnxruntime providers %s failed (%s); using the CPU", providers[:-1], err)
        return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


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


class Member:
    """One served member of a run: its served file's session, its normalization and its own calibration
    (manifest ``models.<name>``); ``probabilities`` takes compact uint8 NHWC pixels at ``input_size``.
    What a Serve model replica holds, and what ``raymotion.predict.Predictor`` holds one of per member."""

    def __init__(self, run_dir: str, name: str, entry, *, check_sha256: bool = False, **session_kwargs):
        from raymotion.rundir import sha256_file

        path = os.path.join(run_dir, entry.serve.file)
        if check_sha256 and sha256_file(path) != entry.serve.sha256:
            raise ValueError(f"{path}: sha256 does not match the manifest; the run directory was modified")
        self.name, self.input_size = name, entry.input_size
        self.mean, self.std, self.calibration = entry.mean, entry.std, entry.calibration
        self.session = create_session(path, **session_kwargs)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 at this member's input size -> (N, C) calibrated probabilities, float64."""
        from raymotion.data.transforms import normalize
        from raymotion.export.mixture import temper

        return temper(onnx_probabilities(self.session, normalize(pixels, self.mean, self.std)), **self.calibration)


def calibrated_member_probabilities(run_dir: str, entries: dict, images_by_size: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Each member's served file on uint8 NHWC images at its own input size, through its own calibration:
    what the ensemble mixes, as Serve computes it. ``entries``: name -> rundir.ModelEntry."""
    return {name: Member(run_dir, name, entry).probabilities(images_by_size[entry.input_size])
            for name, entry in entries.items()}
