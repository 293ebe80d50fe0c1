"""Hugging Face ``ViTForImageClassification``, behind a module whose forward returns the logits tensor only
(the train loop, the checkpoint and the ONNX exporter all expect ``model(x) -> Tensor``)."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from raymotion.models.registry import HALF_MEAN, HALF_STD, register_model

HF_VIT_SIZE = 64


class HFViT(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model  # a transformers ViTForImageClassification
        self.image_size = int(model.config.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A checkpoint saved at another resolution (224 for Google's ViTs) interpolates its position
        # embeddings to ours; the shapes are static at export time, so this is a plain Python branch.
        interpolate = tuple(x.shape[-2:]) != (self.image_size, self.image_size)
        return self.model(pixel_values=x, interpolate_pos_encoding=interpolate).logits


def small_vit_config(num_classes: int):
    from transformers import ViTConfig

    # The same shape as raymotion's timm "vit" (ViT-Tiny width, 6 layers, 8 px patches at 64 px), so the
    # two implementations can be compared like for like.
    return ViTConfig(image_size=HF_VIT_SIZE, patch_size=8, num_channels=3, hidden_size=192, num_hidden_layers=6,
                     num_attention_heads=3, intermediate_size=768, num_labels=num_classes)


@register_model("hf_vit", input_size=HF_VIT_SIZE, head=("model.classifier.",), mean=HALF_MEAN, std=HALF_STD)
def hf_vit(num_classes: int = 3, pretrained: bool | str = False) -> nn.Module:
    """``pretrained``: False / True (nothing packaged: from scratch) or a local directory written by
    ``save_pretrained``; its classifier is replaced by a new ``num_classes`` one. Never uses the network."""
    from transformers import ViTForImageClassification

    if isinstance(pretrained, str):
        if not os.path.isdir(pretrained):  # else transformers reads it as a Hub repo id
            raise FileNotFoundError(f"hf_vit: {pretrained!r} is not a directory written by save_pretrained")
        model = ViTForImageClassification.from_pretrained(
            pretrained, num_labels=num_classes, ignore_mismatched_sizes=True, local_files_only=True)
    else:
        model = ViTForImageClassification(small_vit_config(num_classes))
    return HFViT(model)
