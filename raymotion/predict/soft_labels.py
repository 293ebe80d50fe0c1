"""A served ensemble's view of the training images: the soft labels students are distilled from.

The teachers are an exported run directory (its manifest): each served member's file scores the training
images at its own input size, through its own calibration, and the members mix with the ensemble's fitted
weights and temperature, exactly as Serve would answer. Computed once per stage and cached in the run
directory (rundir.SoftLabels); TrainConfig.soft_labels points students at the file.
"""

from __future__ import annotations

import os

import numpy as np

from raymotion import rundir
from raymotion.export.mixture import ensemble_probabilities
from raymotion.export.sessions import calibrated_member_probabilities


def teacher_soft_labels(teacher_dir: str, source) -> rundir.SoftLabels:
    """The ensemble of ``teacher_dir`` (a run directory with a manifest) on ``source``'s training split."""
    manifest = rundir.read_manifest(teacher_dir)
    if manifest.classes != list(source.classes):
        raise ValueError(f"teachers in {teacher_dir} know classes {manifest.classes}, the data has {source.classes}")
    served = {name: manifest.models[name] for name in manifest.ensemble.served}
    images, uids = {}, None
    for size in sorted({entry.input_size for entry in served.values()}):
        images[size], _, size_uids = source.arrays_with_uids("train", size)
        if uids is not None and not np.array_equal(uids, size_uids):
            raise ValueError(f"training rows at {size}px differ from those at the other teachers' sizes")
        uids = size_uids
    probs = calibrated_member_probabilities(teacher_dir, served, images)
    weights = manifest.ensemble.served_weights
    mixed = ensemble_probabilities(probs, manifest.ensemble)
    return rundir.SoftLabels(classes=manifest.classes, teachers=weights, uids=uids,
                             probs=mixed.astype(np.float32))


def cached_soft_labels(teacher_dir: str, source, path: str) -> str:
    """``path`` holding the teachers' soft labels, computed unless a finished file is already there (a
    resumed run reuses them: its students must see the labels they started with)."""
    if not os.path.exists(path):
        rundir.write_soft_labels(path, teacher_soft_labels(teacher_dir, source))
    return path
