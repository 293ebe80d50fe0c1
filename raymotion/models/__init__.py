"""Model zoo: one module per family, each registers its builders by name."""

# Registration side effect. timm and transformers are imported only when their models are built.
from raymotion.models import efficientnet, hf_vit, lenet, mobilenet, resnet, vit  # noqa: F401
from raymotion.models.registry import (ModelSpec, count_flops, create_model, get_model_spec, list_models,
                                       register_model, split_head_parameters)

from raymotion.config import MODEL_NAMES

# Every name configs accept builds: a name listed without a module that registers it fails here.
if set(MODEL_NAMES) != set(list_models()):
    raise ImportError(f"raymotion.config.MODEL_NAMES {sorted(MODEL_NAMES)} != the registered models {list_models()}")

__all__ = ["ModelSpec", "count_flops", "create_model", "get_model_spec", "list_models", "register_model",
           "split_head_parameters"]
