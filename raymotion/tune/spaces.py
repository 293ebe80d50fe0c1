"""Search spaces as YAML (``tune_spaces/<model>.yaml``) turned into Ray Tune domains.

The format (every key a TrainConfig field, augmentation fields by their own names):

    space:                      # searched keys
      lr: {loguniform: [1.0e-4, 2.0e-3]}   # log scale between two bounds
      contrast: {uniform: [0.0, 0.4]}      # linear scale
      epochs_x: {randint: [1, 4]}          # integers, upper bound excluded
      batch_size: {choice: [32, 64]}       # one of a list
      label_smoothing: 0.1                 # a constant
    when_pretrained:            # searched only when the model starts from packaged weights
      head_epochs: {choice: [1, 2]}        # (--set pretrained=false drops them)
    start:                      # the first point evaluated: a known-good configuration (optional)
      lr: 5.0e-4

A file that breaks any of this fails on load, naming the file and the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml
from ray import tune

from raymotion.config import ConfigError, check_train_keys, typed_train_changes

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


SECTIONS = ("space", "when_pretrained", "start")


def read_space_file(path: str) -> dict[str, dict[str, Any]]:
    """The file's sections, each a mapping (absent ones empty)."""
    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"search space {path}: not valid YAML: {err}") from None
    if not isinstance(doc, dict) or set(doc) - set(SECTIONS):
        unknown = sorted(set(doc) - set(SECTIONS)) if isinstance(doc, dict) else doc
        raise ConfigError(f"search space {path}: unknown section(s) {unknown}; use {list(SECTIONS)}")
    for name in SECTIONS:
        if not isinstance(doc.get(name) or {}, dict):
            raise ConfigError(f"search space {path}: section {name!r} must be a mapping of TrainConfig keys")
    return {name: doc.get(name) or {} for name in SECTIONS}


def domain(path: str, key: str, spec: Any) -> Any:
    """A Tune domain for ``{kind: args}``, or the constant ``spec``."""
    if not isinstance(spec, dict):
        return spec
    if len(spec) != 1 or next(iter(spec)) not in _DOMAINS:
        raise ConfigError(f"search space {path}: {key}: {spec!r} is not one of {{kind: args}} with kind in {sorted(_DOMAINS)}")
    ((kind, args),) = spec.items()
    try:
        return _DOMAINS[kind](args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"search space {path}: {key}: bad {kind} arguments {args!r} ({err})") from None


def check_values(section: dict[str, Any], source: str) -> None:
    """Each value the section can give a key (a constant, a domain's bounds or choices) typed and range-checked
    as TrainConfig takes it: a bound of the wrong type or range fails on load, not in the trial that draws it.
    A domain's form is checked by ``domain``."""
    for key, spec in section.items():
        values = [spec]
        if isinstance(spec, dict):  # a domain: its form is domain()'s to check
            args = next(iter(spec.values()), None) if len(spec) == 1 else None
            if not isinstance(args, (list, tuple)):
                continue
            values = list(args)
        for value in values:
            typed_train_changes({key: value}, source)


def load_search_space(model: str, spaces_dir: str | None = None, pretrained: bool = True,
                      pinned: Iterable[str] = ()) -> SearchSpace:
    """Every key is checked when the file is read: a misspelt one fails naming the file and the key.
    ``pretrained``: whether the model starts from packaged weights (else ``when_pretrained`` is dropped).
    ``pinned``: keys chosen elsewhere (TrainConfig.pinned), left out of the space and its start point."""
    path = os.path.join(spaces_dir or default_spaces_dir(), f"{model}.yaml")
    doc = read_space_file(path)
    for name in SECTIONS:
        check_train_keys(doc[name], f"search space {path}, section {name!r}")
    both = set(doc["space"]) & set(doc["when_pretrained"])
    if both:
        raise ConfigError(f"search space {path}: key(s) {sorted(both)} in both 'space' and 'when_pretrained'")
    spec_of = {**doc["space"], **(doc["when_pretrained"] if pretrained else {})}
    start = {k: v for k, v in doc["start"].items() if pretrained or k not in doc["when_pretrained"]}
    # Optuna's first point must name searched keys only; a start key outside the space is a typo or a leftover.
    if set(start) - set(spec_of):
        raise ConfigError(f"search space {path}: start key(s) {sorted(set(start) - set(spec_of))} are not in its space")
    domains = {key: domain(path, key, spec) for key, spec in spec_of.items()}  # each domain's form first
    for name in SECTIONS:
        check_values(doc[name], f"search space {path}, section {name!r}")
    space = {key: d for key, d in domains.items() if key not in set(pinned)}
    start = {k: v for k, v in start.items() if k in space}
    return SearchSpace(space, [start] if start else [])
