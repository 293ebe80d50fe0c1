"""Classification metrics from logits or probabilities: sklearn.metrics and scipy.special, behind the
names and return types this project's callers use."""

from __future__ import annotations

import numpy as np
import scipy.special
from sklearn import metrics


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class; (num_classes, num_classes) int64, absent classes included."""
    return metrics.confusion_matrix(labels, preds, labels=np.arange(num_classes))


def top2_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """The share of rows whose label is among its two highest scores; tied scores rank the lower class
    index first, as ``argmax`` does (so top-2 accuracy is never below accuracy)."""
    k = scores.shape[1]
    if k <= 2:  # every label is in the top two (sklearn warns, and refuses two columns with 0/1 labels)
        return 1.0
    # sklearn ranks tied scores by the higher column first: on reversed columns that is the lower class.
    return float(metrics.top_k_accuracy_score(k - 1 - labels, scores[:, ::-1], k=2, labels=np.arange(k)))


def classification_metrics(scores: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Accuracy, top-2 accuracy, macro-F1 and per-class recall; ``scores`` are logits or probabilities."""
    labels = np.asarray(labels, np.int64)
    k = len(classes)
    if len(labels) == 0:
        return {"accuracy": float("nan"), "top2_accuracy": float("nan"), "macro_f1": float("nan")}
    scores = np.asarray(scores)
    preds = scores.argmax(1)
    recall = metrics.recall_score(labels, preds, labels=np.arange(k), average=None, zero_division=0)
    out = {
        "accuracy": metrics.accuracy_score(labels, preds),
        "top2_accuracy": top2_accuracy(scores, labels),
        # Macro over the classes present in the labels: an absent class has no defined recall.
        "macro_f1": float(metrics.f1_score(labels, preds, labels=np.unique(labels), average="macro",
                                           zero_division=0)),
    }
    out.update({f"recall_{name}": float(recall[i]) for i, name in enumerate(classes)})
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (shifted by each row's maximum)."""
    return scipy.special.softmax(logits, axis=1)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, np.ndarray]:
    """Equal-width confidence bins of the top-class probability: mean confidence, accuracy and count per bin."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    confidence, correct = probs.max(1), (probs.argmax(1) == labels).astype(np.float64)
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 goes to bin 0.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    safe = np.maximum(count, 1)
    return {
        "edges": np.linspace(0.0, 1.0, bins + 1),
        "confidence": np.bincount(index, weights=confidence, minlength=bins) / safe,
        "accuracy": np.bincount(index, weights=correct, minlength=bins) / safe,
        "count": count,
    }


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    if len(labels) == 0:
        return float("nan")
    rb = reliability_bins(probs, labels, bins)
    return float((rb["count"] * np.abs(rb["accuracy"] - rb["confidence"])).sum() / rb["count"].sum())
