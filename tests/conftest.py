"""One real local Ray instance per test session, and a generated face data set (no ../shared needed)."""

from __future__ import annotations

import logging
import os

import pytest

from raymotion.data.synthetic import make_synthetic_faces

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Tests must not join a cluster the developer left running (make run): always a fresh local one.
os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from raymotion.data.pipeline import quiet_progress

    quiet_progress()
    # The dashboard hosts the State API that Ray Train uses to clean up finished worker groups.
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
             logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def faces_root(tmp_path_factory) -> str:
    """train: 100 per class, val: 20 per class, 64 px; the mouth and brows encode the class."""
    return make_synthetic_faces(tmp_path_factory.mktemp("faces"), train_per_class=100, val_per_class=20, size=64, seed=1)
