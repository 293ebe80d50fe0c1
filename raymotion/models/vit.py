"""A small timm VisionTransformer from scratch, sized for 64 px faces on 2 CPUs."""

from __future__ import annotations

import torch.nn as nn

from raymotion.models.registry import register_model

VIT_SIZE = 64
VIT_PATCH = 8  # 8x8 patches: an 8x8 grid of 64 tokens at 64 px


@register_model("vit", input_size=VIT_SIZE, head=("head.",))
def vit(num_classes: int = 3, pretrained: bool | str = False) -> nn.Module:
    import timm.models.vision_transformer as tv  # timm is heavy to import; only models that use it pay

    if isinstance(pretrained, str):
        raise ValueError("vit trains from scratch: there is no pretrained format to load from a path")
    # ViT-Tiny width (192, 3 heads) at half its depth. Mean-pooled tokens instead of a class token:
    # on small data sets pooled ViTs train faster and better (Beyer et al. 2022, "Better plain ViT
    # baselines"), and a little stochastic depth is the usual regulariser for a ViT on few images.
    return tv.VisionTransformer(img_size=VIT_SIZE, patch_size=VIT_PATCH, num_classes=num_classes, embed_dim=192,
                                depth=6, num_heads=3, mlp_ratio=4.0, class_token=False, global_pool="avg",
                                drop_path_rate=0.1)
