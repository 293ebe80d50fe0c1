"""Test-time augmentation baked into the model: what is exported to ONNX is what is served."""

from __future__ import annotations

import torch
from torch import nn


class FlipAveraged(nn.Module):
    """Logits averaged over the image and its mirror image.

    Faces are close to left-right symmetric and training flips them at random, so the mirror image is a
    second, equally valid view: averaging the two costs one more forward pass and removes part of the
    model's variance. Inside the module, the flip is part of the exported graph, so Serve needs nothing
    extra and parity with torch covers it.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) + self.model(torch.flip(x, dims=[3]))) * 0.5
