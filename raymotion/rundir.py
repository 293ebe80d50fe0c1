"""What crosses stage boundaries in a run directory: its file names and typed records (no torch).

    RUN_DIR/
      manifest.json          Manifest: classes, data, per-model entries, the ensemble
      models/<name>.onnx     fp32; <name>.int8-static.onnx, <name>.int8-dynamic.onnx: int8 candidates
      checkpoints/<name>/    model.pt + meta.json (CheckpointMeta), the torch checkpoint of each ONNX file
      predictions/val.npz    val labels, member and ensemble probabilities, thumbnails (PredictionKeys)
      report/                the HTML report
      logs/                  tune.log: everything the tune command and Ray printed (the terminal shows less)
      command.json           Command: the tune command's arguments (what --resume continues)
      tune/                  Tune's experiments (tune-<name>/) and Train's runs (train-<name>-<trial>/)
      trials/<name>.csv      one row per trial (TrialRow): config, epochs, stop reason, best val, minutes;
      trials/<name>.parquet  the same rows
      trials/<name>.json     TuneResult: the model's best trial, written when its search is done
      distill/<stage>.npz    SoftLabels: a teacher ensemble's probabilities on the training images
      student/               the distilled single student: a run directory of its own (one member)

Export writes these records and every later reader (Serve, bench, report) reads them through this module,
so a field has one name and one type. It sits beside the stages (any stage may import it) and needs only
pydantic, so that a Serve replica can read a manifest without importing torch.

One format version is read: a manifest of another version is refused with a message naming it, rather
than half-read (the ensemble formula and each member's served file changed between versions).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from raymotion.config import EnsembleRule, TrainConfig

FORMAT_VERSION = 2

MANIFEST = "manifest.json"
MODELS_DIR = "models"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_META = "meta.json"
CHECKPOINT_MODEL = "model.pt"
CHECKPOINT_TRANSFORMERS = "transformers"  # hf_vit's transformer, save_pretrained (config.json + safetensors)
PREDICTIONS = os.path.join("predictions", "val.npz")
REPORT_DIR = "report"
LOGS_DIR = "logs"
TUNE_LOG = "tune.log"
COMMAND = "command.json"
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
DISTILL_DIR = "distill"
STUDENT_DIR = "student"

Metrics = dict[str, Any]  # open-ended on purpose: scores() grows figures (per-class recall, confusion, ...)


class UnsupportedFormat(ValueError):
    """A manifest of a format version this code does not read."""


class _Record(BaseModel):
    # Extra keys are kept and written back: a newer writer's field must survive a rewrite by this code.
    model_config = ConfigDict(extra="allow")


class TrainRuntime(_Record):
    """What a training run actually used (raymotion.train.loop.runtime_record), as bench gpu and
    scripts/gpu_check.sh report it: the device asked for in a config is not always the one that ran."""
    device: str  # torch's device string, "cpu" or "cuda:<n>"
    gpu: str | None = None  # the CUDA device's name
    torch: str
    autocast: str  # "off", or the autocast dtype ("bfloat16", "float16")
    grad_scaler: bool
    channels_last: bool
    torch_compile: bool
    prefetch_batches: int
    pin_memory: bool
    workers: int
    torch_threads: int


class CheckpointMeta(_Record):
    """checkpoints/<name>/meta.json: what is needed to rebuild the model and to export it."""
    model: str
    classes: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    epoch: int
    train_config: TrainConfig
    metrics: Metrics
    runtime: TrainRuntime | None = None  # absent in checkpoints written before it was recorded


class SourceScores(_Record):
    """A member's or the ensemble's figures on one data source's val rows (calibration and weights fitted on
    the val rows of every source, as served)."""
    images: int
    val: Metrics
    val_out_of_fold: Metrics | None = None
    val_degraded: Metrics | None = None
    # The ensemble only: its out-of-fold accuracy / macro-F1 minus its best member's on this source, in points,
    # and the rows where its answer and that member's differ (out of fold): how many, and who was right.
    gain_out_of_fold: dict[str, Any] | None = None
    disagreements: dict[str, Any] | None = None


class ServedFile(_Record):
    """models.<name>.serve: the ONNX file Serve runs for a member (int8 when accepted, else fp32)."""
    variant: Literal["fp32", "static", "dynamic"]
    file: str
    sha256: str
    bytes: int
    reason: str


class ModelEntry(_Record):
    """models.<name>: one exported member, its served file, its calibration and its val figures."""
    file: str
    sha256: str
    bytes: int
    input_size: int
    mean: list[float]
    std: list[float]
    opset: int
    exporter: str
    optimization: str
    parity_max_abs_diff: float
    test_time_augmentation: Literal["none", "hflip"] = "none"
    epoch: int
    train_config: TrainConfig
    train_metrics: Metrics
    serve: ServedFile
    int8: dict[str, Any] | None = None  # choose_int8's record; absent when int8 was disabled
    # The member's own calibration (softmax(log p / T + b)), fitted on val by the bundle.
    temperature: float = 1.0
    bias: list[float] | None = None
    val: Metrics
    val_uncalibrated: Metrics | None = None
    val_out_of_fold: Metrics | None = None
    # Val through data.pipeline.camera_degraded (grey, few pixels, blur, JPEG, a shifted box), calibrated
    # as on clean val: how the member fares on camera-like faces.
    val_degraded: Metrics | None = None
    tune: dict[str, Any] | None = None  # trials, stopped_early, failed, seconds, history (the tune command)
    # Source name -> the same figures on that source's val rows alone (runs of two or more sources).
    by_source: dict[str, SourceScores] = {}

    @property
    def calibration(self) -> dict[str, Any]:
        """A calibration record: ``raymotion.export.mixture.temper(p, **entry.calibration)``."""
        return {"temperature": self.temperature, "bias": self.bias}


class SourceRecord(_Record):
    """One data source of a run: its name (what per-source figures are called), root and counts."""
    name: str
    root: str
    train: dict[str, int]
    val: dict[str, int]
    generated: bool = False


class DataRecord(_Record):
    root: str  # the roots, joined by os.pathsep when there are several (``roots`` lists them)
    train: dict[str, int]
    val: dict[str, int]
    generated: bool = False
    warning: str | None = None  # set when generated: such a run's models know nothing of real faces
    sources: list[SourceRecord] = []  # in the order of predictions' source ids; [] in runs before sources

    @property
    def roots(self) -> list[str]:
        return [s.root for s in self.sources] or [self.root]


class Ensemble(_Record):
    """The ensemble: raymotion.export.mixture.ensemble_probabilities(members' calibrated probabilities, this)."""
    members: list[str]
    served: list[str]  # members with a positive weight: the ones Serve deploys
    weights: dict[str, float]
    temperature: float
    method: str
    combine: str
    # The pooling rule (raymotion.export.mixture): runs written before it existed pooled linearly, unbiased.
    rule: EnsembleRule = "linear"
    bias: list[float] | None = None  # the ensemble's class bias, one per class (log-linear), else None
    val: Metrics
    val_uncalibrated: Metrics | None = None
    val_equal_weights: Metrics | None = None
    val_out_of_fold: Metrics | None = None  # + folds, seed, fold_weights, fold_temperatures, uncalibrated
    val_degraded: Metrics | None = None  # the fitted ensemble on camera-degraded val (see ModelEntry)
    # Out-of-fold accuracy and macro-F1 of the ensemble minus its best member's, in points.
    gain_out_of_fold: dict[str, Any] | None = None
    # Each pooling rule's out-of-fold figures on these members (accuracy, macro-F1, log loss): the one
    # served beside the one not chosen.
    rules_out_of_fold: dict[str, dict[str, float]] | None = None
    by_source: dict[str, SourceScores] = {}  # as ModelEntry.by_source, with the gain and the disagreements

    @model_validator(mode="after")
    def _served_are_the_weighted_members(self) -> "Ensemble":
        # Readers deploy "served" and mix with "weights": the two must say the same thing.
        if set(self.weights) != set(self.members):
            raise ValueError(f"ensemble weights name {sorted(self.weights)}, members are {self.members}")
        positive = [m for m in self.members if self.weights[m] > 0]
        if self.served != positive:
            raise ValueError(f"ensemble served {self.served} is not the members with a positive weight {positive}")
        return self

    @property
    def served_weights(self) -> dict[str, float]:
        return {name: self.weights[name] for name in self.served}


class Manifest(_Record):
    format_version: int = FORMAT_VERSION
    created_at: str
    classes: list[str]
    data: DataRecord
    models: dict[str, ModelEntry]
    ensemble: Ensemble

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        check_format_version(version)
        return version

    @model_validator(mode="after")
    def _members_are_models(self) -> "Manifest":
        unknown = [m for m in self.ensemble.members if m not in self.models]
        if unknown:
            raise ValueError(f"ensemble members {unknown} have no models entry")
        return self


def check_format_version(version: Any, where: str = MANIFEST) -> None:
    if version != FORMAT_VERSION:
        raise UnsupportedFormat(f"{where}: format_version {version!r} is not readable by this raymotion, which reads "
                                f"format {FORMAT_VERSION} only; rebuild the bundle from its checkpoints with "
                                "python -m raymotion.export RUN_DIR")


def read_manifest(run_dir: str) -> Manifest:
    """RUN_DIR/manifest.json, validated; UnsupportedFormat for another format version."""
    path = os.path.join(run_dir, MANIFEST)
    with open(path) as f:
        raw = json.load(f)
    # Checked before the fields, so that an old manifest says "format" rather than "field missing".
    check_format_version(raw.get("format_version") if isinstance(raw, dict) else None, path)
    return Manifest.model_validate(raw)


def manifest_json(manifest: Manifest) -> dict[str, Any]:
    """The manifest as written to disk (and returned by Serve's GET /models); absent optionals are omitted.
    Through JSON text, so that it equals the file read back (tuples of the train config become lists; NaN
    figures stay NaN, which pydantic's JSON mode would turn into null)."""
    return json.loads(json.dumps(manifest.model_dump(exclude_none=True)))


def write_manifest(run_dir: str, manifest: Manifest) -> str:
    path = os.path.join(run_dir, MANIFEST)
    with open(path, "w") as f:
        json.dump(manifest_json(manifest), f, indent=2, sort_keys=False)
    return path


def sha256_file(path: str) -> str:
    """The digest the manifest records per file; Serve refuses a file that no longer matches it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_record(path: str, record_type: type[_Record]) -> Any:
    with open(path) as f:
        return record_type.model_validate(json.load(f))


def _write_record(path: str, record: _Record) -> str:
    """Atomically: a run killed while writing leaves the old file or none, never half of one (a half
    trials/<model>.json would read as a finished search)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record.model_dump(exclude_none=True), f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


def log_path(run_dir: str, name: str = TUNE_LOG) -> str:
    """RUN_DIR/logs/<name>: where a command's complete output goes (raymotion.console.filter_terminal)."""
    return os.path.join(run_dir, LOGS_DIR, name)


def member_checkpoint_dir(run_dir: str, model: str) -> str:
    """RUN_DIR/checkpoints/<model>: the torch checkpoint a member's ONNX file came from."""
    return os.path.join(run_dir, CHECKPOINTS_DIR, model)


def checkpoint_meta_path(checkpoint_dir: str) -> str:
    return os.path.join(checkpoint_dir, CHECKPOINT_META)


def read_checkpoint_meta(checkpoint_dir: str) -> CheckpointMeta:
    return _read_record(checkpoint_meta_path(checkpoint_dir), CheckpointMeta)


def write_checkpoint_meta(checkpoint_dir: str, meta: CheckpointMeta) -> str:
    return _write_record(os.path.join(checkpoint_dir, CHECKPOINT_META), meta)


class Command(_Record):
    """command.json: the arguments the tune command ran with, so that --resume runs the same search."""
    argv: list[str]


def read_command(run_dir: str) -> Command:
    return _read_record(os.path.join(run_dir, COMMAND), Command)


def write_command(run_dir: str, command: Command) -> str:
    return _write_record(os.path.join(run_dir, COMMAND), command)


class TuneResult(_Record):
    """trials/<name>.json: one model's finished search: its best trial's config and best epoch."""
    model: str
    config: dict[str, Any]  # the best trial's full TrainConfig
    metrics: Metrics  # the best trial's best epoch
    checkpoint_path: str
    trials: int
    stopped_early: int
    failed: int
    restarted: int  # trials whose worker group was restarted from a checkpoint at least once
    seconds: float
    history: list[Metrics] = []  # per-epoch metrics of the best trial


def trials_path(run_dir: str, model: str, suffix: str) -> str:
    """trials/<model><suffix>: ".csv", ".parquet" (every trial) or ".json" (the TuneResult)."""
    return os.path.join(run_dir, TRIALS_DIR, f"{model}{suffix}")


def read_tune_result(run_dir: str, model: str) -> TuneResult | None:
    """The model's finished search, or None when it has not finished (a run to resume)."""
    path = trials_path(run_dir, model, ".json")
    return _read_record(path, TuneResult) if os.path.exists(path) else None


def write_tune_result(run_dir: str, result: TuneResult) -> str:
    return _write_record(trials_path(run_dir, result.model, ".json"), result)


class SoftLabels(BaseModel):
    """distill/<stage>.npz: what a teacher ensemble says of each training image (its calibrated, mixed
    probabilities), computed once per run and read by every student of it (TrainConfig.soft_labels)."""
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")
    classes: list[str]
    teachers: dict[str, float]  # member -> ensemble weight
    uids: Any  # (N,) int64: the train split's row ids (data.pipeline's "uid")
    probs: Any  # (N, C) float32, rows sum to 1

    @model_validator(mode="after")
    def _shapes(self) -> "SoftLabels":
        if self.probs.shape != (len(self.uids), len(self.classes)):
            raise ValueError(f"soft labels: probs {self.probs.shape} do not fit {len(self.uids)} uids x "
                             f"{len(self.classes)} classes")
        return self

    def by_uid(self):
        """(max uid + 1, C) float32: row u is image u's probabilities (NaN for a uid with none)."""
        import numpy as np

        dense = np.full((int(self.uids.max()) + 1 if len(self.uids) else 0, len(self.classes)), np.nan, np.float32)
        dense[self.uids] = self.probs
        return dense


def soft_labels_path(run_dir: str, stage: str) -> str:
    return os.path.join(run_dir, DISTILL_DIR, f"{stage}.npz")


def write_soft_labels(path: str, labels: SoftLabels) -> str:
    import numpy as np

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, uids=np.asarray(labels.uids, np.int64), probs=np.asarray(labels.probs, np.float32),
             classes=np.asarray(labels.classes), teachers=json.dumps(labels.teachers))
    os.replace(tmp, path)
    return path


