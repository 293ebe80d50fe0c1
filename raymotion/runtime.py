"""Connecting to Ray: join a running cluster (``ray start --head``, ``ray job submit``) or start a local one."""

from __future__ import annotations

import logging
import os

import ray

from raymotion.data.pipeline import quiet_progress


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Initialise Ray once; returns True when this process started its own local instance
    (which dies with the process), False when it joined an existing cluster."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet_progress()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return False
    try:
        ray.init(address="auto", logging_level=logging.WARNING)
        return False
    except ConnectionError:
        # The dashboard hosts the State API, which Ray Train uses to clean up finished worker groups.
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", logging_level=logging.WARNING)
        return True
