"""``python -m bench tune``: does Optuna + ASHA find a good model with less compute than random
search that runs every trial to the end, on this problem?

For each seed, two searches over the same space (the model's ``tune_spaces/`` file without its start
point, so that neither is handed a known-good configuration) with the same trial budget:
Optuna's TPE with ASHA early stopping, and Tune's random sampling with every trial run to the end (the
exhaustive budget). The target is the best val macro-F1 any exhaustive run found, less ``tolerance``;
for each search: the trial-epochs and minutes spent until a trial first reaches it (counted in trial
order, up to the epoch that reached it). Also each trial's fixed start (from its code starting to its
first training batch) and the per-trial overhead of the whole experiment.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import yaml

from raymotion.config import TrainConfig, TuneSettings
from raymotion.console import table as text_table
from raymotion.tune.spaces import default_spaces_dir

METHODS = {"optuna+asha": ("optuna", "asha"), "random, all epochs": ("random", "fifo")}


@dataclass
class TuneBenchConfig:
    data_root: str
    model: str = "lenet"
    input_size: int = 48
    epochs: int = 6
    trials: int = 10
    seeds: tuple[int, ...] = (0, 1)
    max_batches_per_epoch: int = 20
    batch_size: int = 64
    grace_period: int = 1
    reduction_factor: int = 3
    tolerance: float = 0.01  # "within 1 point of macro-F1"


def space_without_start(model: str, directory: str) -> str:
    """A copy of the model's space file with no start point: both searches start from nothing."""
    with open(os.path.join(default_spaces_dir(), f"{model}.yaml")) as f:
        doc = yaml.safe_load(f)
    doc.pop("start", None)
    with open(os.path.join(directory, f"{model}.yaml"), "w") as f:
        yaml.safe_dump(doc, f)
    return directory


