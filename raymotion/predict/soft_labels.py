"""A served ensemble's view of the training images: the soft labels students are distilled from.

The teachers are an exported run directory (its manifest), answering through raymotion.Predictor: each
served member scores the training images at its own input size, through its own calibration, and the
members mix as the manifest says, exactly as Serve would answer. Computed once per stage and cached in the
run directory (rundir.SoftLabels); TrainConfig.soft_labels points students at the file.
"""

from __future__ import annotations

import os

import numpy as np

from raymotion import rundir
from raymotion.predict.predictor import Predictor


def teacher_soft_labels(teacher_dir: str, source) -> rundir.SoftLabels:
    """The ensemble of ``teacher_dir`` (a run directory with a manifest) on ``source``'s training split."""
    teachers = Predictor(teacher_dir)
    if teachers.classes != list(source.classes):
        raise ValueError(f"teachers in {teacher_dir} know classes {teachers.classes}, the data has {source.classes}")
    images, uids = {}, None
    for size in teachers.input_sizes:
        images[size], _, size_uids = source.arrays_with_uids("train", size)
        if uids is not None and not np.array_equal(uids, size_uids):
            raise ValueError(f"training rows at {size}px differ from those at the other teachers' sizes")
        uids = size_uids
    mixed = teachers.pool(teachers.pixel_probabilities(images))
    return rundir.SoftLabels(classes=teachers.classes, teachers=teachers.ensemble.served_weights, uids=uids,
                             probs=mixed.astype(np.float32))


def cached_soft_labels(teacher_dir: str, source, path: str) -> str:
    """``path`` holding the teachers' soft labels, computed unless a finished file is already there (a
    resumed run reuses them: its students must see the labels they started with)."""
    if not os.path.exists(path):
        rundir.write_soft_labels(path, teacher_soft_labels(teacher_dir, source))
    return path
