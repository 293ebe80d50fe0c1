"""``python -m bench cluster``: a 3-node Ray cluster on this one machine, used as a cluster is.

Ray's ``cluster_utils.Cluster`` starts a head and two worker nodes, each a raylet with its own CPUs, a custom
resource and a node label (they share this machine's cores and file system, which stands in for the shared
storage a real cluster mounts). Then, against that cluster:

1. one Tune experiment (LeNet, generated faces) of two trials side by side, the same but for where their
   Train runs' 2 workers (DDP over gloo) go: ``placement_strategy="PACK"`` (one node: the reference) and
   ``"SPREAD"`` (distinct nodes). After the SPREAD trial's first epoch, the worker node of one of its
   workers is removed (``Cluster.remove_node``): Train restarts the worker group on the nodes left
   (``TrainConfig.max_failures``) and the loop resumes from the latest checkpoint;
2. a replacement node joins; the best checkpoint is exported and served with 2 replicas of each deployment,
   at most one per node (``AppArgs.max_replicas_per_node``); under HTTP load, a worker node holding a model
   replica is removed.

Placements are read from Ray's State API (the node id of every Train worker and Serve replica actor, dead or
alive). Checkpoints and the run directory live under ``--out`` (``storage_path``), which every node sees.
The JSON report (printed, and written to ``OUT/cluster.json``) is what tests/test_multinode.py checks.

Run it in a process of its own: it starts and stops its own Ray (never one that is already running).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from ray import tune

from raymotion.runtime import free_port

HEAD_LABEL, WORKER_LABEL = "head", "worker"


@dataclass
class ClusterCheckConfig:
    out: str
    # Logical CPUs (they share this machine's cores): the head fits the PACK trial's 2 workers (1 CPU each)
    # beside a SPREAD worker, both trials (0.1 each) and their data tasks (0.5 each).
    head_cpus: int = 5
    worker_cpus: int = 1  # one Train worker per worker node
    epochs: int = 4  # the node goes after epoch 1; the other three give the removal time to land mid-trial
    input_size: int = 32
    train_per_class: int = 200
    val_per_class: int = 20
    serve: bool = True
    serve_load_seconds: float = 4.5  # HTTP load while a Serve node is removed (a third before, the rest after)


# --- the cluster ----------------------------------------------------------------------------------------------

class LocalCluster:
    """A head and worker nodes on this machine, each with its own resources and label; the driver (this
    process) attached to the head. Restores Ray's "last started cluster" file on shutdown, so that
    ``ray status`` and other drivers on this machine are not pointed at a cluster that is gone."""

    def __init__(self, head_cpus: int, worker_cpus: int, workers: int = 2):
        import ray
        from ray._common.utils import get_ray_address_file
        from ray.cluster_utils import Cluster

        self._address_file = get_ray_address_file(None)
        self._saved_address = open(self._address_file).read() if os.path.isfile(self._address_file) else None
        port = free_port()
        # As raymotion.runtime.start_local_ray: every process of this cluster (raylets are children of this
        # one, and hand their environment to their workers) resolves "the" cluster to this one, never to
        # another Ray on the machine (Ray Train's placement-group cleaner looks it up through RAY_ADDRESS).
        os.environ["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{port}"
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Train's controller polls its workers every 2 s by default: a lost worker and a finished run are
        # seen sooner (Train propagates the variable to its controller).
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        self.worker_cpus, self._next = worker_cpus, 0
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "gcs_server_port": port, "resources": {"raymotion_head": 1},
            "labels": {"raymotion/role": HEAD_LABEL},
            # A lost node is declared dead after ~2 s instead of Ray's ~15-30 s (period x failures): on a
            # real cluster the defaults stand; here it keeps the node-loss check short.
            # No idle workers started ahead (one per CPU per node, each importing Ray): on 2 cores they
            # only compete with the ones that are needed.
            "_system_config": {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                               "health_check_timeout_ms": 1000, "health_check_failure_threshold": 2,
                               "enable_worker_prestart": False, "prestart_worker_first_driver": False},
            # The dashboard hosts the State API: Ray Train cleans up worker groups through it.
            "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port()})
        for _ in range(workers):
            self.add_worker(wait=False)  # started side by side, then awaited together
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, logging_level=logging.WARNING)
        self.head_id = ray.get_runtime_context().get_node_id()

    def add_worker(self, wait: bool = True):
        self._next += 1
        name = f"raymotion_worker_{self._next}"
        return self.cluster.add_node(wait=wait, num_cpus=self.worker_cpus, resources={name: 1},
                                     labels={"raymotion/role": WORKER_LABEL, "raymotion/node": name})

    def remove(self, node_id: str) -> None:
        node = next(n for n in self.cluster.worker_nodes if n.node_id == node_id)
        self.cluster.remove_node(node)

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
        if self._saved_address is not None:
            with open(self._address_file, "w") as f:
                f.write(self._saved_address)


def actor_nodes(class_prefix: str, alive_only: bool = False) -> list[dict[str, str]]:
    """Actors whose class name starts with ``class_prefix``: id, node id, state (the State API keeps dead
    actors too, so the placement of a finished or killed worker group can still be read)."""
    from ray.util.state import list_actors

    filters = [("state", "=", "ALIVE")] if alive_only else []
    return [{"actor_id": a.actor_id, "node_id": a.node_id, "state": a.state, "class_name": a.class_name,
             "pid": a.pid, "placement_group_id": a.placement_group_id}
            for a in list_actors(filters=filters, detail=True, limit=10000, raise_on_missing_output=False)
            if (a.class_name or "").startswith(class_prefix)]


def node_roles() -> dict[str, str]:
    from ray.util.state import list_nodes

    return {n.node_id: {"name": (n.labels or {}).get("raymotion/node", (n.labels or {}).get("raymotion/role", "?")),
                        "state": n.state}
            for n in list_nodes(detail=True, limit=100, raise_on_missing_output=False)}


# --- training -------------------------------------------------------------------------------------------------

# One experiment, two trials at the same point but for their placement, run side by side: Optuna's first point
# (the start) packs both workers on one node, its second proposal (seed 0) spreads them (tests check both ran).
SPACE = """# The cluster check's search space: the same trial packed on one node and spread over nodes.
space:
  placement_strategy: {choice: [PACK, SPREAD]}
  lr: 5.0e-4
  batch_size: 8
