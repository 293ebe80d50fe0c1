"""Search spaces as YAML (``tune_spaces/<model>.yaml``) turned into Ray Tune domains."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from raymotion.config import ConfigError, check_train_keys

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
    """Every key is checked when the file is read: a misspelt one fails naming the file and the key."""
    path = os.path.join(spaces_dir or default_spaces_dir(), f"{model}.yaml")
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    sections = {"space", "start"}
    if set(doc) - sections:
        raise ConfigError(f"search space {path}: unknown section(s) {sorted(set(doc) - sections)}; use {sorted(sections)}")
    spec_of, start = doc.get("space") or {}, doc.get("start") or {}
    check_train_keys(spec_of, f"search space {path}")
    check_train_keys(start, f"search space {path}, start point")
    # Optuna's first point must name searched keys only; a start key outside the space is a typo or a leftover.
    if set(start) - set(spec_of):
        raise ConfigError(f"search space {path}: start key(s) {sorted(set(start) - set(spec_of))} are not in its space")
    space = {}
    for key, spec in spec_of.items():
        if isinstance(spec, dict):
            ((kind, args),) = spec.items()
            if kind not in _DOMAINS:
                raise ConfigError(f"search space {path}: {key}: unknown domain {kind!r}; use one of {sorted(_DOMAINS)}")
            space[key] = _DOMAINS[kind](args)
        else:
            space[key] = spec
    return SearchSpace(space, [start] if start else [])
