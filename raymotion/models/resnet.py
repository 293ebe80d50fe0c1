"""torchvision ResNet-34, from scratch: no ResNet weights are packaged for offline use."""

from __future__ import annotations

import torch.nn as nn

from raymotion.models.registry import register_model
from raymotion.models.weights import load_state_dict, load_strict


# torchvision's stem as is (7x7 stride 2 + max-pool): at 64 px the last stage sees a 2x2 map. A CIFAR-style
# stem (3x3 stride 1, no max-pool) keeps 4x more resolution per side but costs 16x the compute, more than
# a CPU run can afford without an accuracy gain to show for it.
@register_model("resnet34", input_size=64, head=("fc.",))
def resnet34(num_classes: int = 3, pretrained: bool | str = False) -> nn.Module:
    """``pretrained``: False / True (nothing packaged: from scratch) or a local path to a torchvision
    ``resnet34`` ImageNet state dict (1000 classes), loaded strictly before the head is replaced."""
    import torchvision  # here, not at the top: a Train worker that builds another family does not pay its import
    if isinstance(pretrained, str):
        model = torchvision.models.resnet34()
        load_strict(model, load_state_dict(pretrained))
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model
    return torchvision.models.resnet34(num_classes=num_classes)
