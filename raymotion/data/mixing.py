"""Batch-level CutMix and MixUp producing soft labels (rows sum to 1) for a soft-target loss.

CutMix's label weight is the area actually pasted, after the box is clipped to the image, so the
label says exactly how much of each image the pixels hold.
"""

from __future__ import annotations

import numpy as np
import torch


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels.long(), num_classes).float()


def _beta(alpha: float, gen: torch.Generator) -> float:
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    return float(rng.beta(alpha, alpha))


def mixup(x: torch.Tensor, target: torch.Tensor, alpha: float, gen: torch.Generator):
    """Blend every image with a partner from the same batch: x = lam*x + (1-lam)*x[perm]."""
    lam = _beta(alpha, gen)
    perm = torch.randperm(x.shape[0], generator=gen)
    return lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm], lam


def cutmix(x: torch.Tensor, target: torch.Tensor, alpha: float, gen: torch.Generator):
    """Paste a box of a partner image; returns (images, soft targets, pasted area fraction)."""
    n, _, h, w = x.shape
    lam = _beta(alpha, gen)
    cut = (1.0 - lam) ** 0.5
    cut_h, cut_w = int(round(h * cut)), int(round(w * cut))
    cy, cx = int(torch.randint(0, h, (1,), generator=gen)), int(torch.randint(0, w, (1,), generator=gen))
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, h)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, w)
    area = (y2 - y1) * (x2 - x1) / float(h * w)
    perm = torch.randperm(n, generator=gen)
    out = x.clone()
    out[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    return out, (1 - area) * target + area * target[perm], area


def mix_batch(x: torch.Tensor, labels: torch.Tensor, num_classes: int, gen: torch.Generator, *,
              cutmix_p: float = 0.0, cutmix_alpha: float = 1.0, mixup_p: float = 0.0, mixup_alpha: float = 0.2):
    """At most one of CutMix (probability cutmix_p) or MixUp (mixup_p) per batch; returns (x, soft targets)."""
    target = one_hot(labels, num_classes)
    if x.shape[0] < 2:
        return x, target
    draw = float(torch.rand(1, generator=gen))
    if draw < cutmix_p:
        x, target, _ = cutmix(x, target, cutmix_alpha, gen)
    elif draw < cutmix_p + mixup_p:
        x, target, _ = mixup(x, target, mixup_alpha, gen)
    return x, target
