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
    model, meta = load_checkpoint(result.get_best_checkpoint(metric=CHECKPOINT_METRIC, mode="max").path)
    imagenet = create_model("mobilenet_v2", num_classes=3, pretrained=True)
    backbone_ckpt, _ = split_head_parameters(model, "mobilenet_v2")
    backbone_init, _ = split_head_parameters(imagenet, "mobilenet_v2")
    same = all(torch.equal(a, b) for a, b in zip(backbone_ckpt, backbone_init))
    # The head phase must leave the backbone exactly as loaded; the full phase must move it.
    assert same == (meta["epoch"] == 1), meta["epoch"]


def test_early_stopping_rule():
    from raymotion.train.loop import EarlyStopping

    stopper = EarlyStopping(patience=2)
    # Best at epoch 2; epochs 3 and 4 do not beat it (a tie is not an improvement): stop after epoch 4.
    assert [stopper.update(e, v) for e, v in enumerate([0.5, 0.6, 0.6, 0.55], 1)] == [False, False, False, True]
    assert stopper.best_epoch == 2
    never = EarlyStopping(patience=0)
    assert not any(never.update(e, 0.1) for e in range(1, 20))


def test_early_stopping_ends_the_run_in_ray_train(ray_session, faces_root, tmp_path):
    folders = index_image_folders(faces_root)
    # lr=0 freezes the weights (BatchNorm statistics still move a little), so val macro-F1 soon stops improving.
    cfg = TrainConfig(model="lenet", input_size=32, epochs=6, lr=0.0, early_stopping_patience=1, batch_size=16,
                      max_batches_per_epoch=2)
    result = build_trainer(cfg, classes=folders.classes, cached=load_cached(folders, 32)[0],
                           storage_path=str(tmp_path), name="early").fit()
    last, best = result.metrics["epoch"], result.metrics["best_epoch"]
    # Either it ran out of epochs, or it stopped exactly `patience` epochs after its best.
    assert last == 6 or last == best + 1, (last, best)
    assert best <= last


def test_frozen_backbone_trains_only_the_head():
    import torch

    from raymotion.models import create_model, split_head_parameters
    from raymotion.train.loop import set_backbone_frozen, transfer_phases

    model = create_model("mobilenet_v2", num_classes=3, pretrained=True).train()
    set_backbone_frozen(model, "mobilenet_v2", frozen=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    backbone, head = split_head_parameters(model, "mobilenet_v2")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    # Only the head's weight and bias move; BatchNorm running statistics stay as loaded.
    assert changed == {"classifier.1.weight", "classifier.1.bias"}
    set_backbone_frozen(model, "mobilenet_v2", frozen=False)
    assert all(p.requires_grad for p in backbone + head)
    cfg = TrainConfig(model="mobilenet_v2", epochs=4, head_epochs=2)
    assert transfer_phases(cfg, pretrained=True) == [("head", 2, cfg.head_lr), ("full", 2, cfg.lr)]
    assert transfer_phases(cfg, pretrained=False) == [("full", 4, cfg.lr)]
    assert transfer_phases(cfg.replace(head_epochs=9), pretrained=True)[-1] == ("full", 1, cfg.lr)
