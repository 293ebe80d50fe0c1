"""Ray Train, data-parallel: two workers (DDP over gloo) on the generated faces."""

import os

from raymotion.config import TrainConfig
from raymotion.data import index_image_folders
from raymotion.data.pipeline import load_cached
from raymotion.train.checkpoint import load_checkpoint
from raymotion.train.trainer import CHECKPOINT_METRIC, build_trainer


def test_two_worker_training_reports_every_epoch_and_keeps_the_best_checkpoint(ray_session, faces_root, tmp_path):
    folders = index_image_folders(faces_root)
    cfg = TrainConfig(model="lenet", input_size=32, epochs=2, batch_size=16, num_workers=2, cpus_per_worker=0.5)
    trainer = build_trainer(cfg, classes=folders.classes, cached=load_cached(folders, 32)[0],
                            storage_path=str(tmp_path), name="ddp")
    result = trainer.fit()
    last = result.metrics  # the last report (epoch 2); Train V2 keeps rows only for retained checkpoints
    assert last["epoch"] == 2
    for key in ("train_loss", "val_loss", "val_accuracy", "val_top2_accuracy", "val_macro_f1"):
        assert key in last and last[key] == last[key], key  # present and not NaN
    assert last["val_top2_accuracy"] >= last["val_accuracy"]
    best = result.get_best_checkpoint(metric=CHECKPOINT_METRIC, mode="max")
    model, meta = load_checkpoint(best.path)
    assert meta["classes"] == folders.classes and meta["input_size"] == 32
    # The kept checkpoint is the best epoch: never worse than the last one.
    assert meta["metrics"][CHECKPOINT_METRIC] >= last[CHECKPOINT_METRIC]
    assert os.path.isfile(os.path.join(best.path, "model.pt"))
