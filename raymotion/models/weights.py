"""Find and load pretrained weights from local files only: nothing is downloaded at run time."""

from __future__ import annotations

import importlib.resources
import os

import torch
import torch.nn as nn


class WeightsNotFound(FileNotFoundError):
    pass


def packaged_file(package: str, relative: str, install_hint: str) -> str:
    """Path of a file inside an installed (weights-only) package."""
    try:
        path = importlib.resources.files(package).joinpath(relative)
    except ModuleNotFoundError:
        raise WeightsNotFound(f"package {package!r} is not installed; {install_hint}") from None
    if not path.is_file():
        raise WeightsNotFound(f"{path} is missing from package {package!r}; {install_hint}")
    return str(path)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def load_strict(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load with strict=True and say exactly which keys differ when they do."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or bad_shapes:
        raise ValueError(f"weights do not fit {type(model).__name__}: missing={missing[:5]} "
                         f"unexpected={unexpected[:5]} shape mismatches={sorted(bad_shapes)[:5]}")
    model.load_state_dict(state, strict=True)
    return model
