"""LeNet-5 style CNN, from scratch: the fast baseline of the zoo (~30 M multiply-adds at 64 px)."""

from __future__ import annotations

import torch.nn as nn

from raymotion.models.registry import register_model


class LeNet(nn.Module):
    def __init__(self, num_classes: int = 3, width: int = 16):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 5, padding=2, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, width), block(width, width * 2), block(width * 2, width * 4))
        # A 4x4 map, not a global average: an expression is *where* things are (mouth corners vs brows),
        # and global pooling throws that away. Adaptive pooling keeps the head input-size independent.
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(width * 4 * 16, 120),
                                        nn.ReLU(inplace=True), nn.Linear(120, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


# The whole classifier MLP is the head: both of its Linear layers are new for every task.
@register_model("lenet", input_size=64, head=("classifier.",))
def lenet(num_classes: int = 3, pretrained: bool | str = False) -> nn.Module:
    if isinstance(pretrained, str):
        raise ValueError("lenet trains from scratch: there is no pretrained format to load from a path")
    return LeNet(num_classes)
