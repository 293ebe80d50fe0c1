"""A class folder seeded with every kind of bad file: the colour ones are converted, the broken ones
skipped and counted, and a tune of them still completes."""

import io
import os
import shutil

import numpy as np
from PIL import Image

from raymotion.config import TrainConfig, TuneSettings
from raymotion.data import index_image_folders
from raymotion.data.pipeline import load_cached
from raymotion.train.trainer import class_weights
from raymotion.tune.experiment import tune_model


def _save(path, img, fmt, **kw):
    img.save(path, format=fmt, **kw)


def _seed_bad_files(folder):
    base = Image.new("RGB", (40, 40), (200, 150, 100))
    _save(os.path.join(folder, "grey.jpg"), base.convert("L"), "JPEG")
    _save(os.path.join(folder, "alpha.png"), base.convert("RGBA"), "PNG")
    _save(os.path.join(folder, "cmyk.jpg"), base.convert("CMYK"), "JPEG")
    _save(os.path.join(folder, "deep.png"), Image.fromarray(np.full((40, 40), 40000, np.uint16)), "PNG")
    good = io.BytesIO()
    base.save(good, format="JPEG")
    with open(os.path.join(folder, "truncated.jpg"), "wb") as f:
        f.write(good.getvalue()[: len(good.getvalue()) // 2])
    open(os.path.join(folder, "empty.jpg"), "wb").close()
    with open(os.path.join(folder, "notes.jpg"), "w") as f:
        f.write("this is not an image")
    with open(os.path.join(folder, "noise.png"), "wb") as f:
        f.write(os.urandom(2048))


def test_bad_files_are_converted_or_skipped_and_counted(ray_session, faces_root, tmp_path):
    root = tmp_path / "faces"
    shutil.copytree(faces_root, root)
    _seed_bad_files(root / "train" / "sad")
    folders = index_image_folders(root)
    assert len(folders.train) == 300 + 8
    cached, report = load_cached(folders, 32)
    assert report.skipped == {"truncated": 1, "empty": 1, "not-an-image": 2}
    assert report.converted == {"converted:L": 1, "converted:RGBA": 1, "converted:CMYK": 1, "converted:I;16": 1}
    assert sorted(os.path.basename(p) for p in report.skipped_paths) == ["empty.jpg", "noise.png", "notes.jpg",
                                                                          "truncated.jpg"]
    assert "skipped 4 unreadable file(s)" in report.summary()
    assert cached["train"].count() == 304  # 300 faces + 4 converted
    # Trained as the tune command trains it: one trial, its one worker in the trial's process.
    cfg = TrainConfig(model="lenet", input_size=32, epochs=1, batch_size=32, class_weighting="balanced")
    counts = [folders.counts("train")[c] for c in folders.classes]
    result = tune_model(cfg, classes=folders.classes, class_counts=counts, cached=cached,
                        settings=TuneSettings(num_samples=1), run_dir=str(tmp_path / "run"))
    assert result.trials == 1 and result.failed == 0 and result.metrics["epoch"] == 1
    assert os.path.isfile(os.path.join(result.checkpoint_path, "model.pt"))


def test_balanced_class_weights():
    assert class_weights(TrainConfig(class_weighting="none"), [10, 30]) is None
    w = class_weights(TrainConfig(class_weighting="balanced"), [10, 30, 20])
    assert np.allclose(w, [2.0, 2 / 3, 1.0])
