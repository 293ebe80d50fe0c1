"""One real local Ray instance per test session, and a generated face data set (no ../shared needed)."""

from __future__ import annotations

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
    from raymotion.runtime import start_local_ray

    quiet_progress()
    # Its own instance, even beside a head the developer left running (make run): see start_local_ray.
    start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def faces_root(tmp_path_factory) -> str:
    """train: 100 per class, val: 20 per class, 64 px; the mouth and brows encode the class."""
    return make_synthetic_faces(tmp_path_factory.mktemp("faces"), train_per_class=100, val_per_class=20, size=64, seed=1)