def read_soft_labels(path: str) -> SoftLabels:
    import numpy as np

    with np.load(path) as f:
        return SoftLabels(classes=[str(c) for c in f["classes"]], teachers=json.loads(str(f["teachers"])),
                          uids=f["uids"].astype(np.int64), probs=f["probs"].astype(np.float32))


class PredictionKeys:
    """Array names in predictions/val.npz."""
    LABELS = "labels"  # (N,) int64
    PROBS_PREFIX = "probs__"  # probs__<member>: what the ensemble mixes (each member through its calibration)
    RAW_PREFIX = "probs_raw__"  # probs_raw__<member>: the served file's own probabilities
    ENSEMBLE = "ensemble"  # probs__ensemble: fitted weights, after temperature scaling
    ENSEMBLE_RAW = "ensemble_raw"  # probs__ensemble_raw: fitted weights, T = 1
    THUMB_INDEX = "thumb_index"  # (K,) rows of labels / probs shown as thumbnails
    THUMBS = "thumbs"  # (K, h, w, 3) uint8
    SOURCES = "sources"  # (N,) int64: each row's data source, an index into SOURCE_NAMES
    SOURCE_NAMES = "source_names"  # (S,) str: the run's data sources in order (DataRecord.sources)
    PATHS = "paths"  # (N,) str: each row's image file ("" for a row read from a Parquet cache)

    @classmethod
    def probs(cls, name: str) -> str:
        return cls.PROBS_PREFIX + name

    @classmethod
    def raw_probs(cls, name: str) -> str:
        return cls.RAW_PREFIX + name


