"""The checkpoint format: ``model.pt`` (state dict) + ``meta.json`` (raymotion.rundir.CheckpointMeta)."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

from raymotion import rundir
from raymotion.models import create_model

MODEL_FILE = rundir.CHECKPOINT_MODEL
META_FILE = rundir.CHECKPOINT_META
# Beside them in Train's checkpoints: optimizer, schedule, scaler and early-stopping state, from which a
# restarted worker group resumes (train.loop.resume_state). Export and Serve never read it.
RESUME_FILE = "resume.pt"


def save_checkpoint(directory: str, model: nn.Module, meta: dict[str, Any]) -> None:
    """``meta`` is validated before anything is written: export reads it back through the same model."""
    record = rundir.CheckpointMeta.model_validate(meta)
    os.makedirs(directory, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(directory, MODEL_FILE))
    rundir.write_checkpoint_meta(directory, record)


def load_checkpoint(directory: str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model (no pretrained download: the state dict holds every weight) in eval mode; the meta
    as its JSON (validated by rundir.CheckpointMeta)."""
    meta = rundir.read_checkpoint_meta(directory)
    model = create_model(meta.model, num_classes=len(meta.classes), pretrained=False)
    state = torch.load(os.path.join(directory, MODEL_FILE), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval(), meta.model_dump(exclude_none=True)
