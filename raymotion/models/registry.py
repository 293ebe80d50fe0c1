"""Models are created by name, as in timm: ``create_model("mobilenet_v2", num_classes=3, pretrained=True)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from raymotion.config import MODEL_NAMES

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
    # Name prefixes of the new classification head's parameters (as in ``named_parameters()`` of the
    # unwrapped module): what trains alone while the backbone is frozen (TrainConfig.head_epochs).
    head: tuple[str, ...]


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, input_size: int, head: tuple[str, ...], mean=HALF_MEAN, std=HALF_STD,
                   pretrained_weights: str | None = None):
    """Decorator: register ``build(num_classes, pretrained)`` under ``name``."""
    head = tuple(head)
    if not head or not all(isinstance(p, str) and p for p in head):
        raise ValueError(f"model {name!r}: head must be non-empty parameter-name prefixes, got {head!r}")

    if name not in MODEL_NAMES:  # configs check names against that torch-free list
        raise ValueError(f"model {name!r} is not in raymotion.config.MODEL_NAMES; add it there")

    def wrap(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, build, input_size, tuple(mean), tuple(std), pretrained_weights, head)
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
    """Build a model by name. ``pretrained``: False, True (packaged ImageNet weights) or a local path.

    ``True`` for a model without packaged weights means "from scratch" (TrainConfig defaults to True for
    every model); a path is always handed to the builder, which loads it or says why it cannot.
    """
    spec = get_model_spec(name)
    if pretrained is True and spec.pretrained_weights is None:
        pretrained = False
    return spec.build(num_classes=num_classes, pretrained=pretrained)


def count_flops(model: nn.Module, input_size: int) -> int:
    """FLOPs of one image through ``model`` (torch's FlopCounterMode: conv / matmul, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, input_size, input_size))
    return int(counter.get_total_flops())


def split_head_parameters(model: nn.Module, name: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone parameters, head parameters) of a model built by ``create_model(name, ...)``.

    Pass the plain module (``model.module`` of a DDP wrapper): the names must be the ones the spec knows.
    """
    prefixes = get_model_spec(name).head
    backbone, head = [], []
    for param_name, param in model.named_parameters():
        (head if param_name.startswith(prefixes) else backbone).append(param)
    if not head:
        names = [n for n, _ in model.named_parameters()]
        hint = " (a DDP wrapper? pass model.module)" if names and names[0].startswith("module.") else ""
        raise ValueError(f"head prefixes {prefixes} of {name!r} match no parameter of {type(model).__name__}"
                         f"{hint}; last parameters: {names[-3:]}")
    return backbone, head
