"""The checkpoint format: ``model.pt`` (state dict) + ``meta.json`` (what is needed to rebuild it)."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.nn as nn

from raymotion.models import create_model

MODEL_FILE = "model.pt"
META_FILE = "meta.json"


def save_checkpoint(directory: str, model: nn.Module, meta: dict[str, Any]) -> None:
    os.makedirs(directory, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(directory, MODEL_FILE))
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


def load_checkpoint(directory: str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model (no pretrained download: the state dict holds every weight) in eval mode."""
    with open(os.path.join(directory, META_FILE)) as f:
        meta = json.load(f)
    model = create_model(meta["model"], num_classes=len(meta["classes"]), pretrained=False)
    state = torch.load(os.path.join(directory, MODEL_FILE), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval(), meta
