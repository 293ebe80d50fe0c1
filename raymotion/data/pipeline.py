"""Ray Data: stream class-folder images into train-ready batches.

Decode and resize are deterministic, so they run once per input size and are materialized in the
object store; the random augmentation runs after that, lazily, so it is drawn anew every epoch.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import ray
import torch

from raymotion.data.augment import augment_batch
from raymotion.data.folders import ImageFolders, Split
from raymotion.data.transforms import InvalidImage, decode_image, normalize, resize_rgb

log = logging.getLogger(__name__)

# Rows per block: small enough that two CPUs share the work evenly, large enough to keep per-task
# overhead low.
ROWS_PER_BLOCK = 256

# CPU request of the per-epoch (augment/normalize) tasks. They are light and vectorised; asking for a
# whole CPU would deadlock a 2-CPU node, where the Train worker holds one and the Tune trial a sliver.
STREAM_TASK_CPUS = 0.5

# Tasks reuse worker processes; a per-process counter gives each batch (and each epoch) its own stream.
_batch_counter = itertools.count()


def _decode_resize(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    images, labels, uids = [], [], []
    for path, label, uid in zip(batch["path"], batch["label"], batch["uid"]):
        try:
            with open(path, "rb") as f:
                images.append(resize_rgb(decode_image(f.read()), size))
        except (InvalidImage, OSError) as err:
            log.warning("skipping %s: %s", path, err)
            continue
        labels.append(label)
        uids.append(uid)
    return {
        "image": np.stack(images) if images else np.empty((0, size, size, 3), np.uint8),
        "label": np.asarray(labels, np.int64),
        "uid": np.asarray(uids, np.int64),
    }


def read_split(split: Split, size: int) -> ray.data.Dataset:
    """Decoded, resized uint8 images of one split: columns image (N,H,W,3), label, uid."""
    rows = [{"path": p, "label": label, "uid": i} for i, (p, label) in enumerate(zip(split.paths, split.labels))]
    num_blocks = max(2, -(-len(rows) // ROWS_PER_BLOCK))
    return ray.data.from_items(rows, override_num_blocks=num_blocks).map_batches(
        _decode_resize, fn_kwargs={"size": size}, batch_size=ROWS_PER_BLOCK
    )


def load_cached(folders: ImageFolders, size: int) -> dict[str, ray.data.Dataset]:
    """Decode both splits once at ``size`` and keep them in the object store."""
    return {name: read_split(folders.split(name), size).materialize() for name in ("train", "val")}


def quiet_progress() -> None:
    """No per-operator progress bars: they flood job logs. Ray Train copies this context to its workers."""
    ray.data.DataContext.get_current().enable_progress_bars = False


def _normalize_batch(batch: dict[str, np.ndarray], mean, std) -> dict[str, np.ndarray]:
    return {"image": normalize(batch["image"], mean, std), "label": batch["label"]}


def _augment_normalize_batch(
    batch: dict[str, np.ndarray], mean, std, seed: int, rotation_deg: float, hflip_p: float, contrast: float
) -> dict[str, np.ndarray]:
    uids = batch["uid"]
    gen = torch.Generator().manual_seed(hash((seed, int(uids[0]) if len(uids) else 0, next(_batch_counter))) & 0x7FFF_FFFF)
    # torch.tensor copies: Ray hands out read-only arrays.
    x = torch.tensor(batch["image"]).permute(0, 3, 1, 2).float().div_(255.0)
    x = augment_batch(x, gen, rotation_deg=rotation_deg, hflip_p=hflip_p, contrast=contrast)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return {"image": x.contiguous().numpy(), "label": batch["label"]}


def train_stream(cached_train: ray.data.Dataset, *, mean, std, seed: int, rotation_deg: float,
                 hflip_p: float, contrast: float) -> ray.data.Dataset:
    """Shuffled block order + random augmentation + normalization; re-executed every epoch."""
    return cached_train.randomize_block_order().map_batches(
        _augment_normalize_batch,
        fn_kwargs=dict(mean=tuple(mean), std=tuple(std), seed=seed, rotation_deg=rotation_deg,
                       hflip_p=hflip_p, contrast=contrast),
        # Whole blocks per task: one task per training batch costs more in scheduling than it augments.
        batch_size=ROWS_PER_BLOCK,
        num_cpus=STREAM_TASK_CPUS,
    )


def eval_stream(cached_split: ray.data.Dataset, *, mean, std) -> ray.data.Dataset:
    return cached_split.map_batches(_normalize_batch, fn_kwargs=dict(mean=tuple(mean), std=tuple(std)),
                                    batch_size=ROWS_PER_BLOCK, num_cpus=STREAM_TASK_CPUS)
