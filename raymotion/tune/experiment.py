"""One Tune experiment per model: Optuna proposes, ASHA stops bad trials early, each trial trains.

Each trial is a small function trainable. With more than one worker it builds and fits a TorchTrainer
(Ray Train V2's pattern; ``TuneReportCallback`` forwards every ``ray.train.report``, with its checkpoint
path, to Tune). With one worker it runs the same loop itself (train.loop.TrialSession), reporting to Tune
directly: Train's actors would each be one more process to start per trial.

Faults, from the inside out: a dead Train worker restarts its group from the trial's latest checkpoint
(TrainConfig.max_failures; the loop resumes it); a trial that still errors, or whose own process died, is
retried by Tune (TuneSettings.trial_max_failures) from that checkpoint (the retry's TorchTrainer, built with
the same name and storage, finds it; a trial that trains itself gets it from Tune); an experiment whose
driver died is continued by ``Tuner.restore`` (finished trials kept, unfinished ones continued, Optuna's and
ASHA's state restored).
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Literal, Sequence

import pandas as pd

import ray.data
from ray import tune
# CHECKPOINT_PATH_KEY: the metrics key under which TuneReportCallback reports each checkpoint's path.
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from raymotion.config import TrainConfig, TuneSettings
from raymotion.rundir import TUNE_DIR, TuneResult, trials_path
from raymotion.train.checkpoint import TRAIN_STATE_FILE
from raymotion.train.loop import TrialSession, train_loop_per_worker
from raymotion.train.trainer import build_trainer, loop_config_of, worker_datasets
from raymotion.tune.resources import TRIAL_CPUS
from raymotion.tune.spaces import SearchSpace, load_search_space


def trains_in_trial(cfg: TrainConfig, settings: TuneSettings) -> bool:
    return cfg.num_workers == 1 and settings.one_worker_in_trial


def run_trial(config: dict[str, Any], *, base: dict[str, Any], classes: list[str], class_counts: list[int],
              cached: dict[str, ray.data.Dataset], storage_path: str, in_trial: bool,
              source_counts: dict[str, int] | None = None) -> None:
    """The Tune trainable: this trial's hyperparameters trained by a TorchTrainer, or, for one worker
    (``in_trial``), by the same loop in this process. ``source_counts``: the run's data sources (name ->
    training images, in source order)."""
    cfg = TrainConfig(**base).replace(f"Tune search space of {base['model']}", **config)
    # When the trial's own code starts: the loop measures its fixed start (workers, data, first batch) from it.
    extra = {"started_at": time.time()}
    if in_trial:
        datasets = worker_datasets(cfg, classes=classes, cached=cached, source_counts=source_counts)
        train_loop_per_worker(loop_config_of(cfg, classes=classes, class_counts=class_counts, cached=cached,
                                             extra=extra, source_counts=source_counts),
                              TrialSession(datasets, use_gpu=cfg.use_gpu))
        return
    trial_id = tune.get_context().get_trial_id()
    trainer = build_trainer(cfg, classes=classes, class_counts=class_counts, cached=cached, storage_path=storage_path,
                            name=f"train-{cfg.model}-{trial_id}", callbacks=[TuneReportCallback()],
                            loop_config_extra=extra, source_counts=source_counts)
    trainer.fit()


def trial_resources(cfg: TrainConfig, in_trial: bool) -> dict[str, float]:
    """What a trial's own actor asks Tune for: a sliver to drive its Train workers (they request their own
    resources), or, when it trains itself, one worker's."""
    if not in_trial:
        return {"cpu": TRIAL_CPUS}
    return {"cpu": TRIAL_CPUS + cfg.cpus_per_worker, **({"gpu": cfg.gpus_per_worker} if cfg.use_gpu else {})}


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}


def trial_history(result) -> list[dict[str, Any]]:
    """A trial's epochs, one row each: a trial continued after a fault reports its later epochs again
    from where it resumed, and the last report of an epoch is the one that stands."""
    if result.metrics_dataframe is None:
        return []
    by_epoch = {row.get("epoch", i): _clean(row) for i, row in enumerate(result.metrics_dataframe.to_dict("records"))}
    # A trial that trained in its own process reported its checkpoints to Tune, which kept them (the best
    # and the latest): their paths go where TuneReportCallback puts a Train run's.
    for checkpoint, metrics in result.best_checkpoints or []:
        if metrics.get("epoch") in by_epoch:
            by_epoch[metrics["epoch"]].setdefault(CHECKPOINT_PATH_KEY, checkpoint.path)
    return [by_epoch[e] for e in sorted(by_epoch)]


