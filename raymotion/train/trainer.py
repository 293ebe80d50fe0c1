"""Driver side of training: turn a TrainConfig + cached data into a ``TorchTrainer``."""

from __future__ import annotations

from typing import Sequence

import ray.data
import ray.train
from ray.train.torch import TorchTrainer

from raymotion.config import TrainConfig
from raymotion.data.pipeline import eval_stream, quiet_progress, train_stream
from raymotion.models import get_model_spec
from raymotion.train.loop import train_loop_per_worker

# Kept checkpoints are ranked by this; the best epoch survives, the rest are deleted.
CHECKPOINT_METRIC = "val_macro_f1"


def input_size_of(cfg: TrainConfig) -> int:
    return cfg.input_size or get_model_spec(cfg.model).input_size


def build_trainer(
    cfg: TrainConfig,
    *,
    classes: list[str],
    cached: dict[str, ray.data.Dataset],
    storage_path: str,
    name: str,
    callbacks: Sequence[object] = (),
) -> TorchTrainer:
    """``cached``: materialized uint8 splits at this config's input size (see data.pipeline.load_cached)."""
    spec = get_model_spec(cfg.model)
    quiet_progress()
    datasets = {
        "train": train_stream(cached["train"], mean=spec.mean, std=spec.std, seed=cfg.seed,
                              rotation_deg=cfg.rotation_deg, hflip_p=cfg.hflip_p, contrast=cfg.contrast),
        "val": eval_stream(cached["val"], mean=spec.mean, std=spec.std),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg.to_dict(), "classes": list(classes), "train_rows": cached["train"].count()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        datasets=datasets,
        # Only the training set is sharded; each worker may evaluate the whole val set.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(
            storage_path=storage_path,
            name=name,
            callbacks=list(callbacks),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=CHECKPOINT_METRIC, checkpoint_score_order="max"
            ),
        ),
    )

