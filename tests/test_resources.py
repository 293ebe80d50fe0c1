"""A tune beside something that holds the CPUs it needs (a Serve app left up by `make run`) must size
itself to what is free or stop at once saying what holds them: never wait without a word."""

import socket
import time

import pytest
from ray import serve

from raymotion.config import TrainConfig
from raymotion.tune.__main__ import parse_args, tune_and_export
from raymotion.tune.resources import MIN_WORKER_CPUS, ResourcesHeld, demand_of, fit_to_free


def test_a_trial_that_fits_is_left_as_it_is():
    cfg = TrainConfig(model="lenet")
    assert fit_to_free(cfg, free_cpus=2.0) == (cfg, None)


def test_workers_are_sized_down_to_what_is_free():
    # make run's Serve app holds 0.75 of 2 CPUs: 1.25 free, and one trial asks for 1.6.
    cfg = TrainConfig(model="lenet", num_workers=1, cpus_per_worker=1.0)
    assert demand_of(cfg).cpus == pytest.approx(1.6)
    fitted, note = fit_to_free(cfg, free_cpus=1.25)
    assert fitted.cpus_per_worker == pytest.approx(0.65) and demand_of(fitted).cpus <= 1.25
    assert "0.65 CPU each instead of 1.00" in note
    two = fit_to_free(TrainConfig(model="lenet", num_workers=2), free_cpus=1.8)[0]
    assert two.cpus_per_worker == pytest.approx(0.6)


def test_below_the_floor_it_refuses_and_says_why():
    cfg = TrainConfig(model="lenet")
    with pytest.raises(ResourcesHeld, match=rf"cut to {MIN_WORKER_CPUS} CPU each, but only 0.90 CPU are free"):
        fit_to_free(cfg, free_cpus=0.9)
    with pytest.raises(ResourcesHeld, match="only 0 GPU are free"):
        fit_to_free(TrainConfig(model="lenet", use_gpu=True), free_cpus=2.0, free_gpus=0.0)


@serve.deployment(ray_actor_options={"num_cpus": 0.7}, num_replicas=2)
class Holder:
    """A Serve app that holds 1.4 of the session's 2 CPUs, as a busy service would (the session's served
    run, conftest, holds part of the rest: together they leave less than one Train worker's floor)."""

    def __call__(self, request) -> str:
        return "busy"


@pytest.fixture
def busy_serve(ray_session):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Holder.bind(), name="holder", route_prefix="/holder")
    yield
    serve.delete("holder")  # not serve.shutdown(): the session's served run (conftest) stays up


def test_a_tune_beside_a_serve_app_that_holds_the_cpus_fails_fast_naming_it(busy_serve, faces_root, tmp_path):
    argv = ["--data", faces_root, "--models", "lenet", "--preset", "smoke", "--num-samples", "1", "--epochs", "1",
            "--out", str(tmp_path / "run")]
    args = parse_args(argv)
    started = time.monotonic()
    with pytest.raises(ResourcesHeld) as err:
        tune_and_export(args, argv)
    message = str(err.value)
    # Within the settle time (a finished trial's CPUs take seconds to come back), not after a hang.
    assert time.monotonic() - started < 60
    assert "one trial needs 1.60 CPU" in message and "of 2.00 in the cluster" in message
    assert "ServeReplica:holder:Holder" in message and "1.40 CPU" in message
    assert "serve shutdown" in message and "make ray-down" in message
