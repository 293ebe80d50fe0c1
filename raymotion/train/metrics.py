"""Classification metrics from logits or probabilities (numpy; no sklearn needed)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(scores: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Accuracy, top-2 accuracy, macro-F1 and per-class recall; ``scores`` are logits or probabilities."""
    labels = np.asarray(labels, np.int64)
    k = len(classes)
    if len(labels) == 0:
        return {"accuracy": float("nan"), "top2_accuracy": float("nan"), "macro_f1": float("nan")}
    preds = scores.argmax(1)
    cm = confusion_matrix(labels, preds, k)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(1), cm.sum(0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    top2 = np.argsort(-scores, axis=1)[:, :2]
    out = {
        "accuracy": float((preds == labels).mean()),
        "top2_accuracy": float((top2 == labels[:, None]).any(1).mean()),
        # Macro over the classes present in the labels: an absent class has no defined recall.
        "macro_f1": float(f1[support > 0].mean()),
    }
    out.update({f"recall_{name}": float(recall[i]) for i, name in enumerate(classes)})
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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
