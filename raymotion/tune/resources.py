"""Will a trial get the CPUs it asks for? Checked before each model's tune, from what the cluster has free.

A trial holds a sliver for itself, whole CPUs for its Train workers, and each epoch asks for a data task
on top. Ray does not fail a request that cannot be met: it waits, possibly forever (a Serve app left up by
``make run`` holds part of a small machine's CPUs, and the per-epoch data task may then never start). So the
tune sizes its Train workers down to what is free, within a floor, or stops at once and says what holds
the CPUs and how to free them.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass

import ray

from raymotion.config import TrainConfig
from raymotion.data.pipeline import STREAM_TASK_CPUS

TRIAL_CPUS = 0.1  # the Tune function trainable's own share (its Train workers, or its one worker, on top)
MIN_WORKER_CPUS = 0.5  # below this a Train worker is not worth starting: stop and say why instead
SETTLE_SECONDS = 15.0  # a finished trial's worker group takes a few seconds to hand its CPUs back


class ResourcesHeld(RuntimeError):
    """The cluster's free resources cannot run one trial, even with its workers sized down."""


@dataclass(frozen=True)
class TrialDemand:
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float

    @property
    def cpus(self) -> float:
        return TRIAL_CPUS + self.workers * self.cpus_per_worker + STREAM_TASK_CPUS

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker

    def describe(self) -> str:
        return (f"{self.cpus:.2f} CPU ({TRIAL_CPUS} trial + {self.workers} x {self.cpus_per_worker:.2f} Train worker "
                f"+ {STREAM_TASK_CPUS} data task)" + (f" and {self.gpus:g} GPU" if self.gpus else ""))


def demand_of(cfg: TrainConfig) -> TrialDemand:
    return TrialDemand(cfg.num_workers, cfg.cpus_per_worker, cfg.gpus_per_worker if cfg.use_gpu else 0.0)


def fit_to_free(cfg: TrainConfig, free_cpus: float, free_gpus: float = 0.0) -> tuple[TrainConfig, str | None]:
    """``cfg`` as is when one trial fits in what is free; else with smaller ``cpus_per_worker`` (a note says
    so). Raises ResourcesHeld (without the holders; see check_resources) when even the floor does not fit."""
    want = demand_of(cfg)
    if want.gpus > free_gpus + 1e-9:
        raise ResourcesHeld(f"one trial needs {want.describe()}, but only {free_gpus:g} GPU are free")
    if want.cpus <= free_cpus + 1e-9:
        return cfg, None
    # Hundredths, rounded down (the 1e-6 absorbs float error: 1.25 - 0.6 is 0.6499999...).
    per_worker = math.floor(100 * (free_cpus - TRIAL_CPUS - STREAM_TASK_CPUS) / cfg.num_workers + 1e-6) / 100
    floor = TrialDemand(cfg.num_workers, MIN_WORKER_CPUS, want.gpus_per_worker)
    if per_worker < MIN_WORKER_CPUS:
        raise ResourcesHeld(f"one trial needs {want.describe()}, and at least {floor.cpus:.2f} CPU with its "
                            f"Train workers cut to {MIN_WORKER_CPUS} CPU each, but only {free_cpus:.2f} CPU are free")
    note = (f"only {free_cpus:.2f} CPU free: Train workers ask for {per_worker:.2f} CPU each instead of "
            f"{cfg.cpus_per_worker:.2f} (they still use every core torch is given; they just share them)")
    return cfg.replace("free CPUs", cpus_per_worker=per_worker), note


def resource_holders() -> list[str]:
    """Who holds CPUs or GPUs now: live actors grouped by class (Serve replicas among them) and placement
    groups (Train worker groups of other runs), largest first. Needs the dashboard's State API."""
    from ray.util.state import list_actors, list_placement_groups

    held: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for actor in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10000, raise_on_missing_output=False):
        res = getattr(actor, "required_resources", None) or {}
        if res.get("CPU", 0) or res.get("GPU", 0):
            entry = held[f"actor {actor.class_name} (job {actor.job_id})"]
            entry[0] += 1
            entry[1] += res.get("CPU", 0)
            entry[2] += res.get("GPU", 0)
    for group in list_placement_groups(filters=[("state", "=", "CREATED")], detail=True, limit=10000,
                                       raise_on_missing_output=False):
        bundles = [b.get("unit_resources", {}) for b in (group.bundles or [])]
        cpus, gpus = sum(b.get("CPU", 0) for b in bundles), sum(b.get("GPU", 0) for b in bundles)
        if cpus or gpus:
            entry = held[f"placement group {group.name or group.placement_group_id[:8]} (a Train worker group, job "
                         f"{group.creator_job_id})"]
            entry[0] += 1
            entry[1] += cpus
            entry[2] += gpus
    lines = []
    for what, (count, cpus, gpus) in sorted(held.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"  {cpus:5.2f} CPU" + (f" {gpus:g} GPU" if gpus else "") + f"  {count} x {what}")
    return lines


HOW_TO_FREE = ("Free them and run again: `serve shutdown -y` stops a Serve app (make run leaves one up), "
               "`ray job stop <id>` another job, `make ray-down` this whole local Ray; or give Ray more CPUs.")


def check_resources(cfg: TrainConfig, settle_seconds: float = SETTLE_SECONDS) -> tuple[TrainConfig, str | None]:
    """fit_to_free against the cluster's free resources now. CPUs just released by a finished trial can take
    a few seconds to show, so an unmet demand is re-read for up to ``settle_seconds`` before deciding."""
    deadline = time.monotonic() + settle_seconds
    while True:
        free = ray.available_resources()
        free_cpus, free_gpus = free.get("CPU", 0.0), free.get("GPU", 0.0)
        want = demand_of(cfg)
        if (want.cpus <= free_cpus + 1e-9 and want.gpus <= free_gpus + 1e-9) or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    try:
        return fit_to_free(cfg, free_cpus, free_gpus)
    except ResourcesHeld as err:
        total = ray.cluster_resources().get("CPU", 0.0)
        holders = resource_holders() or ["  (no actor or placement group found; tasks of another driver?)"]
        raise ResourcesHeld(f"{err} (of {total:.2f} in the cluster). Held now by:\n" + "\n".join(holders)
                            + "\n" + HOW_TO_FREE) from None
