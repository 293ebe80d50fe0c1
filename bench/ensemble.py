"""``python -m bench ensemble RUN_DIR [RUN_DIR ...]``: the two pooling rules on the same members.

Reads each run's val predictions (rundir.read_val_predictions: every member's val probabilities as its served file gives them,
before calibration), so nothing runs but the fits: runs on the same val set can be pooled across run
directories (a member is named ``<run>:<model>``). For every set of ``min_members`` to ``max_members``
members (``--min-members 7 --max-members 7`` on a full run: its seven members only), both
rules (``raymotion.export.mixture``: "linear", "log-linear") are cross-fitted exactly as the bundle does
(members' calibrations refitted per fold) and scored out of fold, beside the best member's own out-of-fold
accuracy. The table and JSON say, per set, each rule's gain over its best member and which rule had the
lower out-of-fold log loss.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from raymotion.console import table as text_table
from raymotion.export.ensemble import cross_fitted, cross_fitted_calibration
from raymotion.export.mixture import RULES
from raymotion.rundir import read_val_predictions


@dataclass
class EnsembleBenchConfig:
    run_dirs: tuple[str, ...]
    min_members: int = 2
    max_members: int = 3
    folds: int = 5
    seed: int = 0


def load_members(run_dirs: tuple[str, ...]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``<run>:<model>`` -> raw val probabilities, and the val labels every run must share."""
    members, labels = {}, None
    for run_dir in run_dirs:
        run = os.path.basename(os.path.normpath(run_dir))
        predictions = read_val_predictions(run_dir)
        if predictions is None:
            raise ValueError(f"{run_dir}: no val predictions (is it a run directory the export wrote?)")
        if labels is None:
            labels = predictions.labels
        elif not np.array_equal(labels, predictions.labels):
            raise ValueError(f"{run_dir}: its val labels differ from {run_dirs[0]}'s (another val set)")
        for name, probs in predictions.raw_probs.items():
            members[f"{run}:{name}"] = probs
    if labels is None or len(members) < 2:
        raise ValueError(f"need at least two members across {list(run_dirs)}, found {sorted(members)}")
    return members, labels


def run_ensemble_bench(cfg: EnsembleBenchConfig) -> dict[str, Any]:
    members, labels = load_members(cfg.run_dirs)
    single = {n: float((cross_fitted_calibration(p, labels, cfg.folds, cfg.seed).argmax(1) == labels).mean())
              for n, p in members.items()}
    rows = []
    for k in range(max(2, cfg.min_members), min(cfg.max_members, len(members)) + 1):
        for names in itertools.combinations(members, k):
            subset = {n: members[n] for n in names}
            best = max(single[n] for n in names)
            row: dict[str, Any] = {"members": list(names), "best_member_accuracy": best}
            for rule in RULES:
                m = cross_fitted(subset, labels, cfg.folds, cfg.seed, fit_member_calibration=True, rule=rule)["metrics"]
                row[rule] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "log_loss": m["log_loss"],
                             "gain_points": 100 * (m["accuracy"] - best)}
            row["lower_log_loss"] = min(RULES, key=lambda r: row[r]["log_loss"])
            rows.append(row)
    wins = {rule: sum(r["lower_log_loss"] == rule for r in rows) for rule in RULES}
    return {"benchmark": "ensemble", "run_dirs": [os.path.abspath(d) for d in cfg.run_dirs], "config": vars(cfg),
            "val_images": int(len(labels)), "members_out_of_fold_accuracy": single, "rows": rows,
            "lower_log_loss_count": wins,
            "median_gain_points": {rule: float(np.median([r[rule]["gain_points"] for r in rows])) for rule in RULES}}


def table(result: dict[str, Any]) -> str:
    columns = ["members", "best"] + [c for r in RULES for c in (f"{r} acc", "gain", "log loss")]
    rows = [[", ".join(row["members"])[:70], f"{row['best_member_accuracy']:.4f}"]
            + [c for r in RULES for c in (f"{row[r]['accuracy']:.4f}", f"{row[r]['gain_points']:+.2f}",
                                          f"{row[r]['log_loss']:.4f}")] for row in result["rows"]]
    lines = [text_table(rows, columns, "<" + ">" * (len(columns) - 1))]
    wins, gains = result["lower_log_loss_count"], result["median_gain_points"]
    lines.append("lower out-of-fold log loss: " + ", ".join(f"{r} in {wins[r]}" for r in RULES)
                 + f" of {len(result['rows'])} sets; median gain over the best member: "
                 + ", ".join(f"{r} {gains[r]:+.2f} points" for r in RULES)
                 + f" ({result['val_images']} val images, out of fold)")
    return "\n".join(lines)
