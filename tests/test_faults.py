"""Faults during training: a Train worker killed mid-run (a Ray actor kill) restarts its group from the
run's latest checkpoint and the run completes; the restart is in the results."""

import glob
import os
import signal
import threading
import time

from ray.util.state import list_actors

from raymotion.config import TrainConfig
from raymotion.data import index_image_folders
from raymotion.data.pipeline import load_cached
from raymotion.train.checkpoint import TRAIN_STATE_FILE
from raymotion.train.trainer import build_trainer


def kill_a_worker_after_the_first_checkpoint(run_dir: str, killed: dict, timeout_s: float = 120) -> None:
    """SIGKILL one Train worker's process (as the OOM killer would) once the run has a checkpoint. Train's
    workers are unnamed actors, so the state API's pid, not a handle, reaches them."""
    deadline = time.monotonic() + timeout_s
    # The controller's snapshot lists a checkpoint once it is registered (the files alone may be mid-upload).
    while time.monotonic() < deadline and not (glob.glob(os.path.join(run_dir, "checkpoint_*", TRAIN_STATE_FILE))
                                               and os.path.exists(os.path.join(run_dir, "checkpoint_manager_snapshot.json"))):
        time.sleep(0.1)
    workers = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000, detail=True)
               if a.class_name == "RayTrainWorker"]
    if workers:
        os.kill(workers[0].pid, signal.SIGKILL)
        killed["pid"] = workers[0].pid


def test_a_killed_train_worker_restarts_from_the_latest_checkpoint_and_the_run_completes(ray_session, faces_root, tmp_path):
    folders = index_image_folders(faces_root)
    cfg = TrainConfig(model="lenet", input_size=32, epochs=10, batch_size=16, num_workers=2, cpus_per_worker=0.5,
                      max_failures=2)
    trainer = build_trainer(cfg, classes=folders.classes, cached=load_cached(folders, 32)[0],
                            storage_path=str(tmp_path), name="killed")
    killed: dict = {}
    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint, args=(str(tmp_path / "killed"), killed))
    killer.start()
    result = trainer.fit()
    killer.join(30)
    assert "pid" in killed, "no Train worker was found to kill"
    assert result.error is None
    last = result.metrics
    assert last["epoch"] == cfg.epochs  # every epoch ran, to the end
    # The group restarted from a checkpoint of the run, not from scratch (epoch 0) and not after the end.
    assert 1 <= last["resumed_from_epoch"] < cfg.epochs
