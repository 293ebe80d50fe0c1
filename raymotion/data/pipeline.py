"""Ray Data: stream images into train-ready batches.

Decode and resize are deterministic, so they run once per input size and are materialized in the
object store (or read from a Parquet cache, see data.parquet); the random augmentation runs after
that, lazily, so it is drawn anew every epoch.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import ray
from ray.data.dataset import MaterializedDataset  # not exported by ray.data

from raymotion.config import Augmentation
from raymotion.data.augment import augment_batch, degrade_batch
from raymotion.data.folders import ImageFolders, Split
from raymotion.data.sources import Sources
from raymotion.data.mixing import mix_batch, one_hot
from raymotion.data.parquet import ParquetCache
from raymotion.data.transforms import InvalidImage, decode_image_kind, resize_rgb

# Rows kept in the per-epoch local shuffle buffer: several blocks.
SHUFFLE_BUFFER_ROWS = 4 * 256

# Rows per block and per map task: small enough that two CPUs share the work evenly, large enough
# that scheduling a task costs far less than the work in it.
ROWS_PER_BLOCK = 256

# CPU request of the per-epoch (augment) tasks. They are light and vectorised; asking for a
# whole CPU would deadlock a 2-CPU node, where the Train worker holds one and the Tune trial a sliver.
STREAM_TASK_CPUS = 0.5


def data_task_concurrency() -> int:
    """At most one per-epoch data task per CPU of the cluster.

    Ray keeps as many idle worker processes as there are CPUs and kills the rest after a second idle, so
    uncapped half-CPU tasks would start extra workers every epoch, each paying its start and imports
    again. Data workers import no torch (data.augment), so the cap mainly bounds the worker processes
    and their memory.
    """
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def stream_task_concurrency(ds: ray.data.Dataset) -> int:
    """data_task_concurrency, and no more than the blocks of a materialized ``ds``: a task takes a block,
    so a cap above their count only idles (and Ray warns of it every epoch, e.g. on a small data set that
    decoding packed into one block)."""
    cap = data_task_concurrency()
    if isinstance(ds, MaterializedDataset):
        cap = min(cap, max(1, ds.num_blocks()))
    return cap


# Back to back, one execution's tasks still show as holding the CPUs for a moment after they finished (the
# cluster's resource view lags), and Ray Data then warns in the terminal that the next "will hang". A bound:
# on a cluster that is really full the wait ends and Ray's warning stands.
FREE_CPU_WAIT_S = 5.0


def wait_for_a_free_cpu(timeout_s: float = FREE_CPU_WAIT_S) -> bool:
    """True once the cluster shows a free CPU (at once, mostly); False after ``timeout_s`` without one."""
    deadline = time.monotonic() + timeout_s
    while not ray.available_resources().get("CPU"):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def task_cpus(wanted: float = 1.0) -> float:
    """The CPUs a one-off decode task asks for: ``wanted``, or what is free now when less is (a service or
    another job holding part of the cluster), so that decoding runs, more slowly, instead of waiting for
    CPUs that will not come free while that holder runs."""
    free = ray.available_resources().get("CPU", 0.0)
    return wanted if free >= wanted else max(0.05, int(free * 100) / 100)


def materialize(ds: ray.data.Dataset) -> ray.data.Dataset:
    wait_for_a_free_cpu()
    return ds.materialize()


def quiet_progress() -> None:
    """No per-operator progress bars: they flood job logs. Ray Train copies this context to its workers."""
    ray.data.DataContext.get_current().enable_progress_bars = False


@dataclass
class DecodeReport:
    """What decoding found: files skipped (by kind, first paths) and converted (by source mode)."""

    skipped: Counter = field(default_factory=Counter)
    converted: Counter = field(default_factory=Counter)
    skipped_paths: list[str] = field(default_factory=list)
    kept_labels: Counter = field(default_factory=Counter)  # label id -> images decoded

    def add(self, other: "DecodeReport") -> None:
        self.kept_labels.update(other.kept_labels)
        self.skipped.update(other.skipped)
        self.converted.update(other.converted)
        self.skipped_paths.extend(other.skipped_paths)

    def to_dict(self, max_paths: int = 10) -> dict:
        return {"skipped": dict(self.skipped), "converted": dict(self.converted),
                "skipped_paths": self.skipped_paths[:max_paths]}

    def summary(self, max_paths: int = 5) -> str:
        if not self.skipped and not self.converted:
            return "every file decoded as RGB"
        lines = []
        if self.skipped:
            lines.append(f"skipped {sum(self.skipped.values())} unreadable file(s): "
                         + ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items())))
            lines += [f"  {p}" for p in self.skipped_paths[:max_paths]]
        if self.converted:
            lines.append("converted to RGB: " + ", ".join(f"{n} {k}" for k, n in sorted(self.converted.items())))
        return "\n".join(lines)


def _decode_resize(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Every input row comes out, flagged ``ok``; failed rows carry a blank image and their failure kind."""
    n = len(batch["path"])
    images = np.zeros((n, size, size, 3), np.uint8)
    ok = np.zeros(n, bool)
    kinds = []
    for i, path in enumerate(batch["path"]):
        try:
            with open(path, "rb") as f:
                img, kind = decode_image_kind(f.read())
            images[i] = resize_rgb(img, size)
            ok[i] = True
        except InvalidImage as err:
            kind = err.kind
        except OSError:
            kind = "unreadable"
        kinds.append(kind)
    return {"image": images, "label": batch["label"], "uid": batch["uid"], "source": batch["source"], "ok": ok,
            "kind": np.asarray(kinds, dtype=object), "path": batch["path"]}