def _best_epoch(grid, settings: TuneSettings) -> tuple[dict[str, Any] | None, Any, dict[int, list[dict[str, Any]]]]:
    """(best row, its trial's result, per-trial histories by id(result)) over every trial's epochs."""
    sign = 1.0 if settings.mode == "max" else -1.0
    best_row, best_trial, best_key, histories = None, None, None, {}
    for result in grid:
        rows = histories[id(result)] = trial_history(result)
        for row in rows:
            # Train keeps only its best checkpoint per trial (and the latest): a row whose checkpoint was
            # deleted is not a candidate. Ties go to the later epoch.
            path = row.get(CHECKPOINT_PATH_KEY)
            if not path or settings.metric not in row or not os.path.isdir(path):
                continue
            key = (sign * row[settings.metric], row.get("epoch", 0))
            if best_key is None or key > best_key:
                best_row, best_trial, best_key = row, result, key
    return best_row, best_trial, histories


def snapshot_trial_count(experiment_dir: str) -> int:
    """How many trials the newest experiment snapshot (``experiment_state-<session>.json``) in this folder
    holds; 0 where there is none."""
    paths = sorted(glob.glob(os.path.join(experiment_dir, "experiment_state-*.json")))  # session names sort by time
    if not paths:
        return 0
    with open(paths[-1]) as f:
        return len(json.load(f)["trial_data"])


class SnapshotCountedSearch(SearchGenerator):
    """Tune's SearchGenerator, whose restore counts every trial the experiment snapshot holds.

    Tune writes a snapshot as separate files (the trials, the generator's count of suggested trials, the
    searcher's state) and copies them to storage one by one in the background. A driver killed between
    two of those copies leaves a count that has not seen the snapshot's newest trial: the restored run
    would then suggest one trial more than num_samples."""

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        self._counter = max(self._counter, snapshot_trial_count(dirpath))


def search_algorithm(settings: TuneSettings, space: SearchSpace):
    """Optuna's TPE or Tune's random sampling, both seeded, both starting at the space's start point, each
    limited to max_concurrent_trials itself (Tune applies that setting only to a bare Searcher)."""
    if settings.search == "optuna" and space.param_space:  # every key pinned: nothing for Optuna to search
        optuna = OptunaSearch(points_to_evaluate=space.start or None, seed=settings.seed)
        return SnapshotCountedSearch(ConcurrencyLimiter(optuna, max_concurrent=settings.max_concurrent_trials))
    return BasicVariantGenerator(points_to_evaluate=space.start or None, random_state=settings.seed,
                                 max_concurrent=settings.max_concurrent_trials)


def trial_scheduler(settings: TuneSettings, epochs: int):
    """ASHA on the reported epoch (not Tune's iteration count, which restarts when a trial is continued
    after a fault), or every trial to the end."""
    if settings.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", max_t=max(1, epochs), grace_period=min(settings.grace_period, max(1, epochs)),
                         reduction_factor=settings.reduction_factor)


def make_tuner(trainable, space: SearchSpace, base: TrainConfig, settings: TuneSettings, storage_path: str,
               callbacks: Sequence[tune.Callback]) -> tune.Tuner:
    """Tune's restore when an experiment was started at this path (its finished trials are kept,
    unfinished and errored ones continue), else a new one."""
    path = os.path.join(storage_path, f"tune-{base.model}")
    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                  param_space=space.param_space)
    return tune.Tuner(
        trainable,
        param_space=space.param_space,
        tune_config=tune.TuneConfig(metric=settings.metric, mode=settings.mode, search_alg=search_algorithm(settings, space),
                                    scheduler=trial_scheduler(settings, base.epochs), num_samples=settings.num_samples),
        run_config=tune.RunConfig(storage_path=storage_path, name=f"tune-{base.model}", verbose=0,
                                  callbacks=list(callbacks),
                                  # For trials that train in their own process, as Train keeps a run's.
                                  checkpoint_config=tune.CheckpointConfig(
                                      num_to_keep=1, checkpoint_score_attribute=settings.metric,
                                      checkpoint_score_order=settings.mode),
                                  failure_config=tune.FailureConfig(max_failures=settings.trial_max_failures)),
    )


# Why a trial ended (trials/<model>.csv's stop_reason; the manifest counts the early stops and failures).
StopReason = Literal["error", "all epochs", "no epoch", "early stopping", "asha"]
STOPPED_EARLY: tuple[StopReason, ...] = ("asha", "early stopping")


def stop_reason(result, rows: list[dict[str, Any]], base: TrainConfig) -> StopReason:
    """Why a trial ended: "error", "all epochs", "early stopping" (its own patience), or "asha"."""
    if result.error:
        return "error"
    if not rows or rows[-1].get("epoch", 0) >= base.epochs:
        return "all epochs" if rows else "no epoch"
    last = rows[-1]
    patience = base.early_stopping_patience
    if patience and last.get("epoch", 0) - last.get("best_epoch", 0) >= patience:
        return "early stopping"
    return "asha"


