"""Model zoo: one module per family, each registers its builders by name."""

from raymotion.models import lenet, mobilenet  # noqa: F401  (registration side effect)
from raymotion.models.registry import ModelSpec, create_model, get_model_spec, list_models, register_model

__all__ = ["ModelSpec", "create_model", "get_model_spec", "list_models", "register_model"]
