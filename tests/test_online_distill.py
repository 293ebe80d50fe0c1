"""Online distillation (TrainConfig.teacher_checkpoints): teachers score each batch as the student sees it,
at their own input size and standardisation, and the student learns their view rather than the labels."""

import os

import numpy as np
import pytest
import torch

from raymotion.config import ConfigError, TrainConfig
from raymotion.models import create_model, get_model_spec
from raymotion.train.checkpoint import save_checkpoint
from raymotion.train.loop import (TrialSession, setup_worker, standardize, start_phase, teacher_probabilities,
                                  train_one_epoch)

CLASSES = ["angry", "happy", "sad"]


def save_teacher(directory: str, says: int | None = None, input_size: int = 48, classes=CLASSES) -> torch.nn.Module:
    """A LeNet checkpoint, trained at ``input_size`` with a standardisation of its own (not LeNet's default):
    random, or answering class ``says`` whatever the image (its last layer's bias dominates)."""
    torch.manual_seed(3)
    teacher = create_model("lenet", num_classes=len(classes))
    last = teacher.classifier[-1]
    with torch.no_grad():
        if says is None:
            last.weight.mul_(50.0)  # a random LeNet is near-uniform: spread its answers so that inputs show
        else:
            last.weight.mul_(0.01)
            last.bias.copy_(torch.tensor([12.0 if i == says else 0.0 for i in range(len(classes))]))
    save_checkpoint(directory, teacher, {"model": "lenet", "classes": list(classes), "input_size": input_size,
                                         "mean": [0.2, 0.3, 0.4], "std": [0.5, 0.6, 0.7], "epoch": 1,
                                         "metrics": {}, "train_config": {}})
    return teacher.eval()


def setup(cfg: TrainConfig, rows: int, classes=CLASSES):
    return setup_worker({"train": cfg.to_dict(), "classes": list(classes), "train_rows": rows},
                        TrialSession({}, use_gpu=False))


def test_a_teacher_scores_the_batch_at_its_own_size_and_standardisation(tmp_path):
    checkpoint = str(tmp_path / "teacher")
    teacher = save_teacher(checkpoint, input_size=48)
    run, _ = setup(TrainConfig(model="lenet", input_size=32, teacher_checkpoints=(checkpoint,)), rows=64)
    assert [(t.input_size, t.mean.tolist()) for t in run.teachers] == [(48, pytest.approx([0.2, 0.3, 0.4]))]
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    probs = teacher_probabilities(run.teachers, images, run.amp, run.device)
    x = standardize(images, torch.tensor([0.2, 0.3, 0.4]), torch.tensor([0.5, 0.6, 0.7]))
    x = torch.nn.functional.interpolate(x, size=(48, 48), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        expected = teacher(x).softmax(1)
    assert probs.shape == (8, 3) and torch.allclose(probs, expected, atol=1e-5)
    # The images differ, and so do the teacher's answers: the comparison above is not of constants.
    assert probs.std(0).max() > 0.01


def test_a_student_learns_its_online_teachers_view_not_the_labels(tmp_path):
    """Every label says "angry", the teacher says "sad" on whatever it sees: with distill_alpha 1 the student
    ends up answering "sad"; the same training without the teacher answers "angry"."""
    checkpoint = str(tmp_path / "teacher")
    save_teacher(checkpoint, says=2)
    rng = np.random.default_rng(1)
    batches = [{"image": torch.from_numpy(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)),
                "label": torch.zeros(16, dtype=torch.long),
                "target": torch.nn.functional.one_hot(torch.zeros(16, dtype=torch.long), 3).float()}
               for _ in range(25)]

    def trained_answers(cfg: TrainConfig) -> torch.Tensor:
        run, model = setup(cfg, rows=16 * len(batches))
        model, optimizer, scheduler = start_phase(run, model, ("full", 1, cfg.lr))
        model.train()
        train_one_epoch(run, model, optimizer, scheduler, batches)
        model.eval()
        spec = get_model_spec("lenet")
        with torch.no_grad():
            x = standardize(batches[0]["image"], torch.tensor(spec.mean), torch.tensor(spec.std), cfg.channels_last)
            return model(x).argmax(1)

    cfg = TrainConfig(model="lenet", input_size=32, epochs=1, batch_size=16, lr=3e-3, label_smoothing=0.0,
                      distill_alpha=1.0)
    assert (trained_answers(cfg.replace("test", teacher_checkpoints=(checkpoint,))) == 2).all()
    assert (trained_answers(cfg) == 0).all()