def trial_curve(rows: list[dict[str, Any]], histories: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per trial, in the order trials ran: its epochs, and its per-epoch macro-F1 and seconds."""
    return [{"trial_id": row["trial_id"], "stop_reason": row["stop_reason"],
             "f1": [r.get("val_macro_f1", float("nan")) for r in history],
             "seconds": [r.get("epoch_seconds", 0.0) for r in history], "start_seconds": row.get("start_seconds")}
            for row, history in zip(rows, histories)]


def cost_to_reach(curve: list[dict[str, Any]], target: float) -> dict[str, float]:
    """Trial-epochs and training minutes spent until an epoch first reaches ``target`` (inf: never)."""
    epochs = seconds = 0.0
    for trial in curve:
        for f1, s in zip(trial["f1"], trial["seconds"]):
            epochs, seconds = epochs + 1, seconds + s
            if f1 >= target:
                return {"trial_epochs": epochs, "train_minutes": seconds / 60}
    return {"trial_epochs": math.inf, "train_minutes": math.inf}


def run_search(cfg: TuneBenchConfig, method: str, seed: int, source, cached, spaces_dir: str, work_dir: str) -> dict[str, Any]:
    from raymotion.tune.experiment import tune_model

    search, scheduler = METHODS[method]
    base = TrainConfig(model=cfg.model, input_size=cfg.input_size, epochs=cfg.epochs, batch_size=cfg.batch_size,
                       max_batches_per_epoch=cfg.max_batches_per_epoch, seed=seed, pretrained=False)
    settings = TuneSettings(num_samples=cfg.trials, search=search, scheduler=scheduler, seed=seed,
                            grace_period=cfg.grace_period, reduction_factor=cfg.reduction_factor)
    run_dir = os.path.join(work_dir, f"{method.split(',')[0].replace('+', '-')}-{seed}")
    seen: list = []
    started = time.perf_counter()
    result = tune_model(base, classes=source.classes, class_counts=[source.counts("train")[c] for c in source.classes],
                        cached=cached, settings=settings, run_dir=run_dir, spaces_dir=spaces_dir,
                        on_trials=lambda rows, histories: seen.append(trial_curve(rows, histories)))
    wall = time.perf_counter() - started
    (curve,) = seen
    train_seconds = sum(sum(t["seconds"]) for t in curve)
    return {"method": method, "seed": seed, "best_f1": result.metrics.get("val_macro_f1"), "wall_minutes": wall / 60,
            "trial_epochs": sum(len(t["f1"]) for t in curve), "train_minutes": train_seconds / 60,
            "overhead_per_trial_s": (wall - train_seconds) / max(1, len(curve)),
            "start_seconds": [t["start_seconds"] for t in curve if t["start_seconds"] is not None], "curve": curve}


def run_tune_bench(cfg: TuneBenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    from bench.machine import describe_machine
    from raymotion.data import open_data
    from raymotion.data.pipeline import load_cached
    from raymotion.runtime import start_local_ray

    machine = describe_machine()
    log(f"cpu: {machine['cpu_model']}, {machine['usable_cpus']} usable, flags {' '.join(machine['vector_extensions'])}")
    source = open_data(cfg.data_root)
    start_local_ray()
    cached, _ = load_cached(source, cfg.input_size)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as work:
        spaces = space_without_start(cfg.model, work)
        for seed in cfg.seeds:
            for method in METHODS:
                runs.append(run_search(cfg, method, seed, source, cached, spaces, work))
                r = runs[-1]
                log(f"{method} seed {seed}: best macro-F1 {r['best_f1']:.4f}, {r['trial_epochs']} trial-epochs, "
                    f"{r['wall_minutes']:.1f} min")
    return summarize(cfg, machine, runs)


def summarize(cfg: TuneBenchConfig, machine: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per search, the cost to reach the target; over seeds, each method's total, where a search that never
    reached it counts everything it spent (a lower bound of its cost), and how many seeds reached it."""
    best = max(r["best_f1"] for r in runs if r["method"] == "random, all epochs")
    target = best - cfg.tolerance
    for r in runs:
        r.update({f"to_target_{k}": v for k, v in cost_to_reach(r["curve"], target).items()})
    totals = {m: {"reached": sum(math.isfinite(r["to_target_trial_epochs"]) for r in runs if r["method"] == m),
                  "seeds": sum(r["method"] == m for r in runs),
                  **{k: sum(r[f"to_target_{k}"] if math.isfinite(r[f"to_target_{k}"]) else r[k]
                            for r in runs if r["method"] == m) for k in ("trial_epochs", "train_minutes")}}
              for m in METHODS}
    fast, full = totals["optuna+asha"], totals["random, all epochs"]
    starts = [s for r in runs for s in r["start_seconds"]]
    return {"machine": machine, "config": asdict(cfg), "target_macro_f1": target, "exhaustive_best_macro_f1": best,
            "runs": runs, "totals_to_target": totals,
            "ratio_trial_epochs": fast["trial_epochs"] / full["trial_epochs"],
            "ratio_train_minutes": fast["train_minutes"] / full["train_minutes"],
            "trial_start_seconds": {"median": statistics.median(starts), "min": min(starts), "max": max(starts)} if starts else {},
            "overhead_per_trial_s": statistics.median(r["overhead_per_trial_s"] for r in runs)}


def table(result: dict[str, Any]) -> str:
    m, c = result["machine"], result["config"]
    lines = [f"cpu: {m['cpu_model']} ({m['usable_cpus']} usable); flags: {' '.join(m['vector_extensions'])}",
             f"{c['model']} at {c['input_size']} px, {c['trials']} trials x <= {c['epochs']} epochs "
             f"(<= {c['max_batches_per_epoch']} batches of {c['batch_size']}), seeds {list(c['seeds'])}; "
             f"ASHA grace {c['grace_period']}, reduction {c['reduction_factor']}",
             f"target: exhaustive best macro-F1 {result['exhaustive_best_macro_f1']:.4f} - {c['tolerance']:.2f} "
             f"= {result['target_macro_f1']:.4f}", "",
             text_table([(r["method"], r["seed"], f"{r['best_f1']:.4f}", r["trial_epochs"],
                          f"{r['to_target_trial_epochs']:.0f}", f"{r['train_minutes']:.2f}",
                          f"{r['to_target_train_minutes']:.2f}", f"{r['wall_minutes']:.1f}") for r in result["runs"]],
                        ["search", "seed", "best F1", "trial-epochs", "to target", "train min", "to target", "wall min"],
                        "<>>>>>>>")]
    t = result["totals_to_target"]
    lines += ["", "to reach the target, summed over seeds (a search that never reached it counts all it spent):"]
    lines += [f"  {m}: {v['trial_epochs']:.0f} trial-epochs, {v['train_minutes']:.2f} training minutes; "
              f"reached in {v['reached']} of {v['seeds']} seeds" for m, v in t.items()]
    lines += [f"Optuna+ASHA / random: trial-epochs {result['ratio_trial_epochs']:.2f}x, "
              f"training minutes {result['ratio_train_minutes']:.2f}x"]
    s = result["trial_start_seconds"]
    if s:
        lines.append(f"a trial's fixed start (its code starting -> first training batch): median {s['median']:.1f} s "
                     f"(min {s['min']:.1f}, max {s['max']:.1f}); experiment overhead per trial (wall - training): "
                     f"{result['overhead_per_trial_s']:.1f} s")
    return "\n".join(lines)
