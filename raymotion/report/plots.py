"""The report's figures as PNG files (matplotlib, Agg canvas; no pyplot, so no global state or display)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from raymotion.train.metrics import reliability_bins

DPI = 100


def _save(fig: Figure, path: str) -> str:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one metric; rows without it are skipped, rows without an epoch use their position."""
    xs, ys = [], []
    for position, row in enumerate(history, start=1):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            epoch = row.get("epoch")
            xs.append(float(epoch) if isinstance(epoch, (int, float)) and np.isfinite(epoch) else float(position))
            ys.append(float(value))
    return xs, ys


def training_curves(history: list[dict[str, Any]], title: str, path: str, best_epoch: Any = None) -> str | None:
    """Loss (train, val) and val macro-F1 / accuracy (and train accuracy) against epoch, the exported
    checkpoint's epoch marked; None without data."""
    panels = [("loss", [("train_loss", "train loss"), ("val_loss", "val loss")]),
              ("score", [("val_macro_f1", "val macro-F1"), ("val_accuracy", "val accuracy"),
                         ("train_accuracy", "train accuracy")])]
    series = [[(label, *_series(history, key)) for key, label in keys] for _, keys in panels]
    if not any(xs for panel in series for _, xs, _ in panel):
        return None
    fig = Figure(figsize=(8, 3.2))
    for i, ((ylabel, _), panel) in enumerate(zip(panels, series)):
        ax = fig.add_subplot(1, 2, i + 1)
        for label, xs, ys in panel:
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
        if isinstance(best_epoch, (int, float)) and not isinstance(best_epoch, bool):
            ax.axvline(float(best_epoch), color="grey", linestyle=":", linewidth=1, label="exported epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ylabel == "score":
            ax.set_ylim(0, 1.02)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def confusion(cm: np.ndarray, classes: list[str], title: str, path: str) -> str:
    """Counts, annotated; colour is the row share so that rare classes stay readable."""
    cm = np.asarray(cm, np.int64)
    k = len(classes)
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    size = 1.2 + 0.7 * k
    fig = Figure(figsize=(size + 0.8, size))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for t in range(k):
        for p in range(k):
            ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=10,
                    color="white" if share[t, p] > 0.5 else "black", fontweight="bold" if t == p else "normal")
    ax.set_xticks(range(k), classes, rotation=30, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def weights_bar(weights: dict[str, float], path: str) -> str:
    names = list(weights)
    values = [float(weights[n]) for n in names]
    fig = Figure(figsize=(1.5 + 1.0 * len(names), 3))
    ax = fig.add_subplot(1, 1, 1)
    bars = ax.bar(range(len(names)), values, color="#4878a8")
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("weight")
    ax.set_ylim(0, max(values + [0.0]) * 1.2 or 1.0)
    ax.set_title("ensemble weights", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def reliability(curves: list[tuple[str, np.ndarray, float]], labels: np.ndarray, path: str, bins: int = 15) -> str:
    """Accuracy against mean confidence per confidence bin, one line per (label, probs, ece); the diagonal
    is perfect calibration. Below it: how many images fall in each bin."""
    fig = Figure(figsize=(5, 5.6))
    ax = fig.add_axes((0.14, 0.34, 0.82, 0.6))
    hist = fig.add_axes((0.14, 0.08, 0.82, 0.16), sharex=ax)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    width = 1.0 / bins
    for i, (label, probs, ece) in enumerate(curves):
        rb = reliability_bins(probs, labels, bins)
        used = rb["count"] > 0
        ax.plot(rb["confidence"][used], rb["accuracy"][used], marker="o", markersize=4,
                label=f"{label} (ECE {ece:.3f})")
        offset = (i - (len(curves) - 1) / 2) * width / max(1, len(curves))
        hist.bar(rb["edges"][:-1] + width / 2 + offset, rb["count"], width=width / max(1, len(curves)), alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("reliability (top-class confidence)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    hist.set_xlabel("confidence")
    hist.set_ylabel("images")
    return _save(fig, path)


def thumbnail(image: np.ndarray, path: str) -> str:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:  # single-channel thumbnails: PIL wants (h, w)
        image = image[..., 0]
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path, format="PNG")
    return path


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