def test_online_teachers_are_refused_beside_stored_soft_labels_and_with_other_classes(tmp_path):
    with pytest.raises(ConfigError, match="give one"):
        TrainConfig(soft_labels="distill/teachers.npz", teacher_checkpoints=("checkpoints/mobilenet_v2",))
    checkpoint = str(tmp_path / "teacher")
    save_teacher(checkpoint, says=0, classes=["calm", "happy", "sad"])
    with pytest.raises(ValueError, match="not of this run's classes"):
        setup(TrainConfig(model="lenet", teacher_checkpoints=(checkpoint,)), rows=64)
    # As configs travel to workers (JSON): a list comes back a tuple; and absolute, where it was made: a
    # Train worker's working directory is not the driver's.
    cfg = TrainConfig(teacher_checkpoints=["runs/r/checkpoints/a", "/b"], init_checkpoint="runs/r/checkpoints/c")
    assert cfg.teacher_checkpoints == (os.path.abspath("runs/r/checkpoints/a"), "/b")
    assert cfg.init_checkpoint == os.path.abspath("runs/r/checkpoints/c") and TrainConfig().init_checkpoint == ""


def test_a_preset_with_online_teachers_gives_those_students_the_teachers_checkpoints(tmp_path):
    """tune's distilled_configs: the students in Preset.online_teachers get every teacher's checkpoint and no
    stored soft labels; the others get the stored ones (here a cached file, so none is computed)."""
    from types import SimpleNamespace

    from raymotion.config import ConfigError, Preset
    from raymotion.tune.__main__ import distilled_configs

    from raymotion.rundir import soft_labels_path

    soft_labels = soft_labels_path(str(tmp_path), "teachers")
    os.makedirs(os.path.dirname(soft_labels))
    open(soft_labels, "wb").close()
    ctx = SimpleNamespace(preset=Preset(name="online", students=("lenet", "vit"), online_teachers=("vit",)),
                          run_dir=str(tmp_path))
    checkpoints = {"mobilenet_v2": "/r/checkpoints/mobilenet_v2", "efficientnet_lite0": "/r/checkpoints/efficientnet_lite0"}
    configs = distilled_configs(ctx, {m: TrainConfig(model=m) for m in ("lenet", "vit")}, checkpoints, {})
    assert list(configs) == ["lenet", "vit"]
    assert (configs["vit"].teacher_checkpoints, configs["vit"].soft_labels) == (tuple(checkpoints.values()), "")
    assert (configs["lenet"].teacher_checkpoints, configs["lenet"].soft_labels) == ((), soft_labels)
    with pytest.raises(ConfigError, match=r"online_teachers \['resnet34'\] are not among its students"):
        Preset(name="bad", students=("lenet",), online_teachers=("resnet34",))


def test_the_single_student_learns_online_from_the_served_members_where_the_preset_says_so():
    from raymotion.config import Preset
    from raymotion.tune.__main__ import student_config

    served = ("/r/checkpoints/mobilenet_v2", "/r/checkpoints/efficientnet_lite0")
    base = TrainConfig(model="mobilenet_v2")
    online = student_config(base, Preset(name="o", student="mobilenet_v2", student_online_teachers=True), "",
                            "/r/checkpoints/mobilenet_v2", served)
    assert (online.teacher_checkpoints, online.soft_labels) == (served, "")
    stored = student_config(base, Preset(name="s", student="mobilenet_v2"), "e.npz", None, served)
    assert (stored.teacher_checkpoints, stored.soft_labels) == ((), "e.npz")