def _status_columns(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"kind": batch["kind"], "path": batch["path"], "ok": batch["ok"], "label": batch["label"]}


def _keep_ok(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    keep = batch["ok"]
    return {"image": batch["image"][keep], "label": batch["label"][keep], "uid": batch["uid"][keep],
            "source": batch["source"][keep]}


def decode_split(split: Split, size: int, shuffle_seed: int = 0) -> tuple[ray.data.Dataset, DecodeReport]:
    """Decoded, resized uint8 images of one split (materialized): columns image (N,H,W,3), label, uid, source
    (the split's own uids and sources where it has them, else the row index and 0)."""
    uids = split.uids or range(len(split))
    sources = split.sources or (0,) * len(split)
    rows = [{"path": p, "label": label, "uid": uid, "source": src}
            for p, label, uid, src in zip(split.paths, split.labels, uids, sources)]
    # Files are listed class by class; shuffled once here (seeded) so that every block holds every
    # class. Per epoch, block order is randomised and rows are shuffled within a buffer of several
    # blocks; without this, batches are near single-class and BatchNorm models collapse.
    random.Random(shuffle_seed).shuffle(rows)
    num_blocks = max(2, -(-len(rows) // ROWS_PER_BLOCK))
    decoded = materialize(ray.data.from_items(rows, override_num_blocks=num_blocks).map_batches(
        _decode_resize, fn_kwargs={"size": size}, batch_size=ROWS_PER_BLOCK, num_cpus=task_cpus()))
    report = DecodeReport()
    # An explicit projection UDF: Ray's select_columns on this materialized plan can lose the column.
    status = decoded.map_batches(_status_columns, batch_size=ROWS_PER_BLOCK, num_cpus=task_cpus(STREAM_TASK_CPUS))
    for batch in status.iter_batches(batch_size=None):
        for kind, path, ok, label in zip(batch["kind"], batch["path"], batch["ok"], batch["label"]):
            if not ok:
                report.skipped[kind] += 1
                report.skipped_paths.append(str(path))
                continue
            report.kept_labels[int(label)] += 1
            if kind != "rgb":
                report.converted[kind] += 1
    good = materialize(decoded.map_batches(_keep_ok, batch_size=ROWS_PER_BLOCK, num_cpus=task_cpus(STREAM_TASK_CPUS)))
    return good, report


def _resize_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    from PIL import Image

    images = np.stack([resize_rgb(Image.fromarray(img), size) for img in batch["image"]])
    return {"image": images, "label": batch["label"], "uid": batch["uid"]}


def _as_source(batch: dict[str, np.ndarray], source: int, uid_offset: int) -> dict[str, np.ndarray]:
    """A Parquet cache's rows as one source of several: run-wide uids and the source's index."""
    uids = np.asarray(batch["uid"], np.int64) + uid_offset
    return {"image": batch["image"], "label": batch["label"], "uid": uids, "source": np.full(len(uids), source, np.int64)}


def load_sources(sources: Sources, size: int) -> tuple[dict[str, ray.data.Dataset], DecodeReport]:
    """Every source's splits at ``size`` as one dataset per split (column ``source`` says whose row). The
    class-folder sources are decoded together, their rows shuffled across sources, so that every block (and
    so every batch) mixes them; a Parquet cache adds its own blocks."""
    parts: dict[str, list[ray.data.Dataset]] = {"train": [], "val": []}
    report = DecodeReport()
    for split in parts:
        folder_split = sources.folder_split(split)
        if folder_split is not None:
            decoded, split_report = decode_split(folder_split, size)
            parts[split].append(decoded)
            report.add(split_report)
    for index, part in enumerate(sources.parts):
        if isinstance(part.data, ParquetCache):
            cached, part_report = load_cached(part.data, size)
            report.add(part_report)
            for split, ds in cached.items():
                parts[split].append(ds.map_batches(_as_source, fn_kwargs={"source": index, "uid_offset": part.offsets[split]},
                                                   batch_size=ROWS_PER_BLOCK, num_cpus=task_cpus(STREAM_TASK_CPUS)))
    return {split: materialize(ds[0].union(*ds[1:])) if len(ds) > 1 or not isinstance(ds[0], MaterializedDataset)
            else ds[0] for split, ds in parts.items()}, report


def load_cached(source: ImageFolders | ParquetCache | Sources, size: int) -> tuple[dict[str, ray.data.Dataset], DecodeReport]:
    """Both splits decoded once at ``size`` and kept in the object store, and what decoding skipped."""
    quiet_progress()
    if isinstance(source, Sources):
        return load_sources(source, size)
    if isinstance(source, ParquetCache):
        cached = {}
        for split in ("train", "val"):
            ds = source.read(split)
            if source.size != size:  # a cache at another size: resize once, never decode JPEGs
                ds = ds.map_batches(_resize_batch, fn_kwargs={"size": size}, batch_size=ROWS_PER_BLOCK,
                                    num_cpus=task_cpus())
            cached[split] = materialize(ds)
        report = DecodeReport()
        skipped = source.meta.get("skipped", {})
        report.skipped.update(skipped.get("skipped", {}))
        report.converted.update(skipped.get("converted", {}))
        report.skipped_paths.extend(skipped.get("skipped_paths", []))
        return cached, report
    cached, report = {}, DecodeReport()
    for split in ("train", "val"):
        cached[split], split_report = decode_split(source.split(split), size)
        report.add(split_report)
    return cached, report


def distilled_targets(labels: np.ndarray, teacher: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) * one-hot label + alpha * the teacher ensemble's probabilities: Hinton et al.'s
    distillation at temperature 1 as one soft target, which CutMix/MixUp then mix like any other."""
    if np.isnan(teacher).any():
        raise ValueError("soft labels: a training image has no teacher probabilities (were they computed on "
                         "another data set?)")
    return ((1 - alpha) * one_hot(labels, teacher.shape[1]) + alpha * teacher).astype(np.float32)


def augment_mix(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, num_classes: int,
                augmentation: Augmentation, target: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images -> (augmented and mixed uint8 NHWC images (new arrays), float32 soft targets (N, C)).
    ``target``: per-image targets before mixing (distilled ones), default one-hot labels.

    The one train-time transform: the Ray pipeline runs it per block, the DataLoader baseline of the data
    benchmark per batch."""
    x = augment_batch(images, rng, **augmentation.per_image())
    if augmentation.degrades():  # draws nothing when off: seeds of runs without it keep their batches
        x = degrade_batch(x, rng, **augmentation.degradations())
    return mix_batch(x, labels, num_classes, rng, **augmentation.per_batch(), target=target)


# The one seed of "degraded val" (export's val_degraded figures): every run degrades the same way.
CAMERA_DEGRADED_SEED = 20261202


def camera_degraded(images: np.ndarray, seed: int = CAMERA_DEGRADED_SEED) -> np.ndarray:
    """uint8 NHWC val images as a camera might deliver them (Augmentation.camera: box shift, grey, few
    pixels, blur, JPEG), the same images the same way for a given seed whatever the batch around them."""
    camera = Augmentation.camera()
    out = np.empty_like(images)
    for i in range(len(images)):  # one generator per image: image i's draws do not depend on the others
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        out[i:i + 1] = degrade_batch(augment_batch(images[i:i + 1], rng, **camera.per_image()), rng,
                                     **camera.degradations())
    return out


def epoch_index() -> int:
    """Inside a task of a train stream: which epoch (0, 1, ...) of that stream the task belongs to.

    Ray Data re-executes a stream every epoch and counts the executions in the stream's DataContext, which
    it hands to every task; its own reseeded shuffles (``RandomSeedConfig(reseed_after_execution=True)``)
    read the same count. ``train_stream`` gives each stream a context of its own, counting from 0."""
    return ray.data.DataContext.get_current()._execution_idx


def _own_execution_count(ds: ray.data.Dataset) -> ray.data.Dataset:
    """``ds`` with a DataContext of its own, its execution count at 0. Derived datasets share their
    parent's context, so without the copy the count would include every earlier read of the cached split
    (and of other streams built on it), and two identical runs in one process would differ."""
    own = ray.data.Dataset.copy(ds, _deep_copy=True)
    own.context._execution_idx = 0
    return own


def resample_rows(sources: np.ndarray, rates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices of a block drawn at each row's source's rate: floor(rate) copies, and one more with
    probability frac(rate); a rate below 1 keeps a row with that probability. Repeats stay next to each other
    here and are separated by the loop's local shuffle buffer."""
    rate = rates[np.asarray(sources, np.int64)]
    copies = np.floor(rate).astype(np.int64) + (rng.random(len(rate)) < rate - np.floor(rate))
    return np.repeat(np.arange(len(rate)), copies)


def _augment_batch(batch: dict[str, np.ndarray], seed: int, num_classes: int, augmentation: Augmentation,
                   teacher_by_uid: np.ndarray | None = None, distill_alpha: float = 0.0,
                   source_rates: np.ndarray | None = None) -> dict[str, np.ndarray]:
    uids = batch["uid"]
    # The draws depend on (seed, epoch, block) only, the block named by its first row: not on which worker
    # process runs it or what it ran before, so the same --seed gives the same batches.
    block = int(uids[0]) if len(uids) else 0
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch_index(), block]))
    sources = batch.get("source")
    sources = np.zeros(len(uids), np.int64) if sources is None else np.asarray(sources, np.int64)
    images, labels = batch["image"], batch["label"]
    if source_rates is not None:
        keep = resample_rows(sources, source_rates, rng)
        images, labels, uids, sources = images[keep], labels[keep], uids[keep], sources[keep]
    target = None
    if teacher_by_uid is not None:
        target = distilled_targets(labels, teacher_by_uid[np.asarray(uids, np.int64)], distill_alpha)
    images, target = augment_mix(images, labels, rng, num_classes, augmentation, target)
    return {"image": images, "label": labels, "target": target, "uid": uids, "source": sources}


def train_stream(cached_train: ray.data.Dataset, *, seed: int, num_classes: int, augmentation: Augmentation,
                 teacher_by_uid: np.ndarray | None = None, distill_alpha: float = 0.0,
                 source_rates: list[float] | None = None) -> ray.data.Dataset:
    """Shuffled block order + per-source resampling + random augmentation + mixing; re-executed every epoch,
    reproducibly: block order, resampling and augmentation are drawn from (seed, epoch), and blocks come out
    in order, so a run with one Train worker sees the same batches for the same seed.
    Columns: image (uint8 NHWC, as cached: the train loop standardises it on its device, see
    train.loop.standardize), label (int), target (float soft labels, rows sum to 1), uid (row id), source.
    ``teacher_by_uid``: (rows, C) teacher probabilities by uid (rundir.SoftLabels.by_uid), mixed into each
    target with weight ``distill_alpha`` (see distilled_targets). ``source_rates``: per source, how often a
    row is drawn per epoch (data.sources.sampling_rates); None: every row once."""
    own = _own_execution_count(cached_train)
    # In order: otherwise blocks arrive as their tasks finish, and batch contents depend on timing. The
    # cost is a block that finishes early waiting for the one before it (two similar tasks per CPU pair).
    own.context.execution_options.preserve_order = True
    rates = None if source_rates is None else np.asarray(source_rates, np.float64)
    return own.randomize_block_order(seed=ray.data.RandomSeedConfig(seed=seed, reseed_after_execution=True)).map_batches(
        _augment_batch,
        fn_kwargs=dict(seed=seed, num_classes=num_classes, augmentation=augmentation, teacher_by_uid=teacher_by_uid,
                       distill_alpha=distill_alpha, source_rates=rates),
        batch_size=ROWS_PER_BLOCK,
        num_cpus=STREAM_TASK_CPUS,
        compute=ray.data.TaskPoolStrategy(size=stream_task_concurrency(cached_train)),
    )