start:
  placement_strategy: PACK
"""
HISTORY_KEYS = ("epoch", "resumed_from_epoch", "val_accuracy", "val_loss", "val_macro_f1", "train_loss")

# The cluster the node-removing callback acts on: module state, because Tune pickles its callbacks with the
# experiment's state, and a cluster's processes and locks do not pickle.
_CLUSTER: LocalCluster | None = None


def worker_groups() -> dict[str, dict[str, Any]]:
    """Train worker groups (one placement group each) from the State API: per group, each worker actor's
    node id and state, dead ones included."""
    groups: dict[str, dict[str, Any]] = {}
    for w in actor_nodes("RayTrainWorker"):
        group = groups.setdefault(w["placement_group_id"] or "none", {"workers": []})
        group["workers"].append({k: w[k] for k in ("actor_id", "node_id", "state", "pid")})
    for group in groups.values():
        group["nodes"] = sorted({w["node_id"] for w in group["workers"]})
    return groups


class ClusterWatch(tune.Callback):
    """Records every trial's epochs by placement, and on the SPREAD trial's first report of ``after_epoch``
    removes a worker node (never the head) that holds one of its Train workers: the group spread over
    several nodes."""

    def __init__(self, after_epoch: int):
        self.after_epoch = after_epoch
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.removal: dict[str, Any] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        placement = trial.config.get("placement_strategy", "?")
        self.rows.setdefault(placement, []).append({k: result.get(k) for k in HISTORY_KEYS})
        if placement != "SPREAD" or self.removal or result.get("epoch") != self.after_epoch or _CLUSTER is None:
            return
        groups = worker_groups()
        live = {pg: g for pg, g in groups.items() if any(w["state"] == "ALIVE" for w in g["workers"])}
        spread = [g for g in live.values() if len(g["nodes"]) > 1]
        candidates = sorted({n for g in spread for n in g["nodes"]} - {_CLUSTER.head_id})
        self.removal.update(after_epoch=self.after_epoch, groups_before=live, at=time.time())
        if not candidates:
            self.removal["error"] = "no Train worker group spread over nodes, so no worker node to remove"
            return
        self.removal["node_id"] = candidates[0]
        _CLUSTER.remove(candidates[0])
        self.removal["removed_s"] = time.time() - self.removal["at"]

    def __getstate__(self):  # what it records stays in this process (Tune pickles callbacks into its state)
        return {"after_epoch": self.after_epoch, "rows": {}, "removal": {}}


def tune_both(cfg: ClusterCheckConfig, folders, cached) -> dict[str, Any]:
    from raymotion.config import TrainConfig, TuneSettings
    from raymotion.tune.experiment import tune_model

    spaces = os.path.join(cfg.out, "spaces")
    os.makedirs(spaces, exist_ok=True)
    with open(os.path.join(spaces, "lenet.yaml"), "w") as f:
        f.write(SPACE)
    base = TrainConfig(model="lenet", input_size=cfg.input_size, epochs=cfg.epochs, num_workers=2,
                       cpus_per_worker=1.0, torch_threads=1, max_failures=2, pretrained=False, seed=0)
    counts = [folders.counts("train")[c] for c in folders.classes]
    # FIFO: neither trial is stopped early (they are compared, not ranked).
    settings = TuneSettings(num_samples=2, max_concurrent_trials=2, scheduler="fifo", seed=0)
    watch = ClusterWatch(after_epoch=1)
    started = time.perf_counter()
    result = tune_model(base, classes=folders.classes, class_counts=counts, cached=cached, settings=settings,
                        spaces_dir=spaces, run_dir=cfg.out, callbacks=[watch])
    return {"seconds": time.perf_counter() - started, "trials": result.trials, "failed": result.failed,
            "restarted": result.restarted,
            "best_checkpoint": result.checkpoint_path, "history": watch.rows, "node_removed": watch.removal,
            "worker_groups": worker_groups()}


# --- serving --------------------------------------------------------------------------------------------------

def serve_under_node_loss(cfg: ClusterCheckConfig, cluster: LocalCluster, run_dir: str, image: bytes) -> dict[str, Any]:
    from ray import serve

    from bench.serve import load, summarize, wait_healthy
    from serve.app import AppArgs, build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    args = AppArgs(run_dir=run_dir, replicas=2, model_cpus=0.25, ingress_replicas=2, ingress_cpus=0.25,
                   face_replicas=1, face_cpus=0.1, max_replicas_per_node=1)
    started = time.perf_counter()
    serve.run(build_app(args), name="raymotion", route_prefix="/", blocking=False)
    wait_healthy(port, 120)
    out: dict[str, Any] = {"deploy_s": time.perf_counter() - started, "port": port,
                           "replicas_before": actor_nodes("ServeReplica:raymotion:", alive_only=True)}
    models = [r for r in out["replicas_before"] if r["class_name"].endswith(":model_lenet")]
    # A worker node with a model replica, the one with the most replicas of any kind first (an ingress too).
    held = {n: sum(r["node_id"] == n for r in out["replicas_before"]) for n in {r["node_id"] for r in models}}
    victims = sorted(set(held) - {cluster.head_id}, key=lambda n: (-held[n], n))
    if not victims:
        out["error"] = f"no model replica outside the head node: {models}"
        return out

    def remove_later():
        time.sleep(cfg.serve_load_seconds / 3)
        out["removed_node_id"], out["removal_started_s"] = victims[0], time.perf_counter() - load_started
        cluster.remove(victims[0])
        # remove returns once the node's processes are dead. Requests in flight while they were killed can fail
        # (the head's proxy may have handed one to the dying ingress replica: Serve answers that with a 500);
        # every request sent from here on must be answered.
        out["removed_at_s"] = time.perf_counter() - load_started

    remover = threading.Thread(target=remove_later, daemon=True)
    load_started = time.perf_counter()
    remover.start()
    outcomes = load(port, [("/predict", image, "image/jpeg")], concurrency=2, seconds=cfg.serve_load_seconds,
                    max_requests=100_000)
    remover.join(60)
    removed_at = load_started + out.get("removed_at_s", 0.0)
    after = [o for o in outcomes if o.started >= removed_at]
    out.update(load=summarize(outcomes, 1), after_removal=summarize(after, 1) if after else {},
               failed_statuses=sorted({o.status for o in outcomes if o.status != 200}),
               replicas_after=actor_nodes("ServeReplica:raymotion:", alive_only=True))
    return out  # no serve.shutdown(): its graceful stop takes seconds, and the cluster's shutdown ends it all


# --- the whole check ------------------------------------------------------------------------------------------

def run_cluster_check(cfg: ClusterCheckConfig, log=print) -> dict[str, Any]:
    from raymotion.config import ExportConfig
    from raymotion.data import index_image_folders
    from raymotion.data.pipeline import load_cached, quiet_progress
    from raymotion.data.synthetic import make_synthetic_faces
    from raymotion.export.bundle import build_run_bundle

    os.makedirs(cfg.out, exist_ok=True)
    report: dict[str, Any] = {"config": vars(cfg)}
    t0 = time.perf_counter()
    root = make_synthetic_faces(os.path.join(cfg.out, "faces"), train_per_class=cfg.train_per_class,
                                val_per_class=cfg.val_per_class, size=cfg.input_size, seed=1)
    folders = index_image_folders(root)
    global _CLUSTER
    cluster = _CLUSTER = LocalCluster(cfg.head_cpus, cfg.worker_cpus)
    try:
        quiet_progress()
        report["head_node_id"] = cluster.head_id
        report["nodes_at_start"] = node_roles()
        report["cluster_start_s"] = time.perf_counter() - t0
        log(f"cluster: {len(report['nodes_at_start'])} nodes up in {report['cluster_start_s']:.1f} s")
        cached, _ = load_cached(folders, cfg.input_size)
        report["train"] = train = tune_both(cfg, folders, cached)
        removed = train["node_removed"]
        log(f"tune: PACK and SPREAD trials side by side in {train['seconds']:.1f} s ({train['failed']} failed); "
            f"worker node removed after epoch 1: {removed.get('node_id', removed.get('error'))}")
        for placement, rows in sorted(train["history"].items()):
            log(f"  {placement}: " + ", ".join(f"epoch {r['epoch']} val loss {r['val_loss']:.4f}"
                                              + (f" (resumed after {r['resumed_from_epoch']})" if r["resumed_from_epoch"] else "")
                                              for r in rows))

        if cfg.serve:
            # Back to 3 nodes (the replacement a cluster's autoscaler would start), joining during the export.
            cluster.add_worker(wait=False)
            run_dir = os.path.join(cfg.out, "run")
            started = time.perf_counter()
            build_run_bundle(run_dir, {"lenet": train["best_checkpoint"]}, folders,
                             export=ExportConfig(int8=False, latency_seconds=1.0))
            report["export_s"] = time.perf_counter() - started
            cluster.cluster.wait_for_nodes()
            image = open(folders.split("val").paths[0], "rb").read()
            report["serve"] = serve_under_node_loss(cfg, cluster, run_dir, image)
            s = report["serve"]
            log(f"serve: deployed in {s.get('deploy_s', 0):.1f} s; {s.get('load', {}).get('ok')} of "
                f"{s.get('load', {}).get('requests')} answered 200 with a node removed "
                f"(longest gap {s.get('load', {}).get('longest_gap_s', float('nan')):.2f} s)")
        report["nodes_at_end"] = node_roles()
    finally:
        _CLUSTER = None
        cluster.shutdown()
    report["seconds"] = time.perf_counter() - t0
    with open(os.path.join(cfg.out, "cluster.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    return report
