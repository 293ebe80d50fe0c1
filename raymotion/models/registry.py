"""Models are created by name, as in timm: ``create_model("mobilenet_v2", num_classes=3, pretrained=True)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Models trained from scratch: centre [0, 1] pixels on 0.
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]  # build(num_classes, pretrained) -> module
    input_size: int  # the size it works at on 2 CPUs; TrainConfig.input_size overrides
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretrained_weights: str | None  # where its ImageNet weights come from, or None (from scratch)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, input_size: int, mean=HALF_MEAN, std=HALF_STD, pretrained_weights: str | None = None):
    """Decorator: register ``build(num_classes, pretrained)`` under ``name``."""

    def wrap(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, build, input_size, tuple(mean), tuple(std), pretrained_weights)
        return build

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int = 3, pretrained: bool | str = False) -> nn.Module:
    """Build a model by name. ``pretrained``: False, True (packaged ImageNet weights) or a local path."""
    spec = get_model_spec(name)
    if pretrained and spec.pretrained_weights is None:
        pretrained = False  # from-scratch architectures: nothing to load
    return spec.build(num_classes=num_classes, pretrained=pretrained)
