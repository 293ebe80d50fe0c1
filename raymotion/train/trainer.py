"""Driver side of training: turn a TrainConfig + cached data into a ``TorchTrainer``."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import ray.data
import ray.train
from ray.train.torch import TorchTrainer

from raymotion.config import ConfigError, TrainConfig
from raymotion.rundir import read_soft_labels
from raymotion.data.pipeline import quiet_progress, train_stream
from raymotion.data.sources import sampling_rates
from raymotion.models import get_model_spec
from raymotion.train.loop import train_loop_per_worker


def input_size_of(cfg: TrainConfig) -> int:
    return cfg.input_size or get_model_spec(cfg.model).input_size


def class_weights(cfg: TrainConfig, class_counts: list[int] | None) -> list[float] | None:
    """Loss weights n / (k * n_c) for class_weighting="balanced"; None otherwise."""
    if cfg.class_weighting == "none" or not class_counts:  # TrainConfig allows only "none" and "balanced"
        return None
    total, k = sum(class_counts), len(class_counts)
    return [total / (k * max(1, n)) for n in class_counts]


def teacher_by_uid(cfg: TrainConfig, classes: list[str]):
    """The soft labels' probabilities by training-row uid, or None without ``cfg.soft_labels``."""
    if not cfg.soft_labels:
        return None
    labels = read_soft_labels(cfg.soft_labels)
    if labels.classes != list(classes):
        raise ConfigError(f"soft labels {cfg.soft_labels} are over classes {labels.classes}, this data over {classes}")
    return labels.by_uid()


def scaling_config(cfg: TrainConfig) -> ray.train.ScalingConfig:
    """Workers, their resources and placement, from the config alone: a GPU cluster differs from a laptop
    in these fields (``use_gpu``, ``gpus_per_worker``, ``placement_strategy``), not in code."""
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = cfg.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources,
                                   placement_strategy=cfg.placement_strategy)


def source_rates(cfg: TrainConfig, source_counts: dict[str, int] | None) -> list[float] | None:
    """Per source, how often a training row is drawn per epoch (data.sources.sampling_rates), all scaled
    so that an epoch draws ``cfg.epoch_rows`` rows when that is set; None with one source and no
    epoch_rows (every row once, and no draw that would change a single-source run's batches)."""
    counts = source_counts or {}
    if len(counts) < 2 and not (cfg.epoch_rows and counts):
        return None
    rates = sampling_rates(counts, cfg.source_share_power, cfg.source_shares) if len(counts) > 1 else [1.0]
    if cfg.epoch_rows:
        rates = [r * cfg.epoch_rows / sum(counts.values()) for r in rates]
    return rates


def worker_datasets(cfg: TrainConfig, *, classes: list[str], cached: dict[str, ray.data.Dataset],
                    source_counts: dict[str, int] | None = None) -> dict[str, ray.data.Dataset]:
    """What the loop iterates: the augmented train stream, and val as cached. ``source_counts``: the run's
    sources (name -> training images, in source order), which the stream samples by ``source_rates``."""
    quiet_progress()
    return {
        "train": train_stream(cached["train"], seed=cfg.seed, num_classes=len(classes), augmentation=cfg.augmentation,
                              teacher_by_uid=teacher_by_uid(cfg, classes), distill_alpha=cfg.distill_alpha,
                              source_rates=source_rates(cfg, source_counts)),
        # As cached: evaluation draws nothing and the loop standardises on its device.
        "val": cached["val"],
    }


def loop_config_of(cfg: TrainConfig, *, classes: list[str], class_counts: list[int] | None,
                   cached: dict[str, ray.data.Dataset], extra: dict[str, Any] | None = None,
                   source_counts: dict[str, int] | None = None) -> dict[str, Any]:
    """train.loop.train_loop_per_worker's argument ("sources": the source names, in the order of the rows'
    ``source`` ids, for per-source val figures)."""
    return {"train": cfg.to_dict(), "classes": list(classes), "train_rows": cached["train"].count(),
            "class_weights": class_weights(cfg, class_counts), "sources": list(source_counts or {}), **(extra or {})}


def build_trainer(
    cfg: TrainConfig,
    *,
    classes: list[str],
    class_counts: list[int] | None = None,
    cached: dict[str, ray.data.Dataset],
    storage_path: str,
    name: str,
    callbacks: Sequence[object] = (),
    train_loop: Callable[[dict], None] = train_loop_per_worker,
    loop_config_extra: dict[str, Any] | None = None,
    source_counts: dict[str, int] | None = None,
) -> TorchTrainer:
    """``cached``: materialized uint8 splits at this config's input size (see data.pipeline.load_cached);
    ``source_counts``: the run's sources (worker_datasets)."""
    datasets = worker_datasets(cfg, classes=classes, cached=cached, source_counts=source_counts)
    # Train replaces a dataset's execution options by its defaults; the train stream's preserve_order is
    # what makes its batches reproducible, so it is passed on.
    train_options = ray.train.DataConfig.default_ingest_options()
    train_options.preserve_order = datasets["train"].context.execution_options.preserve_order
    return TorchTrainer(
        train_loop,
        train_loop_config=loop_config_of(cfg, classes=classes, class_counts=class_counts, cached=cached,
                                         extra=loop_config_extra, source_counts=source_counts),
        scaling_config=scaling_config(cfg),
        datasets=datasets,
        # Only the training set is sharded; each worker may evaluate the whole val set.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options={"train": train_options}),
        run_config=ray.train.RunConfig(
            storage_path=storage_path,
            name=name,
            callbacks=list(callbacks),
            # A dead worker restarts the group from the latest checkpoint (train_loop_per_worker resumes it).
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            # Kept checkpoints are ranked by the run's metric; the best epoch survives, the rest are deleted.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=cfg.metric, checkpoint_score_order=cfg.mode
            ),
        ),
    )

