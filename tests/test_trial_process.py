"""A Tune trial of one Train worker trains in the trial's own process (TuneSettings.one_worker_in_trial):
the same loop and the same numbers as a Train worker group of one, without Train's actors; Tune continues
it from its latest checkpoint when its process dies."""

import glob
import json
import os
import signal
import threading
import time

import pytest
from ray.util.state import list_actors

from raymotion.config import TrainConfig, TuneSettings
from raymotion.data import index_image_folders
from raymotion.data.pipeline import load_cached
from raymotion.tune.experiment import trial_resources, trains_in_trial, tune_model
from raymotion.tune.resources import TRIAL_CPUS

SIZE = 32
EPOCHS = 5


@pytest.fixture(scope="module")
def data(ray_session, faces_root):
    folders = index_image_folders(faces_root)
    return folders, load_cached(folders, SIZE)[0]


def tune_one_trial(data, run_dir: str, one_worker_in_trial: bool):
    folders, cached = data
    base = TrainConfig(model="lenet", input_size=SIZE, epochs=EPOCHS, batch_size=16, max_batches_per_epoch=6, seed=3,
                       pretrained=False)
    settings = TuneSettings(num_samples=1, search="random", scheduler="fifo", seed=0, trial_max_failures=1,
                            one_worker_in_trial=one_worker_in_trial)
    seen: list = []
    result = tune_model(base, classes=folders.classes, class_counts=[folders.counts("train")[c] for c in folders.classes],
                        cached=cached, settings=settings, run_dir=run_dir,
                        on_trials=lambda rows, histories: seen.append((rows, histories)))
    (rows, (history,)) = seen[0]
    return {"result": result, "row": rows[0], "history": history}


def kill_the_trial_after_its_first_report(experiment_dir: str, killed: dict, timeout_s: float = 120) -> None:
    """SIGKILL the trial's process (as the OOM killer would) once Tune has its first result and checkpoint:
    the result names the trial's pid (Tune fills it in)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        results = glob.glob(os.path.join(experiment_dir, "*", "result.json"))
        if results and glob.glob(os.path.join(experiment_dir, "*", "checkpoint_*", "model.pt")):
            with open(results[0]) as f:
                first = f.readline()
            if first.strip():
                pid = json.loads(first)["pid"]
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed["pid"] = pid
                except ProcessLookupError:  # the trial had already finished
                    killed["missed"] = pid
                return
        time.sleep(0.05)


def train_controllers() -> set[str]:
    return {a.actor_id for a in list_actors(filters=[("class_name", "=", "TrainController")], limit=10000,
                                            raise_on_missing_output=False)}


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The same trial twice: in its own process, killed after its first report, and as a Train worker group
    of one."""
    own_dir, group_dir = str(tmp_path_factory.mktemp("own")), str(tmp_path_factory.mktemp("group"))
    before, killed = train_controllers(), {}
    killer = threading.Thread(target=kill_the_trial_after_its_first_report,
                              args=(os.path.join(own_dir, "tune", "tune-lenet"), killed))
    killer.start()
    own = tune_one_trial(data, own_dir, one_worker_in_trial=True)
    killer.join(30)
    own.update(killed=killed, train_started=train_controllers() != before, dir=own_dir)
    group = tune_one_trial(data, group_dir, one_worker_in_trial=False)
    group.update(train_started=train_controllers() != before)
    return own, group


def test_the_setting_selects_where_a_one_worker_trial_trains_and_what_it_asks_for():
    one, two = TrainConfig(num_workers=1, cpus_per_worker=1.5), TrainConfig(num_workers=2)
    assert trains_in_trial(one, TuneSettings()) and not trains_in_trial(one, TuneSettings(one_worker_in_trial=False))
    assert not trains_in_trial(two, TuneSettings())  # data-parallel runs always go through Train
    assert trial_resources(one, in_trial=True) == {"cpu": TRIAL_CPUS + 1.5}
    gpu = TrainConfig(cpus_per_worker=1.5, use_gpu=True, gpus_per_worker=0.5)
    assert trial_resources(gpu, in_trial=True) == {"cpu": TRIAL_CPUS + 1.5, "gpu": 0.5}
    assert trial_resources(one, in_trial=False) == {"cpu": TRIAL_CPUS}  # Train's workers ask for their own


def test_a_trial_in_its_own_process_matches_a_train_worker_group_of_one(runs):
    own, group = runs
    assert not own["train_started"] and group["train_started"]  # no Train run was started for the first
    # Same seed, same stream, same loop: the same computation. Epoch 1 came before the kill; after it, a
    # continued data stream draws its augmentations anew, so later epochs agree only within noise.
    first_own, first_group = own["history"][0], group["history"][0]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert first_own[key] == pytest.approx(first_group[key], abs=1e-5), key
    assert [r["epoch"] for r in group["history"]] == list(range(1, EPOCHS + 1)) and not group["row"]["restarted"]


def test_a_trial_killed_in_its_own_process_continues_from_its_checkpoint(runs):
    own, _ = runs
    assert "pid" in own["killed"], f"the trial was not killed: {own['killed']}"
    history = own["history"]
    # Every epoch once (the last report of each stands); those after the kill continued from a checkpoint.
    assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1))
    resumed_from = [r["resumed_from_epoch"] for r in history]
    assert resumed_from[0] == 0 and resumed_from[-1] >= 1 and resumed_from == sorted(resumed_from)
    assert all(r["resumed_from_epoch"] < r["epoch"] for r in history)
    assert own["row"]["restarted"] and own["row"]["stop_reason"] == "all epochs"
    assert own["result"].restarted == 1 and own["result"].failed == 0
    # Its checkpoints are Tune's, kept as Train keeps a run's; the best of them is what the tune returns.
    assert own["result"].checkpoint_path.startswith(os.path.join(own["dir"], "tune", "tune-lenet"))
    assert os.path.isfile(os.path.join(own["result"].checkpoint_path, "model.pt"))
