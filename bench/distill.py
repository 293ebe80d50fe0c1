"""``python -m bench distill RUN_DIR --model vit``: one of a run's distilled members trained again, on
equal terms, against its teachers two ways (and, if asked, on labels alone):

- ``stored``: the soft labels it was trained on (the teachers' ensemble on the training images as stored);
- ``online``: the same teachers scoring every augmented, mixed batch as the student sees it
  (TrainConfig.teacher_checkpoints);
- ``labels``: neither.

Each variant is the member's own TrainConfig (its run's preset, search space and seed) with only the
distillation and the epochs changed, trained by Ray Train on the same cached data. Val figures are the train
loop's (no calibration, no test-time augmentation) at the best epoch by the run's metric; minutes are each
variant's whole fit, so the online teachers' cost shows in them."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from raymotion import rundir
from bench.machine import describe_machine
from raymotion.config import TrainConfig
from raymotion.console import table as text_table
from raymotion.data import open_sources
from raymotion.data.pipeline import load_cached
from raymotion.train.trainer import build_trainer, input_size_of

VARIANTS = ("labels", "stored", "online")


@dataclass(frozen=True)
class DistillBenchConfig:
    run_dir: str
    model: str = "vit"
    epochs: int = 4
    variants: tuple[str, ...] = ("stored", "online")
    data: str | None = None  # default: the run's own data root

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"variants {list(self.variants)}: choose from {', '.join(VARIANTS)}")


def teacher_checkpoints(manifest: rundir.Manifest, run_dir: str) -> list[str]:
    """The checkpoints of the run's members that trained on labels alone: the teachers its students had."""
    return [rundir.member_checkpoint_dir(run_dir, name) for name, entry in manifest.models.items()
            if not entry.train_config.soft_labels and not entry.train_config.teacher_checkpoints]


def variant_config(member: TrainConfig, variant: str, teachers: list[str], epochs: int) -> TrainConfig:
    """``member``'s config with only its distillation (``variant``) and epochs changed."""
    if variant == "stored" and not member.soft_labels:
        raise ValueError(f"{member.model} was not trained on stored soft labels: there is no 'stored' variant")
    if variant == "online" and not teachers:
        raise ValueError("the run has no member trained on labels alone to be the online teachers")
    base = member.replace("bench distill", epochs=epochs, soft_labels="", teacher_checkpoints=())
    if variant == "stored":
        return base.replace("bench distill", soft_labels=member.soft_labels)
    if variant == "online":
        return base.replace("bench distill", teacher_checkpoints=tuple(teachers))
    return base


def train_variant(cfg: TrainConfig, source, cached, storage: str, name: str) -> dict[str, Any]:
    started = time.perf_counter()
    result = build_trainer(cfg, classes=source.classes, cached=cached, storage_path=storage, name=name,
                           class_counts=[source.counts("train")[c] for c in source.classes],
                           source_counts=source.counts_by_source("train")).fit()
    minutes = (time.perf_counter() - started) / 60
    if result.error is not None:
        raise RuntimeError(f"the {name} variant failed: {result.error}")
    best = rundir.read_checkpoint_meta(result.get_best_checkpoint(metric=cfg.metric, mode=cfg.mode).path)
    return {"variant": name, "minutes": minutes, "best_epoch": best.epoch,
            "val_accuracy": best.metrics["val_accuracy"], "val_macro_f1": best.metrics["val_macro_f1"],
            "last_epoch": result.metrics["epoch"], "last_val_accuracy": result.metrics["val_accuracy"],
            "train_images_per_s": result.metrics["train_images_per_s"]}


def run_distill_bench(cfg: DistillBenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Ray must be up (init_ray)."""
    manifest = rundir.read_manifest(cfg.run_dir)
    if cfg.model not in manifest.models:
        raise ValueError(f"{cfg.run_dir} has no member {cfg.model!r} (it has {', '.join(manifest.models)})")
    member = manifest.models[cfg.model].train_config
    teachers = [t for t in teacher_checkpoints(manifest, cfg.run_dir) if os.path.basename(t) != cfg.model]
    configs = {v: variant_config(member, v, teachers, cfg.epochs) for v in cfg.variants}
    source = open_sources([cfg.data] if cfg.data else manifest.data.roots, manifest.classes)
    cached, _ = load_cached(source, input_size_of(member))
    log(f"{cfg.model} at {input_size_of(member)}px, {cfg.epochs} epochs, seed {member.seed}; teachers online: "
        + ", ".join(os.path.basename(t) for t in teachers))
    rows = []
    with tempfile.TemporaryDirectory() as storage:
        for variant, variant_cfg in configs.items():
            rows.append(train_variant(variant_cfg, source, cached, storage, variant))
            log(f"{variant}: val acc {rows[-1]['val_accuracy']:.4f}, macro-F1 {rows[-1]['val_macro_f1']:.4f} "
                f"(epoch {rows[-1]['best_epoch']}), {rows[-1]['minutes']:.1f} min")
    return {"benchmark": "distill", "config": asdict(cfg), "data": source.root, "teachers": teachers,
            "train_config": {v: c.to_dict() for v, c in configs.items()}, "machine": describe_machine(), "rows": rows}


def table(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [f"{result['config']['model']}, {result['config']['epochs']} epochs; {machine['cpu_model']}, flags: "
             f"{' '.join(machine['vector_extensions']) or 'none listed'}",
             text_table([(row["variant"], f"{row['val_accuracy']:.4f}", f"{row['val_macro_f1']:.4f}", row["best_epoch"],
                          f"{row['minutes']:.1f}", f"{row['train_images_per_s']:.0f}") for row in result["rows"]],
                        ["variant", "val acc", "macro-F1", "best epoch", "minutes", "img/s"], "<>>>>>")]
    first = result["rows"][0]
    for row in result["rows"][1:]:
        lines.append(f"{row['variant']} - {first['variant']}: "
                     f"{100 * (row['val_accuracy'] - first['val_accuracy']):+.1f} points val acc, "
                     f"{100 * (row['val_macro_f1'] - first['val_macro_f1']):+.1f} macro-F1, "
                     f"{row['minutes'] / max(first['minutes'], 1e-9):.2f}x the minutes")
    return "\n".join(lines)

