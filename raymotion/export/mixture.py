"""The ensemble's formula, as Serve runs it and the bundle scores it (numpy only: no fitting here).

    member:   q_m = softmax(log p_m / T_m + b_m)    each member through its own calibration
    pool, by the ensemble's rule (weights w on the simplex):
      "linear":     p_mix = sum_m w_m q_m                  the weighted mean of the probabilities
      "log-linear": p_mix = softmax(sum_m w_m log q_m)     the weighted geometric mean, renormalised
    ensemble: softmax(log p_mix / T + b)            temperature (and class bias) of the pool

The member and ensemble steps are ``temper``. Fitting T_m, b_m, w, T and b is ``raymotion.export.ensemble``
(scipy, sklearn), which a Serve replica does not import.
"""

from __future__ import annotations

import typing

import numpy as np

from raymotion.config import EnsembleRule as Rule
from raymotion.train.metrics import softmax

RULES: tuple[str, ...] = typing.get_args(Rule)

# Probabilities are clipped here before a log: a member that says exactly 0 must not make the NLL infinite.
EPS = 1e-12


def log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, np.float64), EPS, None))


def temper(probs: np.ndarray, temperature: float = 1.0, bias=None) -> np.ndarray:
    """softmax(log(p) / T + b): T > 1 softens, T < 1 sharpens; the per-class bias b (C,) moves mass between
    classes (None: zeros). A calibration record ({"temperature", "bias"}) is passed as ``**record``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = log_probs(probs) / float(temperature)
    return softmax(z if bias is None else z + np.asarray(bias, np.float64))


def combine(member_probs: dict[str, np.ndarray], weights: dict[str, float], temperature: float = 1.0, bias=None,
            rule: Rule = "linear") -> np.ndarray:
    """Ensemble probabilities (N, C) float64. Members with weight 0 may be absent from ``member_probs``;
    weights are normalised to sum 1."""
    used = [name for name, w in weights.items() if w > 0]
    if not used:
        raise ValueError("no member has a positive weight")
    missing = [name for name in used if name not in member_probs]
    if missing:
        raise KeyError(f"weighted members without probabilities: {missing}")
    total = float(sum(weights[name] for name in used))
    if rule == "linear":
        mix = sum(np.asarray(member_probs[name], np.float64) * (weights[name] / total) for name in used)
    elif rule == "log-linear":
        mix = softmax(sum(log_probs(member_probs[name]) * (weights[name] / total) for name in used))
    else:
        raise ValueError(f"unknown ensemble rule {rule!r}; known: {RULES}")
    return temper(mix, temperature, bias)


def ensemble_probabilities(member_probs: dict[str, np.ndarray], ensemble) -> np.ndarray:
    """The manifest's ensemble (a ``rundir.Ensemble``: weights, temperature, class bias, rule) of its served
    members' calibrated probabilities: the one function every reader of a run answers with."""
    return combine(member_probs, ensemble.served_weights, ensemble.temperature, ensemble.bias, ensemble.rule)


def ensemble_of_raw(raw_member_probs: dict[str, np.ndarray], manifest) -> np.ndarray:
    """The manifest's ensemble of its members' uncalibrated probabilities (a ``rundir.Manifest``): each member
    through its own calibration, then the pool; for probabilities computed elsewhere than by the served
    files (bench models: torch and each ONNX variant)."""
    return ensemble_probabilities({name: temper(p, **manifest.models[name].calibration)
                                   for name, p in raw_member_probs.items()}, manifest.ensemble)
