"""The ensemble's formula, as Serve runs it and the bundle scores it (numpy only: no fitting here).

    member:   softmax(log p_m / T_m + b_m)          each member through its own calibration
    mixture:  p_mix = sum_m w_m p_m / sum_m w_m      weighted mean of calibrated member probabilities
    ensemble: softmax(log p_mix / T)                 temperature scaling of the mixture

Both steps are ``temper``. Fitting T_m, b_m, w and T is ``raymotion.export.ensemble`` (scipy, sklearn),
which a Serve replica does not import.
"""

from __future__ import annotations

import numpy as np

from raymotion.train.metrics import softmax

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


def combine(member_probs: dict[str, np.ndarray], weights: dict[str, float], temperature: float = 1.0) -> np.ndarray:
    """Ensemble probabilities (N, C) float64. Members with weight 0 may be absent from ``member_probs``."""
    used = [name for name, w in weights.items() if w > 0]
    if not used:
        raise ValueError("no member has a positive weight")
    missing = [name for name in used if name not in member_probs]
    if missing:
        raise KeyError(f"weighted members without probabilities: {missing}")
    total = float(sum(weights[name] for name in used))
    mix = sum(np.asarray(member_probs[name], np.float64) * (weights[name] / total) for name in used)
    return temper(mix, temperature)
