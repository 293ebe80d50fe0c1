"""A 3-node Ray cluster on this one machine (``python -m bench cluster``, bench/cluster.py):
Train workers and Serve replicas on distinct nodes, read from Ray's State API; a worker node removed mid-trial
(the trial resumes from its last checkpoint and completes); a Serve replica's node removed under load (the
service keeps answering); the spread run against the same run packed on one node.

The cluster runs once, in a subprocess of its own, started when the session has collected this module
(conftest.pytest_collection_finish): it must not touch the session's shared Ray (conftest.ray_session, and
the app served on it), and its own nodes are Ray processes that pytest's process must not become a driver
of. Each test reads a part of the JSON report it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 4  # the node goes after epoch 1: three more leave the removal time to land mid-trial


def start_cluster_check(out: str) -> subprocess.Popen:
    """The check as a subprocess, output to a file: conftest starts it as soon as the session has collected
    this module, so that it runs beside the tests before it (it is a Ray of its own, in a process of its
    own, and spends much of its time waiting for nodes and replicas to come and go)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    with open(os.path.join(out, "cluster.log"), "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "bench", "cluster", "--out", out,
                                 "--epochs", str(EPOCHS)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def cluster_report():
    from conftest import CLUSTER_CHECK

    out, proc = CLUSTER_CHECK["out"], CLUSTER_CHECK["proc"]
    proc.wait(timeout=max(1.0, CLUSTER_CHECK["deadline"] - time.monotonic()))
    with open(os.path.join(out, "cluster.log")) as f:
        log = f.read()
    assert proc.returncode == 0, log[-6000:]
    with open(os.path.join(out, "cluster.json")) as f:
        report = json.load(f)
    report["out"] = out
    return report


def _groups(groups: dict) -> list[set[str]]:
    return [set(g["nodes"]) for g in groups.values()]


def test_three_nodes_hold_train_workers_and_serve_replicas_on_distinct_nodes(cluster_report):
    head = cluster_report["head_node_id"]
    nodes = cluster_report["nodes_at_start"]
    assert len(nodes) == 3 and all(n["state"] == "ALIVE" for n in nodes.values())
    assert sorted(n["name"] for n in nodes.values()) == ["head", "raymotion_worker_1", "raymotion_worker_2"]
    # Before the node loss: two worker groups of 2 (the trials ran side by side), from the State API's actors.
    before = cluster_report["train"]["node_removed"]["groups_before"]
    assert sorted(len(g["workers"]) for g in before.values()) == [2, 2], before
    # The SPREAD trial's workers are on two nodes, the PACK one's on one (the head, which fits both).
    assert sorted(len(nodes_) for nodes_ in _groups(before)) == [1, 2], before
    assert {head} in _groups(before)

    serve = cluster_report["serve"]
    for deployment in ("model_lenet", "ingress"):
        placed = [r["node_id"] for r in serve["replicas_before"] if r["class_name"].endswith(f":{deployment}")]
        assert len(placed) == 2 and len(set(placed)) == 2, (deployment, placed)


def test_a_trial_completes_on_the_nodes_left_after_its_worker_node_is_removed(cluster_report):
    train, head = cluster_report["train"], cluster_report["head_node_id"]
    removal = train["node_removed"]
    assert "error" not in removal, removal
    lost = removal["node_id"]
    assert lost != head and cluster_report["nodes_at_end"][lost]["state"] == "DEAD"
    # Both trials finished (none failed), every epoch reported once; the spread one resumed after epoch 1.
    assert train["trials"] == 2 and train["failed"] == 0 and train["restarted"] == 1
    spread = train["history"]["SPREAD"]
    assert [r["epoch"] for r in spread] == list(range(1, EPOCHS + 1))
    assert [r["resumed_from_epoch"] for r in spread] == [0] + [1] * (EPOCHS - 1)
    # Train started a new worker group for it, on nodes that are still there.
    restarted = [g for pg, g in train["worker_groups"].items() if pg not in removal["groups_before"]]
    assert len(restarted) == 1 and lost not in restarted[0]["nodes"] and len(restarted[0]["workers"]) == 2
    # Checkpoints went to the storage path under the run directory, which every node shares.
    assert train["best_checkpoint"].startswith(os.path.join(cluster_report["out"], "tune"))
    assert os.path.isfile(os.path.join(train["best_checkpoint"], "model.pt"))


def test_the_spread_run_matches_the_run_packed_on_one_node(cluster_report):
    """Same seed, same data, same DDP arithmetic: epoch 1 (before the node loss) is the same computation
    wherever the workers are; after the resume, the runs agree within noise (a restarted data stream draws
    its augmentations anew). At this size LeNet is still near chance (val loss ~1.10 = ln 3), so the
    epoch-1 match is the sharp check and the end one only catches a run that went wrong."""
    history = cluster_report["train"]["history"]
    pack, spread = history["PACK"], history["SPREAD"]
    assert [r["epoch"] for r in pack] == list(range(1, EPOCHS + 1))
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert spread[0][key] == pytest.approx(pack[0][key], abs=1e-4), key
    assert spread[-1]["val_loss"] == pytest.approx(pack[-1]["val_loss"], abs=0.02)


def test_serve_keeps_answering_when_a_replica_node_is_removed(cluster_report):
    serve, head = cluster_report["serve"], cluster_report["head_node_id"]
    assert "error" not in serve, serve
    lost = serve["removed_node_id"]
    assert lost != head
    assert any(r["node_id"] == lost and r["class_name"].endswith(":model_lenet") for r in serve["replicas_before"])
    # Requests sent once the node's processes were gone are all answered; of those in flight while they were
    # killed (2 clients), at most those may fail (a CI run once had one 500 from the proxy among them).
    after = serve["after_removal"]
    assert after["requests"] > 0 and after["errors"] == 0, after
    assert serve["load"]["errors"] <= 2, serve["load"]
    assert all(r["node_id"] != lost for r in serve["replicas_after"])
