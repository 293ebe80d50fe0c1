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


def random_brightness(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Add an offset in [-strength, strength] to each image."""
    if strength <= 0:
        return x
    offset = (torch.rand(x.shape[0], generator=gen) * 2 - 1) * strength
    return (x + offset[:, None, None, None]).clamp_(0.0, 1.0)


def random_resized_crop(x: torch.Tensor, min_scale: float, gen: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Crop a random box of area fraction in [min_scale, 1] and aspect ratio in ``ratio`` from each
    image, resized back to the full size (one affine resample for the whole batch)."""
    if min_scale >= 1:
        return x
    n = x.shape[0]
    area = min_scale + torch.rand(n, generator=gen) * (1 - min_scale)
    log_ratio = math.log(ratio[0]) + torch.rand(n, generator=gen) * (math.log(ratio[1]) - math.log(ratio[0]))
    aspect = log_ratio.exp()
    sw, sh = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
    # Centre anywhere that keeps the box inside the image (normalised coordinates, [-1, 1]).
    tx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sw)
    ty = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sh)
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([sw, zero, tx], 1), torch.stack([zero, sh, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
    brightness: float = 0.0,
    crop_scale: float = 1.0,
) -> torch.Tensor:
    """float NCHW in [0, 1] -> float NCHW in [0, 1], same shape. Each op is off at its neutral value."""
    x = random_resized_crop(images, crop_scale, gen)
    x = random_hflip(x, hflip_p, gen)
    x = random_contrast(x, contrast, gen)
    x = random_brightness(x, brightness, gen)
    return random_rotation(x, rotation_deg, gen)