def trial_rows(grid, histories: dict[int, list[dict[str, Any]]], base: TrainConfig, settings: TuneSettings) -> list[dict[str, Any]]:
    """One row per trial: its searched config, epochs run, why it stopped, its best epoch's val figures,
    minutes, and whether its workers were restarted from a checkpoint."""
    sign = 1.0 if settings.mode == "max" else -1.0
    rows = []
    for result in grid:
        epochs = histories.get(id(result), [])
        scored = [r for r in epochs if settings.metric in r]
        best = max(scored, key=lambda r: sign * r[settings.metric]) if scored else {}
        rows.append({"trial_id": (result.metrics or {}).get("trial_id") or os.path.basename(result.path),
                     **{f"config/{k}": v for k, v in (result.config or {}).items()},
                     "epochs": len(epochs), "stop_reason": stop_reason(result, epochs, base),
                     "best_epoch": best.get("epoch"), **{k: v for k, v in best.items() if k.startswith("val_")},
                     "minutes": sum(r.get("epoch_seconds", 0.0) for r in epochs) / 60,
                     # From the trial's code starting to its first training batch (workers, data shards).
                     **{k: epochs[0].get(k) for k in ("start_seconds", "start_workers_s", "start_first_batch_s") if epochs},
                     "wall_minutes": (epochs[-1].get("time_total_s", 0.0) / 60) if epochs else 0.0,
                     "restarted": any(r.get("resumed_from_epoch", 0) for r in epochs),
                     "error": str(result.error)[:500] if result.error else ""})
    return rows


def write_trials(rows: list[dict[str, Any]], run_dir: str, model: str) -> None:
    """trials/<model>.csv and .parquet: the table a person compares trials in."""
    frame = pd.DataFrame(rows)
    os.makedirs(os.path.dirname(trials_path(run_dir, model, ".csv")), exist_ok=True)
    frame.to_csv(trials_path(run_dir, model, ".csv"), index=False)
    frame.to_parquet(trials_path(run_dir, model, ".parquet"), index=False)


def tune_model(base: TrainConfig, *, classes: list[str], class_counts: list[int], cached: dict[str, ray.data.Dataset],
               settings: TuneSettings, run_dir: str, spaces_dir: str | None = None,
               callbacks: Sequence[tune.Callback] = (),
               on_trials: Callable[[list[dict[str, Any]], list[list[dict[str, Any]]]], None] | None = None,
               source_counts: dict[str, int] | None = None) -> TuneResult:
    """Search ``tune_spaces/<model>.yaml`` around ``base`` (continuing the experiment under ``run_dir``
    if one was started); write the trials table; return the best epoch of the best trial.
    ``callbacks``: Tune callbacks (progress lines); Tune's own loggers (CSV, JSON, TensorBoard) stay on.
    ``on_trials``: called with the trial rows and each trial's epochs, in trial order (bench tune).
    ``source_counts``: the run's data sources (name -> training images), sampled per TrainConfig."""
    space = load_search_space(base.model, spaces_dir, pretrained=bool(base.pretrained), pinned=base.pinned)
    # Tune's objective is also what Train keeps and early-stops on: one (metric, mode) pair for all three.
    base = base.replace("TuneSettings", metric=settings.metric, mode=settings.mode)
    storage_path = os.path.join(run_dir, TUNE_DIR)
    in_trial = trains_in_trial(base, settings)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base.to_dict(), classes=classes, class_counts=class_counts, cached=cached,
                             storage_path=storage_path, in_trial=in_trial, source_counts=source_counts),
        trial_resources(base, in_trial),
    )
    tuner = make_tuner(trainable, space, base, settings, storage_path, callbacks)
    # Tune's own SIGINT handler would end the search on a Ctrl-C as if it had finished (its trials marked
    # terminated, so the run went on to export a half-trained model), and it stays installed after the
    # search, swallowing a Ctrl-C in a later stage. Without it a Ctrl-C raises KeyboardInterrupt here as
    # anywhere else; --resume continues from the experiment's last snapshot, written at each checkpoint.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    started = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - started

    best_row, best_trial, histories = _best_epoch(grid, settings)
    rows = trial_rows(grid, histories, base, settings)
    write_trials(rows, run_dir, base.model)
    if on_trials:
        on_trials(rows, [histories[id(r)] for r in grid])
    if best_row is None:
        errors = "; ".join(str(r.error)[:300] for r in grid if r.error)
        raise RuntimeError(f"no trial of {base.model} produced a checkpoint. Errors: {errors or 'none reported'}")
    best_config = base.replace(f"best trial of {base.model}", **best_trial.config).to_dict()
    return TuneResult(
        model=base.model,
        config=best_config,
        metrics={k: v for k, v in best_row.items() if k.startswith(("val_", "train_", "epoch"))},
        checkpoint_path=best_row[CHECKPOINT_PATH_KEY],
        trials=len(grid),
        stopped_early=sum(r["stop_reason"] in STOPPED_EARLY for r in rows),
        failed=sum(r["stop_reason"] == "error" for r in rows),
        restarted=sum(r["restarted"] for r in rows),
        seconds=seconds,
        history=histories[id(best_trial)],
    )


def copy_checkpoint(result: TuneResult, destination: str) -> str:
    """Copy the best checkpoint into the run directory, which then stands on its own (training's resume
    state stays behind: the run directory's checkpoint is for export)."""
    shutil.copytree(result.checkpoint_path, destination, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(TRAIN_STATE_FILE))
    return destination
