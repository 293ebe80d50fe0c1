"""Distillation on the session's run (smoke preset: LeNet is a student of MobileNetV2 there): the soft
labels the tune command cached, what the student trained against, and the soft labels' arithmetic,
checked against the export's own ensemble on the same images."""

import os

import numpy as np
import pytest

from raymotion import rundir
from raymotion.data import open_data
from raymotion.predict.soft_labels import cached_soft_labels, teacher_soft_labels


def test_the_student_trained_against_the_teachers_cached_soft_labels(run, faces_root):
    run_dir, manifest = run
    path = rundir.soft_labels_path(run_dir, "teachers")
    labels = rundir.read_soft_labels(path)
    # The teachers are the models the preset does not distil; LeNet points at their file.
    assert labels.teachers == {"mobilenet_v2": pytest.approx(1.0)}
    assert manifest["models"]["lenet"]["train_config"]["soft_labels"] == path
    assert manifest["models"]["mobilenet_v2"]["train_config"]["soft_labels"] == ""
    source = open_data(faces_root)
    assert sorted(labels.uids.tolist()) == list(range(len(source.split("train").paths)))
    np.testing.assert_allclose(labels.probs.sum(1), 1.0, atol=1e-5)
    assert labels.by_uid().shape == (len(labels.uids), 3) and not np.isnan(labels.by_uid()).any()


def test_soft_labels_are_the_served_ensemble_on_the_images(run, faces_root, tmp_path):
    """Asked for the soft labels of a data set whose train split is the val images, the teachers answer
    exactly what the export recorded for the ensemble on val (predictions/val.npz)."""
    run_dir, manifest = run
    root = tmp_path / "val-as-train"
    root.mkdir()
    for split in ("train", "val"):
        os.symlink(os.path.join(faces_root, "val"), root / split)
    source = open_data(str(root))
    labels = teacher_soft_labels(run_dir, source)
    served = {n: w for n, w in manifest["ensemble"]["weights"].items() if w > 0}
    assert labels.teachers == pytest.approx(served)
    saved = rundir.read_val_predictions(run_dir)
    expected, val_labels = saved.probs["ensemble"], saved.labels
    order = np.argsort(labels.uids)
    np.testing.assert_array_equal(np.asarray(source.split("train").labels)[labels.uids[order]], val_labels)
    np.testing.assert_allclose(labels.probs[order], expected, atol=1e-4)
    # Cached: a second call reads the file and computes nothing (the file's content is what comes back).
    path = str(tmp_path / "distill" / "x.npz")
    cached_soft_labels(run_dir, source, path)
    stamp = os.stat(path).st_mtime_ns
    cached_soft_labels(run_dir, source, path)
    assert os.stat(path).st_mtime_ns == stamp


def test_soft_labels_refuse_another_data_sets_classes(run, faces_root, tmp_path):
    run_dir, _ = run
    root = tmp_path / "two-classes"
    for split in ("train", "val"):
        for cls in ("angry", "calm"):
            (root / split / cls).mkdir(parents=True)
            for i, name in enumerate(sorted(os.listdir(os.path.join(faces_root, split, "angry")))[:3]):
                os.symlink(os.path.join(faces_root, split, "angry", name), root / split / cls / f"{i}.jpg")
    with pytest.raises(ValueError, match="classes"):
        teacher_soft_labels(run_dir, open_data(str(root)))


def test_a_student_config_reads_its_soft_labels_by_uid_and_refuses_other_classes(run, tmp_path):
    from raymotion.config import ConfigError, TrainConfig
    from raymotion.train.trainer import teacher_by_uid

    run_dir, manifest = run
    path = rundir.soft_labels_path(run_dir, "teachers")
    labels = rundir.read_soft_labels(path)
    dense = teacher_by_uid(TrainConfig(soft_labels=path), manifest["classes"])
    np.testing.assert_array_equal(dense[labels.uids], labels.probs)
    assert teacher_by_uid(TrainConfig(), manifest["classes"]) is None
    with pytest.raises(ConfigError, match="classes"):
        teacher_by_uid(TrainConfig(soft_labels=path), ["happy", "sad", "angry"])


def test_the_single_student_starts_from_the_runs_member_only_where_the_preset_says_so():
    """Preset.student_from_member: the full preset's student starts from the run's trained member of its
    model; a preset without it, or a run without that member, starts the student from ImageNet."""
    from raymotion.config import PRESETS, Preset, TrainConfig
    from raymotion.tune.__main__ import student_config

    base = TrainConfig(model="mobilenet_v2")
    full = student_config(base, PRESETS["full"], "", "runs/r/checkpoints/mobilenet_v2", ("/r/checkpoints/a",))
    assert full.init_checkpoint == os.path.abspath("runs/r/checkpoints/mobilenet_v2")
    assert (full.soft_labels, full.teacher_checkpoints) == ("", ("/r/checkpoints/a",))  # online, from the served
    assert student_config(base, PRESETS["full"], "s.npz", None).init_checkpoint == ""
    plain = student_config(base, Preset(name="plain", student="mobilenet_v2"), "s.npz", "ck")
    assert (plain.soft_labels, plain.init_checkpoint) == ("s.npz", "")
