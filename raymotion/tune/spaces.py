"""Search spaces as YAML (``tune_spaces/<model>.yaml``) turned into Ray Tune domains."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from raymotion.config import TrainConfig

_DOMAINS = {
    "uniform": lambda a: tune.uniform(*a),
    "loguniform": lambda a: tune.loguniform(*a),
    "randint": lambda a: tune.randint(*a),
    "choice": lambda a: tune.choice(list(a)),
}


@dataclass
class SearchSpace:
    param_space: dict[str, Any]
    start: list[dict[str, Any]]  # points_to_evaluate


def default_spaces_dir() -> str:
    """``tune_spaces/`` at the repository root (beside the package), or under the working directory."""
    for candidate in (Path(__file__).resolve().parents[2] / "tune_spaces", Path.cwd() / "tune_spaces"):
        if candidate.is_dir():
            return str(candidate)
    raise FileNotFoundError("no tune_spaces/ directory found; pass --spaces DIR")


def load_search_space(model: str, spaces_dir: str | None = None) -> SearchSpace:
    path = os.path.join(spaces_dir or default_spaces_dir(), f"{model}.yaml")
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    space = {}
    for key, spec in (doc.get("space") or {}).items():
        if key not in fields:
            raise ValueError(f"{path}: {key!r} is not a TrainConfig field")
        if isinstance(spec, dict):
            ((kind, args),) = spec.items()
            if kind not in _DOMAINS:
                raise ValueError(f"{path}: {key}: unknown domain {kind!r}; use one of {sorted(_DOMAINS)}")
            space[key] = _DOMAINS[kind](args)
        else:
            space[key] = spec
    start = doc.get("start")
    return SearchSpace(space, [start] if start else [])
