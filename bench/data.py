"""``python -m bench data``: is the input pipeline the bottleneck?

(a) Ray Data -> Ray Train worker and (b) a plain ``torch.utils.data.DataLoader`` feed the same model and
the same train step with the same transforms and the same number of CPU workers for data, alternating
a, b, a, b in one run. Steady-state images/s excludes the first batches; start-up (to the first batch)
is reported separately. (c) the pipeline alone: decode + augment images/s from class folders vs from a
Parquet cache.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import numpy as np
import ray.train
import torch
import torch.nn as nn

from raymotion.config import Augmentation, TrainConfig
from raymotion.data.folders import ImageFolders
from raymotion.data.parquet import ParquetCache
from raymotion.data.pipeline import augment_mix, decode_split, train_stream
from raymotion.data.transforms import decode_image, resize_rgb
from raymotion.models import create_model, get_model_spec
from raymotion.train.loop import resolve_torch_threads, standardize
from raymotion.train.trainer import build_trainer

AUG = Augmentation.only(rotation_deg=8.0, hflip_p=0.5, contrast=0.2, brightness=0.1, crop_scale=0.85)


def _train_steps(model, optimizer, batches, steps: int, warmup: int, t0: float, spec) -> dict[str, float]:
    """Run ``steps`` train steps on uint8 NHWC batches, standardised here as the train loop does; seconds
    from ``t0`` (wall clock) to the first batch, images/s after ``warmup`` batches, the steps run and the
    images timed."""
    loss_fn = nn.CrossEntropyLoss()
    mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
    first = steady_start = None
    images = done = 0
    for step, (x, y) in enumerate(batches):
        if first is None:
            first = time.time() - t0
        if step == warmup:
            steady_start, images = time.perf_counter(), 0
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(standardize(x, mean, std)), y).backward()
        optimizer.step()
        images, done = images + len(y), step + 1
        if done >= steps:
            break
    # The counts say what the rate covers: a source that ran dry stops the loop short of ``steps``.
    return {"startup_s": first, "images_per_s": images / (time.perf_counter() - steady_start), "steps": done,
            "timed_images": images}


def _bench_loop_per_worker(config: dict[str, Any]) -> None:
    bench = config["bench"]
    torch.set_num_threads(resolve_torch_threads(0, ray.train.get_context().get_local_world_size()))
    torch.manual_seed(0)
    model = create_model(bench["model"], num_classes=len(config["classes"]), pretrained=False).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    shard = ray.train.get_dataset_shard("train")
    batches = ((b["image"], b["label"]) for b in shard.iter_torch_batches(
        batch_size=bench["batch_size"], drop_last=True, local_shuffle_buffer_size=1024))
    result = _train_steps(model, optimizer, batches, bench["steps"], bench["warmup"], bench["t0"],
                          get_model_spec(bench["model"]))
    # Train V2 keeps metrics only for reports that carry a checkpoint; the score key satisfies the
    # trainer's CheckpointConfig.
    result[config["train"]["metric"]] = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if ray.train.get_context().get_world_rank() == 0 else None
        ray.train.report(result, checkpoint=checkpoint)


def bench_ray(source, cached, size: int, model: str, batch_size: int, steps: int, warmup: int) -> dict[str, float]:
    """The training path's datasets and scaling (build_trainer); only the loop is the timing one."""
    cfg = TrainConfig(model=model, input_size=size, batch_size=batch_size, augmentation=AUG)
    bench = {"model": model, "batch_size": batch_size, "steps": steps, "warmup": warmup, "t0": time.time()}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, classes=source.classes, cached=cached, storage_path=tmp, name="bench",
                                train_loop=_bench_loop_per_worker, loop_config_extra={"bench": bench})
        return dict(trainer.fit().metrics)


class FolderDataset(torch.utils.data.Dataset):
    def __init__(self, paths, labels, size):
        self.paths, self.labels, self.size = list(paths), list(labels), size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with open(self.paths[i], "rb") as f:
            return resize_rgb(decode_image(f.read()), self.size), self.labels[i]


class AugmentCollate:
    """The Ray pipeline's train-time transform (data.pipeline.augment_mix), run in the DataLoader's worker
    processes: uint8 NHWC batches out, as the Ray stream delivers them."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.rng = None

    def __call__(self, items):
        if self.rng is None:  # per worker process: forked copies of one generator would draw alike
            worker = torch.utils.data.get_worker_info()
            self.rng = np.random.default_rng([0, worker.id if worker else 0])
        labels = np.asarray([label for _, label in items], np.int64)
        images, _ = augment_mix(np.stack([img for img, _ in items]), labels, self.rng, self.num_classes, AUG)
        return torch.from_numpy(images), torch.from_numpy(labels)


def bench_dataloader(source: ImageFolders, size: int, model: str, batch_size: int, steps: int, warmup: int,
                     data_workers: int) -> dict[str, float]:
    spec = get_model_spec(model)
    torch.set_num_threads(resolve_torch_threads(0, 1))
    torch.manual_seed(0)
    t0 = time.time()
    net = create_model(model, num_classes=len(source.classes), pretrained=False).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(
        FolderDataset(source.train.paths, source.train.labels, size), batch_size=batch_size, shuffle=True,
        drop_last=True, num_workers=data_workers, collate_fn=AugmentCollate(len(source.classes)),
        persistent_workers=False, prefetch_factor=4 if data_workers else None)
    return _train_steps(net, optimizer, iter(loader), steps, warmup, t0, spec)


def bench_pipeline_alone(folders: ImageFolders, parquet: ParquetCache, size: int, repeats: int = 3) -> dict[str, Any]:
    """Images/s of the input pipeline without a model, as training runs it (data.pipeline.load_cached,
    then train_stream): the source stage — JPEG decode + resize, or the Parquet read — materialized once,
    then one epoch of augment over it (uint8 out, as training streams it). Per source: the whole pass and each stage.

    The two sources alternate ``repeats`` times; the median of each is the figure (other processes on a
    2-core machine make single passes noisy). One untimed pass first: it starts Ray's worker processes
    (each imports torch, ~1-2 s), which would otherwise be charged to whichever source runs first."""
    warmup = train_stream(parquet.read("train"), seed=0, num_classes=len(folders.classes), augmentation=AUG)
    for _ in warmup.iter_batches(batch_size=256):
        pass
    passes: dict[str, list[dict[str, float]]] = {"folders": [], "parquet": []}
    for _ in range(repeats):
        for name in passes:
            started = time.perf_counter()
            ds = decode_split(folders.train, size)[0] if name == "folders" else parquet.read("train").materialize()
            source_s = time.perf_counter() - started
            stream = train_stream(ds, seed=0, num_classes=len(folders.classes), augmentation=AUG)
            rows = sum(len(b["label"]) for b in stream.iter_batches(batch_size=256))
            total_s = time.perf_counter() - started
            passes[name].append({"images_per_s": rows / total_s, "source_images_per_s": rows / source_s,
                                 "augment_images_per_s": rows / (total_s - source_s), "rows": rows})
    median = {name: {key: statistics.median(p[key] for p in v) for key in v[0]} for name, v in passes.items()}
    return {"folders": median["folders"]["images_per_s"], "parquet": median["parquet"]["images_per_s"],
            "stages": median, "passes": passes}
