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
