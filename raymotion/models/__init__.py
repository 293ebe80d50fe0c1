"""Model zoo: one module per family, each registers its builders by name."""

# Registration side effect. timm and transformers are imported only when their models are built.
from raymotion.models import efficientnet, hf_vit, lenet, mobilenet, resnet, vit  # noqa: F401
from raymotion.models.registry import (ModelSpec, count_flops, create_model, get_model_spec, list_models,
                                       register_model, split_head_parameters)

__all__ = ["ModelSpec", "count_flops", "create_model", "get_model_spec", "list_models", "register_model",
           "split_head_parameters"]