class ValPredictions(BaseModel):
    """predictions/val.npz as one record: what export scored on val, row by row (PredictionKeys names the
    arrays). Written by the export bundle, read by the report and the benchmarks."""
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")
    labels: Any  # (N,) int64
    probs: dict[str, Any]  # name -> (N, C) float: each member as the ensemble mixes it, "ensemble", "ensemble_raw"
    raw_probs: dict[str, Any] = {}  # member -> (N, C): the served file's own probabilities
    sources: Any = None  # (N,) int64 into source_names; None in a file written before sources existed
    source_names: list[str] = []
    paths: list[str] = []
    thumb_index: Any = None  # (K,) int64 rows shown as thumbnails
    thumbs: Any = None  # (K, h, w, 3) uint8

    @model_validator(mode="after")
    def _rows_agree(self) -> "ValPredictions":
        n = len(self.labels)
        for name, probs in {**self.probs, **self.raw_probs}.items():
            if probs.ndim != 2 or len(probs) != n:
                raise ValueError(f"val predictions: {name} has shape {probs.shape}, not ({n}, classes)")
        if self.sources is not None and len(self.sources) != n:
            raise ValueError(f"val predictions: {len(self.sources)} source ids for {n} rows")
        if self.paths and len(self.paths) != n:
            raise ValueError(f"val predictions: {len(self.paths)} paths for {n} rows")
        return self

    def source_rows(self) -> dict[str, Any]:
        """Source name -> the boolean mask of its rows (one source named "" when the file has none)."""
        import numpy as np

        if self.sources is None or not self.source_names:
            return {"": np.ones(len(self.labels), bool)}
        return {name: np.asarray(self.sources) == i for i, name in enumerate(self.source_names)}


