"""Ray Train, data-parallel: two workers (DDP over gloo) on the generated faces."""

import glob
import os
import signal
import threading
import time

import pytest
from ray.util.state import list_actors

from raymotion.config import TrainConfig
from raymotion.data import index_image_folders
from raymotion.data.pipeline import load_cached
from raymotion.train.checkpoint import TRAIN_STATE_FILE, load_checkpoint
from raymotion.train.trainer import build_trainer


def kill_a_worker_after_the_first_checkpoint(run_dir: str, killed: dict, timeout_s: float = 120) -> None:
    """SIGKILL one Train worker's process (as the OOM killer would) once the run has a registered
    checkpoint. Train's workers are unnamed actors: the State API's pid, not a handle, reaches them."""
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


def test_two_worker_training_survives_a_killed_worker_and_keeps_the_best_checkpoint(ray_session, faces_root, tmp_path):
    """DDP over gloo; one worker is killed after the first checkpoint: Train restarts the group, the loop
    continues from the latest checkpoint (not from epoch 1), every epoch is reported, the best is kept."""
    folders = index_image_folders(faces_root)
    cfg = TrainConfig(model="lenet", input_size=32, epochs=8, batch_size=16, num_workers=2, cpus_per_worker=0.5,
                      max_failures=2)
    trainer = build_trainer(cfg, classes=folders.classes, cached=load_cached(folders, 32)[0],
                            storage_path=str(tmp_path), name="ddp")
    killed: dict = {}
    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint, args=(str(tmp_path / "ddp"), killed))
    killer.start()
    result = trainer.fit()
    killer.join(30)
    assert "pid" in killed, "no Train worker was found to kill"
    last = result.metrics  # the last report; Train V2 keeps rows only for retained checkpoints
    assert result.error is None and last["epoch"] == cfg.epochs
    assert 1 <= last["resumed_from_epoch"] < cfg.epochs  # from a checkpoint of this run, before its end
    for key in ("train_loss", "val_loss", "val_accuracy", "val_top2_accuracy", "val_macro_f1"):
        assert key in last and last[key] == last[key], key  # present and not NaN
    assert last["val_top2_accuracy"] >= last["val_accuracy"]
    best = result.get_best_checkpoint(metric=cfg.metric, mode=cfg.mode)
    model, meta = load_checkpoint(best.path)
    assert meta.classes == folders.classes and meta.input_size == 32
    # Typed records: the config it trained with, and what it ran on (a CPU here, float32).
    assert meta.train_config.model == cfg.model and meta.train_config.epochs == cfg.epochs
    assert meta.runtime.device == "cpu" and meta.runtime.autocast == "off" and meta.runtime.workers == cfg.num_workers
    # The kept checkpoint is the best epoch: never worse than the last one.
    assert meta.metrics[cfg.metric] >= last[cfg.metric]
    assert os.path.isfile(os.path.join(best.path, "model.pt"))


def test_two_phase_transfer_with_two_workers(ray_session, faces_root, tmp_path):
    """Head only (backbone frozen), then everything: the DDP wrapper is rebuilt between the phases."""
    import torch

    from raymotion.models import create_model, split_head_parameters

    folders = index_image_folders(faces_root)
    cfg = TrainConfig(model="mobilenet_v2", input_size=32, epochs=2, head_epochs=1, head_lr=1e-2, lr=1e-3,
                      batch_size=16, max_batches_per_epoch=3, num_workers=2, cpus_per_worker=0.5)
    result = build_trainer(cfg, classes=folders.classes, cached=load_cached(folders, 32)[0],
                           storage_path=str(tmp_path), name="two-phase").fit()
    assert result.metrics["epoch"] == 2 and result.metrics["head_only"] == 0.0
    model, meta = load_checkpoint(result.get_best_checkpoint(metric=cfg.metric, mode=cfg.mode).path)
    imagenet = create_model("mobilenet_v2", num_classes=3, pretrained=True)
    backbone_ckpt, _ = split_head_parameters(model, "mobilenet_v2")
    backbone_init, _ = split_head_parameters(imagenet, "mobilenet_v2")
    same = all(torch.equal(a, b) for a, b in zip(backbone_ckpt, backbone_init))
    # The head phase must leave the backbone exactly as loaded; the full phase must move it.
    assert same == (meta.epoch == 1), meta.epoch


def test_early_stopping_rule():
    from raymotion.train.loop import EarlyStopping

    stopper = EarlyStopping(patience=2)
    # Best at epoch 2; epochs 3 and 4 do not beat it (a tie is not an improvement): stop after epoch 4.
    assert [stopper.update(e, v) for e, v in enumerate([0.5, 0.6, 0.6, 0.55], 1)] == [False, False, False, True]
    assert stopper.best_epoch == 2
    never = EarlyStopping(patience=0)
    assert not any(never.update(e, 0.1) for e in range(1, 20))
    # mode="min": lower is better; an epoch that did not report the metric is no improvement.
    lower = EarlyStopping(patience=1, mode="min")
    assert [lower.update(e, v) for e, v in enumerate([0.9, 0.7, None, 0.8], 1)] == [False, False, True, True]
    assert lower.best_epoch == 2


