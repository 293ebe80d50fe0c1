"""Read a run directory for the report: the manifest, the saved val predictions, and metrics derived from them.

The manifest is read through ``raymotion.rundir`` (its typed records say what is always there). The
open-ended parts may still lack figures (a metrics dict without ECE, a run without tune history, a
predictions file of members only); what the manifest lacks is computed from the predictions when they
exist, and left as ``None`` (shown as "n/a") when they do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raymotion import rundir
from raymotion.export.ensemble import scores
from raymotion.rundir import Ensemble, Manifest, PredictionKeys

ENSEMBLE = PredictionKeys.ENSEMBLE  # probs__ensemble: fitted weights, after temperature scaling
ENSEMBLE_RAW = PredictionKeys.ENSEMBLE_RAW  # probs__ensemble_raw: fitted weights, T = 1


@dataclass
class RunData:
    run_dir: str
    manifest: Manifest
    classes: list[str]
    labels: np.ndarray | None = None  # (N,) int64, None without predictions/val.npz
    probs: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (N, C): members, "ensemble", "ensemble_raw"
    thumb_index: np.ndarray | None = None  # (K,) indices into labels/probs
    thumbs: np.ndarray | None = None  # (K, h, w, 3) uint8

    @property
    def members(self) -> list[str]:
        return list(self.manifest.models)

    @property
    def ensemble(self) -> Ensemble:
        return self.manifest.ensemble


def load_run(run_dir: str) -> RunData:
    """The manifest is required; the val predictions (rundir.read_val_predictions) are used when present and
    consistent with it."""
    manifest = rundir.read_manifest(run_dir)
    run = RunData(run_dir=run_dir, manifest=manifest, classes=list(manifest.classes))
    predictions = rundir.read_val_predictions(run_dir)
    if predictions is None:
        return run
    run.labels = np.asarray(predictions.labels, np.int64)
    n = len(run.labels)
    for name, value in predictions.probs.items():
        # Probabilities of another class count would silently misalign every figure: skip them.
        if value.shape == (n, len(run.classes)):
            run.probs[name] = np.asarray(value, np.float64)
    if predictions.thumb_index is not None and predictions.thumbs is not None:
        index, thumbs = np.asarray(predictions.thumb_index, np.int64), predictions.thumbs
        keep = (index >= 0) & (index < n)
        if thumbs.ndim == 4 and len(thumbs) == len(index):
            run.thumb_index, run.thumbs = index[keep], thumbs[keep]
    return run


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def metrics_for(run: RunData, stored: dict[str, Any] | None, probs_key: str | None) -> dict[str, Any]:
    """The manifest's metrics, with what it lacks (ECE, confusion, accuracy...) computed from the predictions."""
    out = dict(stored or {})
    probs = run.probs.get(probs_key) if probs_key else None
    if probs is None or run.labels is None or len(run.labels) == 0:
        return out
    # The same scoring the export bundle writes into the manifest (accuracy ... log loss, ECE, confusion).
    k = len(run.classes)
    for key, value in scores(probs, run.labels, run.classes).items():
        usable = confusion_of(out, k) is not None if key == "confusion" else is_number(out.get(key))
        if not usable:
            out[key] = value
    return out


def member_metrics(run: RunData, name: str) -> dict[str, Any]:
    return metrics_for(run, run.manifest.models[name].val, name)


def ensemble_metrics(run: RunData) -> dict[str, Any]:
    return metrics_for(run, run.ensemble.val, ENSEMBLE if ENSEMBLE in run.probs else ENSEMBLE_RAW)


def uncalibrated_metrics(run: RunData) -> dict[str, Any]:
    return metrics_for(run, run.ensemble.val_uncalibrated, ENSEMBLE_RAW)


def confusion_of(metrics: dict[str, Any], k: int) -> np.ndarray | None:
    """A k x k integer matrix, or None when the metrics hold none of that shape."""
    cm = metrics.get("confusion")
    try:
        cm = np.asarray(cm, np.int64)
    except (TypeError, ValueError):
        return None
    return cm if cm.shape == (k, k) else None


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Support, precision, recall and F1 per class from a confusion matrix (rows true, columns predicted).

    A class never predicted has no defined precision (NaN, shown as n/a), likewise recall without support.
    """
    cm = np.asarray(cm, np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    precision = np.divide(tp, predicted, out=np.full(len(tp), np.nan), where=predicted > 0)
    recall = np.divide(tp, support, out=np.full(len(tp), np.nan), where=support > 0)
    p, r = np.nan_to_num(precision), np.nan_to_num(recall)
    f1 = np.divide(2 * p * r, p + r, out=np.zeros(len(tp)), where=(p + r) > 0)
    f1[support == 0] = np.nan
    return {"support": support.astype(np.int64), "precision": precision, "recall": recall, "f1": f1}


def history_of(run: RunData, name: str) -> list[dict[str, Any]]:
    tune = run.manifest.models[name].tune or {}  # absent for a bundle exported outside the tune command
    history = tune.get("history") or []
    return [row for row in history if isinstance(row, dict)]


def train_seconds(history: list[dict[str, Any]]) -> float | None:
    """Wall time of the best trial's epochs (training + validation), when the history records it."""
    seconds = [float(row["epoch_seconds"]) for row in history if is_number(row.get("epoch_seconds"))]
    return sum(seconds) if seconds else None


def grid_predictions(run: RunData) -> tuple[str, np.ndarray] | None:
    """The probabilities the image grid shows: the calibrated ensemble, else the raw one, else a member."""
    for key in [ENSEMBLE, ENSEMBLE_RAW, *run.members]:
        if key in run.probs:
            return key, run.probs[key]
    return None


def grid_order(labels: np.ndarray, probs: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Positions into ``index``: mistakes first (most confident first), then correct ones (least confident first).

    Confident mistakes and hesitant hits are the images worth looking at.
    """
    preds, confidence = probs[index].argmax(1), probs[index].max(1)
    wrong = preds != labels[index]
    # lexsort: last key is primary. Mistakes sort by -confidence, correct ones by +confidence.
    return np.lexsort((np.where(wrong, -confidence, confidence), ~wrong))