def predictions_path(run_dir: str) -> str:
    return os.path.join(run_dir, PREDICTIONS)


def write_val_predictions(run_dir: str, predictions: ValPredictions) -> str:
    import numpy as np

    keys = PredictionKeys
    path = predictions_path(run_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = {keys.LABELS: np.asarray(predictions.labels, np.int64)}
    arrays.update({keys.probs(name): np.asarray(p, np.float32) for name, p in predictions.probs.items()})
    arrays.update({keys.raw_probs(name): np.asarray(p, np.float32) for name, p in predictions.raw_probs.items()})
    if predictions.sources is not None:
        arrays[keys.SOURCES] = np.asarray(predictions.sources, np.int64)
        arrays[keys.SOURCE_NAMES] = np.asarray(predictions.source_names, dtype=str)
    if predictions.paths:
        arrays[keys.PATHS] = np.asarray(predictions.paths, dtype=str)
    if predictions.thumb_index is not None:
        arrays[keys.THUMB_INDEX] = np.asarray(predictions.thumb_index, np.int64)
        arrays[keys.THUMBS] = np.asarray(predictions.thumbs, np.uint8)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def read_val_predictions(run_dir: str) -> ValPredictions | None:
    """RUN_DIR/predictions/val.npz, or None where the run has none."""
    import numpy as np

    keys = PredictionKeys
    path = predictions_path(run_dir)
    if not os.path.exists(path):
        return None
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    probs, raw = {}, {}
    for key, value in arrays.items():
        if key.startswith(keys.RAW_PREFIX):
            raw[key[len(keys.RAW_PREFIX):]] = value.astype(np.float64)
        elif key.startswith(keys.PROBS_PREFIX):
            probs[key[len(keys.PROBS_PREFIX):]] = value.astype(np.float64)
    return ValPredictions(
        labels=arrays[keys.LABELS].astype(np.int64), probs=probs, raw_probs=raw,
        sources=arrays[keys.SOURCES].astype(np.int64) if keys.SOURCES in arrays else None,
        source_names=[str(s) for s in arrays.get(keys.SOURCE_NAMES, [])],
        paths=[str(p) for p in arrays.get(keys.PATHS, [])],
        thumb_index=arrays[keys.THUMB_INDEX].astype(np.int64) if keys.THUMB_INDEX in arrays else None,
        thumbs=arrays.get(keys.THUMBS))
