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
# What a restarted worker needs to continue where the checkpoint left off (optimizer, schedule, grad
# scaler, early stopping); training's own, so the run directory's copy leaves it out.
TRAIN_STATE_FILE = "train_state.pt"


def save_checkpoint(directory: str, model: nn.Module, meta: dict[str, Any],
                    train_state: dict[str, Any] | None = None) -> None:
    """``meta`` is validated before anything is written: export reads it back through the same model."""
    record = rundir.CheckpointMeta.model_validate(meta)
    os.makedirs(directory, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(directory, MODEL_FILE))
    if hasattr(model, "save_pretrained"):  # a transformers member is also saved the way transformers reads it
        model.save_pretrained(os.path.join(directory, rundir.CHECKPOINT_TRANSFORMERS))
    if train_state is not None:
        torch.save(train_state, os.path.join(directory, TRAIN_STATE_FILE))
    rundir.write_checkpoint_meta(directory, record)


def load_train_state(directory: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(model state dict, train state) of a checkpoint written with a train state, else None."""
    path = os.path.join(directory, TRAIN_STATE_FILE)
    if not os.path.exists(path):
        return None
    return read_model_state(directory), torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(directory: str) -> tuple[nn.Module, rundir.CheckpointMeta]:
    """Rebuild the model (no pretrained download: the state dict holds every weight) in eval mode, with its
    meta."""
    meta = rundir.read_checkpoint_meta(directory)
    model = create_model(meta.model, num_classes=len(meta.classes), pretrained=False)
    model.load_state_dict(read_model_state(directory), strict=True)
    return model.eval(), meta


def read_model_state(directory: str) -> dict[str, torch.Tensor]:
    """A checkpoint's model state dict, on the CPU."""
    return torch.load(os.path.join(directory, MODEL_FILE), map_location="cpu", weights_only=True)


def load_initial_weights(model: nn.Module, directory: str, model_name: str, classes: list[str]) -> None:
    """Load a checkpoint's weights into ``model`` (TrainConfig.init_checkpoint), strictly, after checking
    that it is the same model and classes: a mismatch fails here by name, not as a shape error."""
    meta = rundir.read_checkpoint_meta(directory)
    if meta.model != model_name or list(meta.classes) != list(classes):
        raise ValueError(f"init_checkpoint {directory}: a {meta.model} of classes {meta.classes}, "
                         f"not a {model_name} of classes {classes}")
    model.load_state_dict(read_model_state(directory), strict=True)