def test_early_stopping_and_the_kept_checkpoint_follow_the_metric_and_mode(ray_session, faces_root, tmp_path):
    """A metric that never improves after epoch 1 under its mode ("epoch", "min"): early stopping must end
    the run `patience` epochs later, and the checkpoint Train keeps must be epoch 1's. With the mode
    ignored (higher is better) or early stopping off, all 6 epochs run and a later checkpoint is kept."""
    folders = index_image_folders(faces_root)
    cfg = TrainConfig(model="lenet", input_size=32, epochs=6, early_stopping_patience=2, batch_size=16,
                      max_batches_per_epoch=2, metric="epoch", mode="min")
    trainer = build_trainer(cfg, classes=folders.classes, cached=load_cached(folders, 32)[0],
                            storage_path=str(tmp_path), name="early")
    # The pair reaches Train's checkpoint ranking (the kept epoch below could coincide with val F1's by chance).
    kept = trainer.run_config.checkpoint_config
    assert (kept.checkpoint_score_attribute, kept.checkpoint_score_order) == ("epoch", "min")
    result = trainer.fit()
    assert (result.metrics["epoch"], result.metrics["best_epoch"]) == (3, 1)
    _, meta = load_checkpoint(result.get_best_checkpoint(metric="epoch", mode="min").path)
    assert meta.epoch == 1


def test_transfer_phases_train_the_head_first_only_with_pretrained_weights():
    """(The frozen backbone itself: tests/test_models.py, every registered model.)"""
    from raymotion.train.loop import transfer_phases

    cfg = TrainConfig(model="mobilenet_v2", epochs=4, head_epochs=2)
    assert transfer_phases(cfg, pretrained=True) == [("head", 2, cfg.head_lr), ("full", 2, cfg.lr)]
    assert transfer_phases(cfg, pretrained=False) == [("full", 4, cfg.lr)]
    assert transfer_phases(cfg.replace("test", head_epochs=9), pretrained=True)[-1] == ("full", 1, cfg.lr)


@pytest.mark.parametrize("total, warmup", [(20, 2), (7, 1), (5, 0)])
def test_the_stock_schedule_warms_up_linearly_then_follows_a_cosine_to_zero(total, warmup):
    """Per step: peak * (k + 1) / w during the w warm-up steps, then peak * (1 + cos(pi * t / (T - w))) / 2."""
    import math

    import torch

    from raymotion.train.loop import warmup_cosine

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = warmup_cosine(optimizer, total, warmup)
    seen = []
    for _ in range(total):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    want = [0.5 * (k + 1) / warmup if k < warmup else
            0.25 * (1 + math.cos(math.pi * (k - warmup) / (total - warmup))) for k in range(total)]
    assert seen == pytest.approx(want, abs=1e-9)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)  # after the last step


def test_local_ray_hands_train_its_short_poll(ray_session):
    """Processes the session's raylet starts (Train's controller among them) see TRAIN_POLL_ENV."""
    import ray

    from raymotion.runtime import TRAIN_POLL_ENV

    @ray.remote(num_cpus=0)
    def read_env(keys):
        return {k: os.environ.get(k) for k in keys}

    assert ray.get(read_env.remote(list(TRAIN_POLL_ENV))) == TRAIN_POLL_ENV


def test_a_model_started_from_a_run_checkpoint_has_its_weights_and_fine_tunes_whole(tmp_path):
    """TrainConfig.init_checkpoint (the distilled student's start from the run's own member): the model
    holds the checkpoint's weights, not ImageNet's, and has no head-only phase (its head is trained); a
    checkpoint of another model or other classes is refused by name."""
    import torch

    from raymotion.models import create_model, get_model_spec
    from raymotion.train.checkpoint import save_checkpoint
    from raymotion.train.loop import TrialSession, setup_worker, transfer_phases

    classes, spec = ["angry", "happy", "sad"], get_model_spec("mobilenet_v2")
    torch.manual_seed(5)
    member = create_model("mobilenet_v2", num_classes=3, pretrained=False)
    checkpoint = str(tmp_path / "checkpoints" / "mobilenet_v2")
    save_checkpoint(checkpoint, member, {"model": "mobilenet_v2", "classes": classes, "input_size": 32,
                                         "mean": list(spec.mean), "std": list(spec.std), "epoch": 3,
                                         "metrics": {}, "train_config": {}})

    def setup(cfg: TrainConfig, run_classes=classes):
        return setup_worker({"train": cfg.to_dict(), "classes": run_classes, "train_rows": 64},
                            TrialSession({}, use_gpu=False))

    run, model = setup(TrainConfig(model="mobilenet_v2", epochs=3, head_epochs=1, init_checkpoint=checkpoint))
    expected = member.state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in model.state_dict().items())
    assert run.pretrained is False and transfer_phases(run.cfg, run.pretrained) == [("full", 3, run.cfg.lr)]
    # Without it, the same config starts from ImageNet with its head phase.
    fresh, fresh_model = setup(TrainConfig(model="mobilenet_v2", epochs=3, head_epochs=1))
    assert fresh.pretrained is True and transfer_phases(fresh.cfg, fresh.pretrained)[0][0] == "head"
    assert not torch.equal(fresh_model.state_dict()["features.0.0.weight"], expected["features.0.0.weight"])
    with pytest.raises(ValueError, match="not a lenet"):
        setup(TrainConfig(model="lenet", init_checkpoint=checkpoint))
    with pytest.raises(ValueError, match="classes"):
        setup(TrainConfig(model="mobilenet_v2", init_checkpoint=checkpoint), ["calm", "happy", "sad"])
