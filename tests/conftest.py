"""One real local Ray instance per test session, a generated face data set (no ../shared needed), and one
run of the tune command on it, served on 127.0.0.1 (shared by the end-to-end, API and browser tests)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from raymotion import rundir

from raymotion.data.synthetic import make_synthetic_faces

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Tests must not join a cluster the developer left running (make run): always a fresh local one.
os.environ.pop("RAY_ADDRESS", None)


# The 3-node cluster check (tests/test_multinode.py), started beside the session: {"proc", "out", "deadline"}.
CLUSTER_CHECK: dict = {}
CLUSTER_CHECK_TIMEOUT_S = 900


def pytest_collection_finish(session):
    if not session.config.option.collectonly and any(item.path.name == "test_multinode.py" for item in session.items):
        from test_multinode import start_cluster_check

        out = tempfile.mkdtemp(prefix="raymotion-cluster-")
        CLUSTER_CHECK.update(out=out, proc=start_cluster_check(out),
                             deadline=time.monotonic() + CLUSTER_CHECK_TIMEOUT_S)


def pytest_sessionfinish(session):
    if CLUSTER_CHECK:
        if CLUSTER_CHECK["proc"].poll() is None:  # the session was cut short
            CLUSTER_CHECK["proc"].kill()
            CLUSTER_CHECK["proc"].wait(30)
        shutil.rmtree(CLUSTER_CHECK["out"], ignore_errors=True)


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


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def cpus_held_but(ray, left: float):
    """A placement group holding all of the session's free CPUs but ``left`` (as make run's service holds
    most of a 2-CPU machine), removed on leaving: whatever waited for CPUs then gets them."""
    from ray.util.placement_group import placement_group, remove_placement_group

    held = placement_group([{"CPU": round(ray.available_resources()["CPU"] - left, 2)}])
    ray.get(held.ready(), timeout=60)
    try:
        yield held
    finally:
        remove_placement_group(held)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(name)``: a registered model (3 classes, its packaged weights if any, eval mode), its ONNX
    file and the exporter used; each exported once per session (an export takes seconds to tens of them),
    for the tests that check what the file computes."""
    import torch

    from raymotion.export.onnx import export_onnx
    from raymotion.models import create_model, get_model_spec

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            spec = get_model_spec(name)
            torch.manual_seed(0)
            model = create_model(name, num_classes=3, pretrained=spec.pretrained_weights is not None).eval()
            path = str(tmp_path_factory.mktemp("onnx") / f"{name}.onnx")
            cache[name] = model, path, export_onnx(model, path, spec.input_size)
        return cache[name]

    return get


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def cli_run(ray_session, faces_root, tmp_path_factory):
    """``python -m raymotion.tune`` as a user runs it, as a driver of the session's Ray: its terminal
    output (stdout + stderr, as a terminal shows them) and its run directory."""
    out = tmp_path_factory.mktemp("run")
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "-m", "raymotion.tune", "--address", address, "--data", faces_root,
         # Two epochs (MobileNetV2: its head, then all of it) at 64 px: the least that trains both phases.
         "--models", "lenet,mobilenet_v2", "--preset", "smoke", "--num-samples", "2", "--epochs", "2",
         "--set", "input_size=64", "--out", str(out),
         # int8 served whatever this CPU measures (it loses to fp32 without VNNI), so that the int8 path
         # through the bundle and Serve runs on every machine.
         "--int8-max-latency-ratio", "inf", "--int8-tolerance", "100", "--int8-latency-seconds", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return str(out), proc.stdout


@pytest.fixture(scope="session")
def run(cli_run):
    """The run directory and its manifest as JSON, read through rundir (which checks, among others, that
    "served" is the members with a positive weight: the only ones the app deploys)."""
    run_dir = cli_run[0]
    return run_dir, rundir.manifest_json(rundir.read_manifest(run_dir))


@pytest.fixture(scope="session")
def served_url(run):
    """The run served by the real app on Serve, on 127.0.0.1 (one per session: tests share it)."""
    from ray import serve

    from serve.app import AppArgs, build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # Small CPU shares (scheduling only): the app stays up for the session beside tests that train.
    args = AppArgs(run_dir=run[0], model_cpus=0.1, ingress_cpus=0.1, face_cpus=0.05)
    serve.run(build_app(args), name="raymotion", route_prefix="/", blocking=False)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


