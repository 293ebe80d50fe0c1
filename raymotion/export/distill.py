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
from raymotion.data.transforms import normalize
from raymotion.export import ensemble
from raymotion.export.sessions import create_session, onnx_probabilities


def teacher_soft_labels(teacher_dir: str, source) -> rundir.SoftLabels:
    """The ensemble of ``teacher_dir`` (a run directory with a manifest) on ``source``'s training split."""
    manifest = rundir.read_manifest(teacher_dir)
    if manifest.classes != list(source.classes):
        raise ValueError(f"teachers in {teacher_dir} know classes {manifest.classes}, the data has {source.classes}")
    probs, uids = {}, None
    by_size: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for name in manifest.ensemble.served:
        entry = manifest.models[name]
        if entry.input_size not in by_size:
            by_size[entry.input_size] = source.arrays_with_uids("train", entry.input_size)
        images, _, size_uids = by_size[entry.input_size]
        if uids is not None and not np.array_equal(uids, size_uids):
            raise ValueError(f"{name}: training rows at {entry.input_size}px differ from the other teachers'")
        uids = size_uids
        session = create_session(os.path.join(teacher_dir, entry.serve.file))
        raw = onnx_probabilities(session, normalize(images, entry.mean, entry.std))
        probs[name] = ensemble.calibrate_members({name: raw}, {name: entry.calibration})[name]
    weights = manifest.ensemble.served_weights
    mixed = ensemble.combine(probs, weights, manifest.ensemble.temperature)
    return rundir.SoftLabels(classes=manifest.classes, teachers=weights, uids=uids,
                             probs=mixed.astype(np.float32))


def cached_soft_labels(teacher_dir: str, source, path: str) -> str:
    """``path`` holding the teachers' soft labels, computed unless a finished file is already there (a
    resumed run reuses them: its students must see the labels they started with)."""
    if not os.path.exists(path):
        rundir.write_soft_labels(path, teacher_soft_labels(teacher_dir, source))
    return path
