"""``train_loop_per_worker``: what each Ray Train worker runs (data-parallel via DDP when >1 worker)."""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.nn as nn

from raymotion.config import TrainConfig
from raymotion.data.pipeline import SHUFFLE_BUFFER_ROWS
from raymotion.models import create_model, get_model_spec
from raymotion.train.checkpoint import save_checkpoint
from raymotion.train.metrics import classification_metrics


def resolve_torch_threads(requested: int, local_world_size: int) -> int:
    """0 = share this node's cores between its workers (Ray's default would leave cores idle on small
    machines, where data tasks are brief and torch is the bottleneck)."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world_size))


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, classes: list[str], amp: bool) -> dict[str, float]:
    model.eval()
    logits, labels = [], []
    for batch in batches:
        with torch.autocast(device.type, enabled=amp):
            out = model(batch["image"].to(device, non_blocking=True))
        logits.append(out.float().cpu())
        labels.append(batch["label"].cpu())
    if not logits:
        return {}
    all_logits, all_labels = torch.cat(logits), torch.cat(labels)
    metrics = classification_metrics(all_logits.numpy(), all_labels.numpy(), classes)
    metrics["loss"] = float(nn.functional.cross_entropy(all_logits, all_labels))
    return metrics


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """loop_config: {"train": TrainConfig as dict, "classes": [...], "train_rows": int,
    "class_weights": [...] or None}."""
    cfg = TrainConfig(**loop_config["train"])
    classes: list[str] = loop_config["classes"]
    spec = get_model_spec(cfg.model)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(resolve_torch_threads(cfg.torch_threads, ctx.get_local_world_size()))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    model = create_model(cfg.model, num_classes=len(classes), pretrained=cfg.pretrained)
    model = ray.train.torch.prepare_model(model)  # moves to the device; wraps in DDP when world > 1
    device = ray.train.torch.get_device()
    amp = cfg.amp and device.type == "cuda"

    steps_per_epoch = max(1, loop_config["train_rows"] // (cfg.batch_size * world))
    if cfg.max_batches_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_batches_per_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = steps_per_epoch * cfg.epochs
    scheduler = cosine_with_warmup(optimizer, total, warmup_steps=min(total // 10, steps_per_epoch))
    class_weights = loop_config.get("class_weights")
    # Soft targets (CutMix/MixUp rows) and optional class weights, one loss for both.
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing,
                                  weight=torch.tensor(class_weights, device=device) if class_weights else None)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    input_size = cfg.input_size or spec.input_size

    for epoch in range(1, cfg.epochs + 1):
        model.train()
        started = time.perf_counter()
        seen, loss_sum, correct = 0, 0.0, 0
        batches = train_shard.iter_torch_batches(
            batch_size=cfg.batch_size, drop_last=True, local_shuffle_buffer_size=max(SHUFFLE_BUFFER_ROWS, cfg.batch_size * 4),
            local_shuffle_seed=cfg.seed + epoch, device=device,
        )
        for step, batch in enumerate(batches):
            if step >= steps_per_epoch:
                break
            images, labels, target = batch["image"], batch["label"], batch["target"]
            with torch.autocast(device.type, enabled=amp):
                logits = model(images)
                loss = loss_fn(logits, target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(labels)
            loss_sum += loss.item() * len(labels)
            # Against the dominant class of each (possibly mixed) target.
            correct += int((logits.argmax(1) == target.argmax(1)).sum())
        train_seconds = time.perf_counter() - started

        # Every worker reads the whole (unsplit) val set and must consume it: Ray Train feeds an unsplit
        # dataset to all ranks together, and a rank that skips it stalls the others. Rank 0's figures
        # are the ones Tune sees.
        val = evaluate(model, val_shard.iter_torch_batches(batch_size=256), device, classes, amp)
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / max(1, seen),
            "train_accuracy": correct / max(1, seen),
            "train_images_per_s": seen * world / max(train_seconds, 1e-9),
            "epoch_seconds": time.perf_counter() - started,
            "lr": scheduler.get_last_lr()[0],
            **{f"val_{k}": v for k, v in val.items()},
        }
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                module = model.module if hasattr(model, "module") else model
                save_checkpoint(tmp, module, {
                    "model": cfg.model, "classes": classes, "input_size": input_size,
                    "mean": list(spec.mean), "std": list(spec.std), "epoch": epoch,
                    "train_config": cfg.to_dict(), "metrics": metrics,
                })
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
