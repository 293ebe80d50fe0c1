"""int8 ONNX: static QDQ (activation ranges set on training images) and dynamic quantization, and the
choice between them (and fp32) by validation accuracy, then batch-1 latency.

Words: onnxruntime calls setting the activation ranges "calibration" (its reader and method classes keep
that name here); raymotion's own names say "range images" for those inputs, because "calibration" in
raymotion means a member's probability temperature and class bias (export.ensemble).

Static QDQ is preferred because onnxruntime fuses DequantizeLinear -> Conv -> QuantizeLinear into
QLinearConv kernels, while dynamic quantization's ConvInteger rescales activations on every call and was
slower than fp32 on the x86 CPUs measured. ``StaticQuantConfig`` holds the settings measured fastest at
equal accuracy; the figures (they go stale) are in docs/results.md, "int8 and ensemble measurements".
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from raymotion.export.sessions import INPUT_NAME, create_session, interleaved_latency, onnx_probabilities, strip_debug_info
from raymotion.train.metrics import classification_metrics

log = logging.getLogger(__name__)

QUANT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                       "entropy": CalibrationMethod.Entropy}
DEFAULT_RANGE_IMAGES = 300


@dataclass(frozen=True)
class StaticQuantConfig:
    # uint8 activations: onnxruntime's x86 kernels are U8S8, so int8 (or symmetric) activations gain nothing.
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True  # per-tensor weights lose accuracy for a negligible size saving
    # 7-bit weights: the x86 u8*s8 kernels sum pairs of products in int16 (vpmaddubsw), which saturates
    # with full-range weights; 7 bits cannot saturate.
    reduce_range: bool = True
    # None: every op type onnxruntime can quantize (Conv, Gemm, Add, pooling, ...); Conv/Gemm/MatMul only
    # leaves a DequantizeLinear/QuantizeLinear pair around every residual Add.
    op_types: tuple[str, ...] | None = None
    # The calibration methods tie on accuracy; minmax is the quickest to build.
    calibrate_method: str = "minmax"
    # Ranges from the mean of per-batch min/max instead of the global extremes (fewer outlier-driven ranges).
    moving_average: bool = False
    weight_symmetric: bool = True
    activation_symmetric: bool = False
    calibration_batch: int = 16
    # Not an option: keeping the RGB stem conv in float32 made the whole model slower, the extra
    # DequantizeLinear and layout transposes at the boundary cost more than the stem saves.


# Which static setting loses least is model-specific and close to a coin toss, so choose_int8 builds these
# three and keeps the one whose top-1 agrees most with fp32 on held-out training images.
STATIC_CANDIDATES = (StaticQuantConfig(), StaticQuantConfig(reduce_range=False),
                     StaticQuantConfig(moving_average=True))


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds normalized float32 NCHW images to the calibrator in batches (the batch axis is dynamic)."""

    def __init__(self, images: np.ndarray, batch_size: int = 16, input_name: str = INPUT_NAME):
        # Equal batches only: the histogram calibrators (percentile, entropy) stack per-batch outputs and
        # fail on a short last batch, so the remainder (< batch_size images) is left out.
        self.batch_size = max(1, min(batch_size, len(images)))
        usable = len(images) - len(images) % self.batch_size
        self.images, self.input_name = np.ascontiguousarray(images[:usable], np.float32), input_name
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.images):
            return None
        batch = self.images[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self.position = 0

    def __len__(self) -> int:
        return len(self.images) // self.batch_size


def preprocess_for_quantization(src: str, dst: str) -> str:
    """onnxruntime's quantization pre-processing: symbolic shape inference + graph optimisation, so that
    the quantizer sees fused Conv(+BN) nodes and every tensor's shape."""
    try:
        quant_pre_process(src, dst)
    except Exception as err:  # symbolic shape inference does not know every op; ONNX shapes suffice
        log.warning("quant_pre_process with symbolic shapes failed (%s); retrying without", err)
        quant_pre_process(src, dst, skip_symbolic_shape=True)
    return dst


def quantize_static_qdq(fp32_path: str, out_path: str, range_images: np.ndarray,
                        config: StaticQuantConfig = StaticQuantConfig()) -> str:
    """Static int8 (QDQ format, per-channel weights) calibrated on ``range_images``
    (normalized float32 NCHW, a few hundred training images)."""
    if len(range_images) == 0:
        raise ValueError("static quantization needs calibration images")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = preprocess_for_quantization(fp32_path, os.path.join(tmp, "prepared.onnx"))
        extra = {"WeightSymmetric": config.weight_symmetric, "ActivationSymmetric": config.activation_symmetric}
        if config.moving_average:
            extra["CalibMovingAverage"] = True
        if config.calibrate_method == "percentile":
            extra["CalibPercentile"] = 99.999
        quantize_static(
            prepared, out_path, ArrayCalibrationReader(range_images, config.calibration_batch),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(config.op_types) if config.op_types else None,
            per_channel=config.per_channel, reduce_range=config.reduce_range,
            activation_type=QUANT_TYPES[config.activation_type], weight_type=QUANT_TYPES[config.weight_type],
            calibrate_method=CALIBRATION_METHODS[config.calibrate_method], extra_options=extra)
    return strip_debug_info(out_path)


def quantize_static_search(fp32_path: str, out_path: str, range_images: np.ndarray,
                           selection_images: np.ndarray | None,
                           candidates: Sequence[StaticQuantConfig] = STATIC_CANDIDATES) -> tuple[str, dict[str, Any]]:
    """Static QDQ with each of ``candidates``; keep the one whose top-1 agrees most with fp32 on
    ``selection_images`` (normalized float32 NCHW, *not* the val set, so that val stays an honest test;
    ties keep the earlier candidate). No selection images or one candidate: the first candidate.

    Returns (out_path, {"config": the kept config, "search": [{"config", "agreement"}, ...]}).
    """
    if selection_images is None or len(selection_images) == 0 or len(candidates) == 1:
        quantize_static_qdq(fp32_path, out_path, range_images, candidates[0])
        return out_path, {"config": asdict(candidates[0]), "search": []}
    reference = onnx_probabilities(create_session(fp32_path), selection_images).argmax(1)
    search, best = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i, config in enumerate(candidates):
            path = os.path.join(tmp, f"candidate{i}.onnx")
            quantize_static_qdq(fp32_path, path, range_images, config)
            agreement = float((onnx_probabilities(create_session(path), selection_images).argmax(1) == reference).mean())
            search.append({"config": asdict(config), "agreement": agreement})
            if best is None or agreement > search[best]["agreement"]:
                best = i
                os.replace(path, out_path + ".tmp")
        os.replace(out_path + ".tmp", out_path)
    return out_path, {"config": search[best]["config"], "search": search}


def quantize_dynamic_int8(fp32_path: str, out_path: str, op_types: Sequence[str] | None = None) -> str:
    """Dynamic int8: weights quantized offline, activations scaled per call (no calibration)."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = preprocess_for_quantization(fp32_path, os.path.join(tmp, "prepared.onnx"))
        # DefaultTensorType: shape inference leaves some MatMul weights untyped after the mirror-image
        # branch of a test-time-averaged graph; they are float32.
        quantize_dynamic(prepared, out_path, op_types_to_quantize=list(op_types) if op_types else None,
                         per_channel=False, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return strip_debug_info(out_path)


def training_sample(source, size: int, n: int = DEFAULT_RANGE_IMAGES, seed: int = 0,
                       skip: int = 0) -> np.ndarray:
    """``n`` training images (uint8 NHWC at ``size``), a seeded random subset of ``source``'s train split
    (ImageFolders: only those files are decoded; ParquetCache: read, then subset). ``skip``: leave out the
    first ``skip`` of the same seeded order, so that (n=300) and (n=300, skip=300) are disjoint sets."""
    from raymotion.data.transforms import load_images

    rng = np.random.default_rng(seed)
    split = getattr(source, "train", None)
    if split is not None and hasattr(split, "paths"):
        pick = np.sort(rng.permutation(len(split.paths))[skip:skip + n])
        images, _ = load_images([split.paths[i] for i in pick], size)
        return images
    images, _ = source.arrays("train", size)
    return images[np.sort(rng.permutation(len(images))[skip:skip + n])]


def int8_image_sets(source, size: int, mean, std, n: int = DEFAULT_RANGE_IMAGES) -> tuple[np.ndarray, np.ndarray | None]:
    """Normalized training images for ``choose_int8``: ``n`` that set static int8's activation ranges, and
    ``n`` others of the same seeded order (disjoint) that pick the static setting, so that val stays a test
    (None when the split has no images beyond the first ``n``)."""
    from raymotion.data.transforms import normalize

    ranges = normalize(training_sample(source, size, n), mean, std)
    selection = normalize(training_sample(source, size, n, skip=n), mean, std)
    return ranges, (selection if len(selection) else None)


def evaluate_onnx(path: str, val_images: np.ndarray, val_labels: np.ndarray, classes: list[str],
                  probs_out: dict[str, np.ndarray] | None = None, key: str = "") -> dict[str, Any]:
    """File size and val metrics of one ONNX file; its val probabilities go to ``probs_out[key]`` when
    given, else they are computed here (``probs_out`` already holding ``key``: not run again)."""
    if probs_out is not None and key in probs_out:
        probs = probs_out[key]
    else:
        probs = onnx_probabilities(create_session(path), val_images)
        if probs_out is not None:
            probs_out[key] = probs
    metrics = classification_metrics(probs, val_labels, classes)
    return {"path": path, "bytes": os.path.getsize(path), "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"], "val": metrics}


def batch1_latency(paths: dict[str, str], probe: np.ndarray, *, iters: int = 200, max_seconds: float = 10.0,
                   rounds: int = 5) -> dict[str, dict[str, float]]:
    """Batch-1 latency of several ONNX files on one image, timed in interleaved rounds."""
    sessions = {key: create_session(path) for key, path in paths.items()}
    x = np.ascontiguousarray(probe[:1], np.float32)
    calls = {key: (lambda s=s: s.run(None, {INPUT_NAME: x})) for key, s in sessions.items()}
    return interleaved_latency(calls, iters=iters, rounds=rounds, max_seconds=max_seconds)


def _build(variant: str, build: Callable[[], Any]) -> tuple[Any, str | None]:
    try:
        return build(), None
    except Exception as err:  # a model the quantizer cannot handle keeps fp32; the record says why
        log.warning("%s int8 quantization failed: %s", variant, err)
        return None, f"{type(err).__name__}: {err}"


def choose_int8(fp32_path: str, out_dir: str, range_images: np.ndarray, val_images: np.ndarray,
                val_labels: np.ndarray, classes: list[str], tolerance_points: float = 0.5, *,
                max_latency_ratio: float = 1.0, tie_points: float | None = None,
                selection_images: np.ndarray | None = None,
                static_candidates: Sequence[StaticQuantConfig] = STATIC_CANDIDATES, name: str | None = None,
                latency_iters: int = 200, max_seconds: float = 10.0, latency_rounds: int = 5,
                val_probs: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Build static QDQ and dynamic int8 of ``fp32_path`` into ``out_dir``, measure fp32 / static /
    dynamic (val accuracy, macro-F1, size, batch-1 latency) and select one.

    Images are normalized float32 NCHW. The static file is the best of ``static_candidates`` by top-1
    agreement with fp32 on ``selection_images`` (training images not among the range images; None: the
    first candidate only). An int8 variant is rejected when it fails to build, loses more
    than ``tolerance_points`` of val accuracy (percentage points), or is slower than
    ``max_latency_ratio`` x fp32 at batch 1 (an int8 file that is smaller but slower is not worth
    serving). Of the accepted ones the more accurate wins; within ``tie_points`` (default: half the
    tolerance, i.e. a difference of a few val images) the faster one wins. None accepted: "fp32".

    Returns a JSON-able record: {"selected", "reason", "path" (of the selected file), "tolerance_points",
    "fp32": {...}, "static": {...}, "dynamic": {...}}. ``val_probs``: val probabilities by variant, read
    ("fp32" when the caller has them) and filled in (every variant scored), so that no file runs twice.
    """
    os.makedirs(out_dir, exist_ok=True)
    stem = name or os.path.splitext(os.path.basename(fp32_path))[0]
    tie = tolerance_points / 2 if tie_points is None else tie_points
    fp32 = evaluate_onnx(fp32_path, val_images, val_labels, classes, val_probs, "fp32")
    # null, not Infinity, for "no limit": the record goes into the manifest, which must stay strict JSON.
    record: dict[str, Any] = {"tolerance_points": tolerance_points,
                              "max_latency_ratio": max_latency_ratio if math.isfinite(max_latency_ratio) else None,
                              "tie_points": tie, "fp32": fp32}
    built = build_int8_variants(fp32_path, out_dir, stem, range_images, selection_images, static_candidates,
                                record)
    time_variants(fp32_path, built, val_images, record, iters=latency_iters, max_seconds=max_seconds,
                  rounds=latency_rounds)
    accepted = score_variants(built, val_images, val_labels, classes, val_probs, record,
                              tolerance_points=tolerance_points, max_latency_ratio=max_latency_ratio)
    return select_variant(record, accepted, fp32_path, tie)


INT8_VARIANTS = ("static", "dynamic")


def build_int8_variants(fp32_path: str, out_dir: str, stem: str, range_images: np.ndarray,
                        selection_images: np.ndarray | None, static_candidates: Sequence[StaticQuantConfig],
                        record: dict[str, Any]) -> dict[str, str]:
    """Static QDQ (best of ``static_candidates``) and dynamic int8 files; {variant: path} of those that
    built. A variant that fails to build gets its reason in ``record``."""
    builders = {
        "static": lambda: quantize_static_search(fp32_path, os.path.join(out_dir, f"{stem}.int8-static.onnx"),
                                                 range_images, selection_images, static_candidates),
        "dynamic": lambda: quantize_dynamic_int8(fp32_path, os.path.join(out_dir, f"{stem}.int8-dynamic.onnx")),
    }
    built = {}
    for variant in INT8_VARIANTS:
        result, error = _build(variant, builders[variant])
        if result is None:
            record[variant] = {"status": "rejected", "reason": f"quantization failed: {error}"}
            continue
        path, info = result if isinstance(result, tuple) else (result, {})
        built[variant] = path
        record[variant] = {"path": path, "bytes": os.path.getsize(path), **info}
    return built


def time_variants(fp32_path: str, built: dict[str, str], val_images: np.ndarray, record: dict[str, Any], *,
                  iters: int, max_seconds: float, rounds: int = 5) -> None:
    """Batch-1 latency of fp32 and the built int8 files, timed together in interleaved rounds (their ratio
    is what decides, so background load must hit all of them alike); sizes and ratios into ``record``."""
    timing = batch1_latency({"fp32": fp32_path, **built}, val_images, iters=iters, max_seconds=max_seconds,
                            rounds=rounds)
    for key, t in timing.items():
        record[key].update(latency_ms_p50=t["p50_ms"], latency_ms_p95=t["p95_ms"],
                           latency_ms_best_round_p50=t["best_round_p50_ms"], latency_iters=t["iters"])
    for variant in built:
        entry = record[variant]
        entry["size_ratio"] = entry["bytes"] / record["fp32"]["bytes"]
        entry["latency_ratio"] = entry["latency_ms_p50"] / record["fp32"]["latency_ms_p50"]


def score_variants(built: dict[str, str], val_images: np.ndarray, val_labels: np.ndarray, classes: list[str],
                   val_probs: dict[str, np.ndarray] | None, record: dict[str, Any], *, tolerance_points: float,
                   max_latency_ratio: float) -> list[str]:
    """The variants within both limits. Latency first: a file slower than the limit is never served, so it
    is not scored on val either (dynamic int8 convolutions can be many times slower than fp32)."""
    accepted = []
    for variant in built:
        entry = record[variant]
        if not entry["latency_ratio"] <= max_latency_ratio:
            entry.update(status="rejected", reason=f"batch-1 latency {entry['latency_ratio']:.2f}x fp32 "
                                                   f"(limit {max_latency_ratio}x); val not scored")
            continue
        entry.update(evaluate_onnx(built[variant], val_images, val_labels, classes, val_probs, variant))
        entry["accuracy_drop_points"] = 100.0 * (record["fp32"]["accuracy"] - entry["accuracy"])
        if not entry["accuracy_drop_points"] <= tolerance_points:
            entry.update(status="rejected", reason=f"loses {entry['accuracy_drop_points']:.2f} points of val "
                                                   f"accuracy (tolerance {tolerance_points} points)")
        else:
            entry["status"] = "accepted"
            accepted.append(variant)
    return accepted


def select_variant(record: dict[str, Any], accepted: list[str], fp32_path: str, tie: float) -> dict[str, Any]:
    """Of the accepted variants the more accurate wins; within ``tie`` points the faster. None: fp32."""
    if not accepted:
        reasons = "; ".join(f"{v}: {record[v]['reason']}" for v in INT8_VARIANTS)
        record.update(selected="fp32", path=fp32_path, reason=f"no int8 variant accepted ({reasons})")
        return record
    best_acc = max(record[v]["accuracy"] for v in accepted)
    tied = [v for v in accepted if best_acc - record[v]["accuracy"] <= tie]
    selected = min(tied, key=lambda v: record[v]["latency_ms_p50"])
    chosen = record[selected]
    why = (f"{selected}: val accuracy {100 * chosen['accuracy']:.2f}% "
           f"({-chosen['accuracy_drop_points']:+.2f} points vs fp32), {chosen['latency_ratio']:.2f}x fp32 latency, "
           f"{chosen['size_ratio']:.2f}x size; "
           + "; ".join(f"{v}: " + (record[v].get("reason") or f"accuracy {100 * record[v]['accuracy']:.2f}%, "
                                   f"{record[v]['latency_ratio']:.2f}x latency")
                       for v in INT8_VARIANTS if v != selected))
    chosen["status"] = "selected"
    record.update(selected=selected, path=chosen["path"], reason=why)
    return record
