"""The offline job on Ray Data: inputs -> units (driver) -> faces (tasks) -> classes (actors) -> a table.

    result = run_inference(InferConfig(run_dir="runs/r", inputs=("photos/",), out="faces.parquet"))

    plan_units            driver: files listed, Parquet footers and video headers read; no pixel
    from_items(groups)    a few units per row: one video segment, one Parquet row group, or a handful of files
    map_batches(find_faces)           tasks: read, decode, find faces, cut and resize the crops
    map_batches(Classify, actors)     an actor pool of Predictors: members + pool on the crops
    iter_batches                      driver: rows written as they come; video rows kept for tracking
    with_tracks, per_second           driver: track ids, the per-second timeline and its PNG

The driver only lists and writes, so the same command runs as a ``ray job submit`` on a cluster whose
nodes see the input paths.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from raymotion import rundir
from raymotion.config import AtLeastOne, ConfigError, Count, NonNegative, Positive, config_dataclass
from raymotion.infer.inputs import LARGE_ROW_GROUP, Unit, plan_units
from raymotion.infer.table import Writer, check_format, output_schema
from raymotion.infer.timeline import per_second, plot_timeline, shares, with_tracks, write_timeline
from raymotion.predict.faces import MAX_SIDE

# Files per task (a unit each): a whole photo costs a detection, a crop little more than its decode.
FILES_PER_TASK = {"photos": 8, "crops": 64}
# Without --actors: this share of the cluster's CPUs goes to model actors, the rest to the tasks that
# read and detect (yuface is the larger cost on whole photos, decoding is small next to the models on crops).
ACTOR_CPU_SHARE = {"photos": 0.5, "crops": 0.5}
# Blocks of the unit dataset: one group each up to this, so that tasks balance; beyond it blocks hold
# several groups rather than the object store holding a tiny object per group.
MAX_BLOCKS = 4096
# A model actor's process beside its files: Python, Ray's worker, onnxruntime, the batches in flight.
# Ray Data's own memory issue detector says how much a worker used against what it reserved.
ACTOR_BASE_MEMORY = 512 * 2**20
# Errors printed at the end (all of them are in the table).
SHOWN_ERRORS = 5


@config_dataclass(frozen=True)
class InferConfig:
    """One offline job. Unknown keys are refused, as every raymotion config refuses them."""

    run_dir: str
    inputs: tuple[str, ...]
    out: str
    crops: bool = False  # each image is one face (as POST /predict), not a photo to find faces in
    fps: Positive | None = 2.0  # video frames sampled per second (None: every frame)
    column: str | None = None  # Parquet: the image-bytes column (default: found from the schema)
    summary: bool = False  # print each emotion's share of the faces, overall and per tracked face
    batch_size: AtLeastOne = 32  # faces per model call
    actors: Count = 0  # model actors (0: one per GPU, else from the cluster's CPUs)
    actor_cpus: Positive = 1.0  # CPUs each model actor reserves
    threads: Count = 0  # onnxruntime threads per member in an actor (0: the actor's CPUs)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when the cluster has GPUs
    face_max_side: AtLeastOne = MAX_SIDE  # detection runs on a copy of at most this many pixels a side
    segment_s: Positive = 60.0  # video seconds per task
    progress_s: NonNegative = 5.0  # seconds between progress lines (0: none)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("InferConfig.inputs: give at least one image, folder, Parquet file or video")
        try:
            check_format(self.out)
        except ValueError as err:
            raise ConfigError(str(err)) from None


@dataclass
class InferResult:
    out: str
    rows: int = 0
    images: int = 0
    faces: int = 0
    no_face: int = 0
    errors: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    timeline: str | None = None
    plot: str | None = None
    shares: dict[str, float] = field(default_factory=dict)
    track_shares: dict[str, dict[str, float]] = field(default_factory=dict)
    first_errors: list[tuple[str, str]] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)
    actors: int = 0
    stats: str = ""  # Ray Data's execution stats: its operators, their tasks and times
    first_rows_s: float = 0.0  # from the start to the first rows back: planning, workers and actors starting
    first_images: int = 0  # the images those first rows answered

    def closing_line(self) -> str:
        rate = self.images / self.seconds if self.seconds else 0.0
        skipped = f"; {len(self.skipped)} files of other kinds skipped" if self.skipped else ""
        return (f"infer: {self.images} images in {self.seconds:.1f} s ({rate:.1f} images/s): {self.rows} rows, "
                f"{self.faces} faces, {self.no_face} images without a face, {self.errors} errors{skipped} -> {self.out}")


@dataclass
class Resources:
    actors: int
    actor_cpus: float
    actor_gpus: float
    threads: int
    device: str
    task_cpus: float = 1.0
    note: str = ""


def plan_resources(cfg: InferConfig, cluster: dict[str, float], available: dict[str, float] | None = None) -> Resources:
    """The model actors from the cluster's resources (ray.cluster_resources()): one per GPU, else a share
    of the CPUs, at least one; the tasks get the CPUs the actors leave.

    When less is free now (``available``: a service or another job holds part of the cluster), the CPU
    requests shrink in proportion until one actor and one task fit: Ray would otherwise wait for CPUs
    that may never come free. The threads stay what the CPUs the actor asked for would run."""
    gpus = int(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 1))
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and gpus) else "cpu"
    threads = cfg.threads or max(1, int(cfg.actor_cpus))
    if device == "cuda":
        res = Resources(cfg.actors or max(1, gpus), cfg.actor_cpus, 1.0 if gpus else 0.0, threads, device)
    else:
        share = ACTOR_CPU_SHARE["crops" if cfg.crops else "photos"]
        res = Resources(cfg.actors or max(1, int(cpus * share // cfg.actor_cpus)), cfg.actor_cpus, 0.0, threads, device)
    free = float((available or cluster).get("CPU", cpus))
    needed = res.actor_cpus + res.task_cpus  # one actor and one task at a time: the least that makes progress
    if res.actor_gpus == 0 and free >= needed:
        # A fixed pool waits for all its actors: no more than the free CPUs hold beside one task.
        res.actors = max(1, min(res.actors, int((free - res.task_cpus) // res.actor_cpus)))
    if 0 < free < needed:
        scale = free / needed
        res.actor_cpus, res.task_cpus = res.actor_cpus * scale, res.task_cpus * scale
        res.note = f"only {free:g} of {cpus:g} CPUs free: requests scaled to {res.actor_cpus:.2f} a model actor, " \
                   f"{res.task_cpus:.2f} a task"
    return res


def actor_memory(run_dir: str, manifest: rundir.Manifest, members: list[str]) -> int:
    """Bytes a model actor reserves: a worker process with onnxruntime, plus each served file a few times
    over (its weights, the session's optimised copy, the activations of a batch). A reservation for the
    scheduler, so that a node gets no more actors than its memory holds; not a measurement."""
    files = sum(os.path.getsize(os.path.join(run_dir, manifest.models[m].serve.file)) for m in members)
    return ACTOR_BASE_MEMORY + 4 * files


def unit_groups(units: list[Unit], crops: bool) -> list[dict]:
    """Rows of units for from_items: each video segment and Parquet row group alone, image files by
    FILES_PER_TASK, so that every task has a comparable amount of work."""
    per_task = FILES_PER_TASK["crops" if crops else "photos"]
    groups, files = [], []
    for unit in units:
        if unit.kind == "image" and not unit.error:
            files.append(asdict(unit))
            if len(files) == per_task:
                groups.append(files)
                files = []
        else:
            groups.append([asdict(unit)])
    if files:
        groups.append(files)
    return [{"units": json.dumps(g)} for g in groups]


def find_faces_in_groups(groups: pa.Table, **kwargs):
    """map_batches function over unit groups: raymotion.infer.detect.find_faces on each group's units."""
    from raymotion.infer.detect import find_faces

    units = [Unit(**u) for text in groups.column("units").to_pylist() for u in json.loads(text)]
    yield from find_faces(units, **kwargs)


class Progress:
    """A line every ``every_s`` seconds: images done of those expected, images/s, time left."""

    def __init__(self, expected: int, every_s: float, write: Callable[[str], None]):
        self.expected, self.every_s, self.write = expected, every_s, write
        self.started = self.last = time.perf_counter()

    def update(self, result: InferResult) -> None:
        now = time.perf_counter()
        if not self.every_s or now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.started
        rate = result.images / elapsed if elapsed else 0.0
        left = max(0, self.expected - result.images)
        eta = f"{_duration(left / rate)} left" if rate and left else "time left: unknown" if left else "finishing"
        self.write(f"infer: {result.images}/{self.expected} images, {rate:.1f} images/s, {eta}; "
                   f"{result.faces} faces, {result.errors} errors")


def _duration(seconds: float) -> str:
    seconds = int(math.ceil(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _count(result: InferResult, batch: pa.Table) -> None:
    face = batch.column("face")
    result.rows += batch.num_rows
    result.faces += batch.num_rows - face.null_count
    result.no_face += pc.sum(pc.equal(batch.column("faces"), 0)).as_py() or 0
    result.errors += batch.num_rows - batch.column("error").null_count
    # One row per image has face 0 or no face (no face found, or an error).
    result.labels.update(label for label in batch.column("label").to_pylist() if label is not None)
    result.images += batch.num_rows - (pc.sum(pc.fill_null(pc.greater(face, 0), False)).as_py() or 0)
    if len(result.first_errors) < SHOWN_ERRORS and batch.column("error").null_count < batch.num_rows:
        for source, error in zip(batch.column("source").to_pylist(), batch.column("error").to_pylist()):
            if error is not None and len(result.first_errors) < SHOWN_ERRORS:
                result.first_errors.append((source, error))


def quiet_ray_data() -> None:
    """No per-operator progress bars and no INFO lines per dataset: the job prints its own progress line."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def run_inference(cfg: InferConfig, log: Callable[[str], None] | None = None) -> InferResult:
    """Run the job on the Ray this process is connected to (ray.init first) and write cfg.out."""
    import ray

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    started = time.perf_counter()
    manifest = rundir.read_manifest(cfg.run_dir)
    classes, members = list(manifest.classes), list(manifest.ensemble.served)
    sizes = sorted({manifest.models[m].input_size for m in members})
    units, listing = plan_units(cfg.inputs, fps=cfg.fps, column=cfg.column, segment_s=cfg.segment_s)
    result = InferResult(out=cfg.out, skipped=listing.skipped)
    expected = sum(u.expected for u in units)
    res = plan_resources(cfg, ray.cluster_resources(), ray.available_resources())
    result.actors = res.actors
    quiet_ray_data()
    log(f"infer: {len(units)} units ({expected} images expected) from {len(cfg.inputs)} inputs; "
        f"{'crops' if cfg.crops else 'whole photos'}; {res.actors} model actor(s) x {res.actor_cpus:g} CPU, "
        f"{res.threads} thread(s), {res.device}; members {', '.join(members)}")
    if res.note:
        log(f"infer: {res.note}")
    for path in listing.large_row_groups:
        log(f"infer: {path} has row groups of over {LARGE_ROW_GROUP} rows, each read by one task; for more tasks "
            f"write it with smaller ones (pyarrow.parquet.write_table(..., row_group_size=256))")
    groups = unit_groups(units, cfg.crops)
    writer = Writer(cfg.out, output_schema(classes, members))
    video_batches = []
    progress = Progress(expected, cfg.progress_s, log)
    if groups:
        ds = ray.data.from_items(groups, override_num_blocks=min(len(groups), MAX_BLOCKS))
        ds = ds.map_batches(find_faces_in_groups, batch_size=1, batch_format="pyarrow", num_cpus=res.task_cpus,
                            fn_kwargs={"sizes": sizes, "crops": cfg.crops, "fps": cfg.fps, "max_side": cfg.face_max_side})
        from raymotion.infer.classify import Classify

        ds = ds.map_batches(Classify, batch_size=cfg.batch_size, batch_format="pyarrow",
                            fn_constructor_kwargs={"run_dir": os.path.abspath(cfg.run_dir), "device": res.device,
                                                   "intra_op_threads": res.threads},
                            compute=ray.data.ActorPoolStrategy(size=res.actors),
                            num_cpus=res.actor_cpus, num_gpus=res.actor_gpus or None,
                            # The memory reservation also keeps the stages apart: Ray Data fuses a task map
                            # into the next actor map when their resource requests agree, and detection
                            # would then run inside the model actors, one image at a time.
                            memory=actor_memory(cfg.run_dir, manifest, members))
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            first = not result.rows
            is_video = pc.fill_null(pc.equal(batch.column("kind"), "video"), False)
            video = batch.filter(is_video)
            if video.num_rows:
                video_batches.append(video)
            writer.write(batch.filter(pc.invert(is_video)))
            _count(result, batch)
            if first:
                result.first_rows_s, result.first_images = time.perf_counter() - started, result.images
            progress.update(result)
        result.stats = ds.stats()
    videos = with_tracks(pa.concat_tables(video_batches)) if video_batches else None
    if videos is not None:
        writer.write(videos)
    writer.close()
    if videos is not None:
        timeline = per_second(videos, classes)
        stem = os.path.splitext(cfg.out)[0]
        result.timeline = write_timeline(timeline, stem + ".timeline.csv", classes)
        result.plot = plot_timeline(timeline, classes, stem + ".timeline.png")
        tracks: dict[str, list] = {}
        for source, track, label in zip(*(videos.column(c).to_pylist() for c in ("source", "track", "label"))):
            if track is not None:
                tracks.setdefault(f"{source}#{track}", []).append(label)
        result.track_shares = {key: shares(labels, classes) for key, labels in tracks.items()}
    total = sum(result.labels.values())
    result.shares = {c: result.labels[c] / total if total else 0.0 for c in classes}
    result.seconds = time.perf_counter() - started
    return result
