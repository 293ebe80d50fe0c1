"""Batch-level CutMix and MixUp producing soft labels (rows sum to 1) for a soft-target loss.

Images are NHWC arrays (uint8 as they travel, or float). CutMix's label weight is the area actually
pasted, after the box is clipped to the image, so the label says exactly how much of each image the
pixels hold. MixUp on uint8 rounds the blend to the nearest grey level.
"""

from __future__ import annotations

import cv2
import numpy as np


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]


def mixup(x: np.ndarray, target: np.ndarray, alpha: float, rng: np.random.Generator):
    """Blend every image with a partner from the same batch: x = lam*x + (1-lam)*x[perm]."""
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(x.shape[0])
    partner = x[perm]
    if x.dtype == np.uint8:  # one rounded, saturating pass in C instead of a float copy of the batch
        out = cv2.addWeighted(np.ascontiguousarray(x).reshape(x.shape[0], -1), lam,
                              partner.reshape(x.shape[0], -1), 1 - lam, 0.0).reshape(x.shape)
    else:
        out = lam * x + (1 - lam) * partner
    return out, (lam * target + (1 - lam) * target[perm]).astype(np.float32), lam


def cutmix(x: np.ndarray, target: np.ndarray, alpha: float, rng: np.random.Generator):
    """Paste a box of a partner image; returns (images, soft targets, pasted area fraction)."""
    n, h, w = x.shape[:3]
    lam = float(rng.beta(alpha, alpha))
    cut = (1.0 - lam) ** 0.5
    cut_h, cut_w = int(round(h * cut)), int(round(w * cut))
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, h)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, w)
    area = (y2 - y1) * (x2 - x1) / float(h * w)
    perm = rng.permutation(n)
    out = x.copy()
    out[:, y1:y2, x1:x2] = x[perm, y1:y2, x1:x2]
    return out, ((1 - area) * target + area * target[perm]).astype(np.float32), area


def mix_batch(x: np.ndarray, labels: np.ndarray, num_classes: int, rng: np.random.Generator, *,
              cutmix_p: float = 0.0, cutmix_alpha: float = 1.0, mixup_p: float = 0.0, mixup_alpha: float = 0.2,
              target: np.ndarray | None = None):
    """At most one of CutMix (probability cutmix_p) or MixUp (mixup_p) per batch; returns (x, soft targets).
    ``target``: each image's own target before mixing (a distilled one); default the one-hot labels."""
    target = one_hot(labels, num_classes) if target is None else np.asarray(target, np.float32)
    if x.shape[0] < 2:
        return x, target
    draw = float(rng.random())
    if draw < cutmix_p:
        x, target, _ = cutmix(x, target, cutmix_alpha, rng)
    elif draw < cutmix_p + mixup_p:
        x, target, _ = mixup(x, target, mixup_alpha, rng)
    return x, target
