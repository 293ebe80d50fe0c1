"""One Tune experiment per model: Optuna proposes, ASHA stops bad trials early, Ray Train trains.

Ray Train V2 pattern: each trial is a small function trainable that builds and fits a TorchTrainer;
``TuneReportCallback`` forwards every ``ray.train.report`` (with its checkpoint path) to Tune.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import ray.data
from ray import tune
# CHECKPOINT_PATH_KEY: the metrics key under which TuneReportCallback reports each checkpoint's path.
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from raymotion.config import TrainConfig, TuneSettings
from raymotion.train.trainer import build_trainer
from raymotion.tune.spaces import load_search_space

@dataclass
class ModelTuneResult:
    model: str
    config: dict[str, Any]  # the best trial's full TrainConfig
    metrics: dict[str, Any]  # the best trial's best epoch
    checkpoint_path: str
    trials: int
    stopped_early: int
    failed: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)  # per-epoch metrics of the best trial


def run_trial(config: dict[str, Any], *, base: dict[str, Any], classes: list[str], class_counts: list[int],
              cached: dict[str, ray.data.Dataset], storage_path: str) -> None:
    """The Tune trainable: one TorchTrainer run with this trial's hyperparameters."""
    cfg = TrainConfig(**base).replace(source=f"Tune search space of {base['model']}", **config)
    trial_id = tune.get_context().get_trial_id()
    trainer = build_trainer(cfg, classes=classes, class_counts=class_counts, cached=cached, storage_path=storage_path,
                            name=f"train-{cfg.model}-{trial_id}", callbacks=[TuneReportCallback()])
    trainer.fit()


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}


def _best_epoch(grid, settings: TuneSettings) -> tuple[dict[str, Any] | None, Any, dict[int, list[dict[str, Any]]]]:
    """(best row, its trial's result, per-trial histories by id(result)) over every trial's epochs."""
    sign = 1.0 if settings.mode == "max" else -1.0
    best_row, best_trial, best_key, histories = None, None, None, {}
    for result in grid:
        if result.metrics_dataframe is None:
            continue
        rows = [_clean(r) for r in result.metrics_dataframe.to_dict("records")]
        histories[id(result)] = rows
        for row in rows:
            # Train keeps only its best checkpoint per trial (the latest among ties): a row whose
            # checkpoint was deleted is not a candidate. Ties go to the later epoch.
            path = row.get(CHECKPOINT_PATH_KEY)
            if not path or settings.metric not in row or not os.path.isdir(path):
                continue
            key = (sign * row[settings.metric], row.get("epoch", 0))
            if best_key is None or key > best_key:
                best_row, best_trial, best_key = row, result, key
    return best_row, best_trial, histories


def tune_model(base: TrainConfig, *, classes: list[str], class_counts: list[int], cached: dict[str, ray.data.Dataset],
               settings: TuneSettings, storage_path: str, spaces_dir: str | None = None,
               callbacks: Sequence[tune.Callback] = ()) -> ModelTuneResult:
    """Search ``tune_spaces/<model>.yaml`` around ``base``; return the best epoch of the best trial.
    ``callbacks``: Tune callbacks (progress lines); Tune's own loggers (CSV, JSON, TensorBoard) stay on."""
    space = load_search_space(base.model, spaces_dir)
    # Tune's objective is also what Train keeps and early-stops on: one (metric, mode) pair for all three.
    base = base.replace(source="TuneSettings", metric=settings.metric, mode=settings.mode)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base.to_dict(), classes=classes, class_counts=class_counts, cached=cached,
                             storage_path=storage_path),
        # The trial itself only drives; Train workers request their own CPUs.
        {"cpu": 0.1},
    )
    searcher = OptunaSearch(points_to_evaluate=space.start or None, seed=settings.seed)
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max(1, base.epochs),
                              grace_period=min(settings.grace_period, max(1, base.epochs)),
                              reduction_factor=settings.reduction_factor)
    tuner = tune.Tuner(
        trainable,
        param_space=space.param_space,
        tune_config=tune.TuneConfig(metric=settings.metric, mode=settings.mode, search_alg=searcher,
                                    scheduler=scheduler, num_samples=settings.num_samples,
                                    max_concurrent_trials=settings.max_concurrent_trials),
        run_config=tune.RunConfig(storage_path=storage_path, name=f"tune-{base.model}", verbose=0,
                                  callbacks=list(callbacks)),
    )
    started = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - started

    best_row, best_trial, histories = _best_epoch(grid, settings)
    if best_row is None:
        errors = "; ".join(str(r.error)[:300] for r in grid if r.error)
        raise RuntimeError(f"no trial of {base.model} produced a checkpoint. Errors: {errors or 'none reported'}")

    epochs_done = [len(h) for h in histories.values()]
    best_config = base.replace(source=f"best trial of {base.model}", **best_trial.config).to_dict()
    return ModelTuneResult(
        model=base.model,
        config=best_config,
        metrics={k: v for k, v in best_row.items() if k.startswith(("val_", "train_", "epoch"))},
        checkpoint_path=best_row[CHECKPOINT_PATH_KEY],
        trials=len(grid),
        stopped_early=sum(1 for n in epochs_done if n < base.epochs),
        failed=sum(1 for r in grid if r.error),
        seconds=seconds,
        history=histories[id(best_trial)],
    )


def copy_checkpoint(result: ModelTuneResult, destination: str) -> str:
    """Copy the best checkpoint into the run directory, which then stands on its own."""
    shutil.copytree(result.checkpoint_path, destination, dirs_exist_ok=True)
    return destination
