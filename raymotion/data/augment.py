"""Random augmentations of a whole batch at once (vectorised torch on CPU workers).

Per-image Python loops cost more than the ops themselves at these sizes, so every op draws one random
parameter per image and applies it to the batch tensor in one call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_hflip(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    if p <= 0:
        return x
    flip = torch.rand(x.shape[0], generator=gen) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_contrast(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Scale each image's deviation from its mean grey by a factor in [1 - strength, 1 + strength]."""
    if strength <= 0:
        return x
    factor = 1.0 + (torch.rand(x.shape[0], generator=gen) * 2 - 1) * strength
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor[:, None, None, None] + mean).clamp_(0.0, 1.0)


def random_rotation(x: torch.Tensor, max_degrees: float, gen: torch.Generator) -> torch.Tensor:
    """Rotate each image by an angle in [-max_degrees, max_degrees]; edges repeat the border pixels."""
    if max_degrees <= 0:
        return x
    angle = (torch.rand(x.shape[0], generator=gen) * 2 - 1) * math.radians(max_degrees)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(
    images: torch.Tensor,
    gen: torch.Generator,
    *,
    rotation_deg: float = 0.0,
    hflip_p: float = 0.0,
    contrast: float = 0.0,
) -> torch.Tensor:
    """float NCHW in [0, 1] -> float NCHW in [0, 1], same shape."""
    x = random_hflip(images, hflip_p, gen)
    x = random_contrast(x, contrast, gen)
    return random_rotation(x, rotation_deg, gen)
