"""A Serve replica runs ONNX files only: building the app (what ``serve run`` and every replica import)
must not import torch or torchvision, whose import time and memory each replica would otherwise pay."""

import os
import subprocess
import sys

from raymotion import rundir
from test_rundir import sample_manifest  # tests/ is on sys.path (no __init__.py: pytest prepends it)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Through the function ``serve run`` and ``serve deploy`` call the builder with (it validates the args into
# the builder's pydantic annotation).
BUILD = """
import sys
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary as build
import serve.app
app = build(serve.app.build_app, {"run_dir": sys.argv[1], "replicas": "2"})
assert type(app).__name__ == "Application", type(app)
print(sorted(m for m in ("torch", "torchvision") if m in sys.modules))
"""


def test_building_the_serve_app_imports_no_torch(tmp_path):
    rundir.write_manifest(str(tmp_path), sample_manifest())
    out = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_serve_app_args_are_typed_and_refuse_what_they_do_not_know():
    import pydantic
    import pytest

    from serve.app import AppArgs

    assert AppArgs.model_validate({"run_dir": "r", "replicas": "3"}).replicas == 3
    for bad, word in [({"run_dir": "r", "replica": 2}, "replica"), ({"run_dir": "r", "replicas": 0}, "replicas"),
                      ({"run_dir": "r", "device": "gpu"}, "device"), ({}, "run_dir")]:
        with pytest.raises(pydantic.ValidationError, match=word):
            AppArgs.model_validate(bad)


def test_the_shipped_serve_config_is_valid_for_serve_and_the_app():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from serve.app import CHECKOUT, AppArgs, resolve_run_dir

    with open(os.path.join(REPO, "serve", "config.yaml")) as f:
        config = ServeDeploySchema.model_validate(yaml.safe_load(f))
    (app,) = config.applications
    assert app.import_path == "serve.app:build_app" and config.http_options.host == "127.0.0.1"
    args = AppArgs.model_validate(app.args)
    assert resolve_run_dir(args.run_dir) == os.path.realpath(os.path.join(CHECKOUT, "runs", "latest"))
    assert resolve_run_dir("/abs/run") == "/abs/run"


def test_the_shipped_gpu_cluster_serve_config_is_valid_and_asks_for_gpu_shares(tmp_path):
    import yaml
    from ray.serve._private.build_app import build_app as build_serve_app
    from ray.serve.schema import ServeDeploySchema

    from serve.app import AppArgs, build_app

    with open(os.path.join(REPO, "serve", "config.gpu.yaml")) as f:
        config = ServeDeploySchema.model_validate(yaml.safe_load(f))
    (app,) = config.applications
    args = AppArgs.model_validate(app.args)
    assert args.run_dir.startswith("/mnt/shared/runs/")  # the shared file system of cluster.yaml
    rundir.write_manifest(str(tmp_path), sample_manifest())
    built = build_serve_app(build_app(args.model_copy(update={"run_dir": str(tmp_path)})), name=app.name)
    options = {d.name: d.ray_actor_options for d in built.deployments}
    assert options["model_lenet"]["num_gpus"] == 0.25 and options["ingress"].get("num_gpus", 0) == 0
    assert {d._replica_config.max_replicas_per_node for d in built.deployments} == {1}
