"""Several data sources trained as one run: class sets checked, rows sampled per source, figures per source."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from raymotion import rundir
from raymotion.config import Augmentation, TrainConfig
from raymotion.data import DataError, open_sources
from raymotion.data.synthetic import make_synthetic_faces

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> list[str]:
    """Two generated sources of different sizes and image sizes (as 224 px crops beside 48 px webcam faces)."""
    root = tmp_path_factory.mktemp("sources")
    big = make_synthetic_faces(root / "studio", train_per_class=60, val_per_class=12, size=64, seed=3)
    small = make_synthetic_faces(root / "webcam", train_per_class=20, val_per_class=8, size=32, seed=4)
    return [str(big), str(small)]


def test_sources_whose_class_sets_differ_are_refused_naming_the_difference(two_sources, tmp_path):
    fewer = tmp_path / "fewer"
    shutil.copytree(two_sources[1], fewer)
    for split in ("train", "val"):
        shutil.rmtree(fewer / split / "sad")
    with pytest.raises(DataError, match=r"fewer lacks sad.*--classes angry,happy"):
        open_sources([two_sources[0], str(fewer)])
    # --classes picks a subset that every source has; one that a source lacks is refused by name.
    narrowed = open_sources([two_sources[0], str(fewer)], ["happy", "angry"])
    assert narrowed.classes == ["angry", "happy"] and narrowed.counts("train") == {"angry": 80, "happy": 80}
    with pytest.raises(DataError, match=r"no class folder\(s\) sad"):
        open_sources([two_sources[0], str(fewer)], ["angry", "sad"])


def test_rows_are_numbered_run_wide_and_know_their_source_and_file(two_sources):
    sources = open_sources(two_sources)
    assert sources.names == ["studio", "webcam"] and sources.counts_by_source("val") == {"studio": 36, "webcam": 24}
    images, labels, uids = sources.arrays_with_uids("val", 32)
    assert images.shape == (60, 32, 32, 3) and list(uids) == list(range(60))
    assert list(sources.source_of("val", uids)) == [0] * 36 + [1] * 24
    paths = sources.paths_of("val", uids)
    assert all(p.startswith(two_sources[i > 35]) for i, p in enumerate(paths))


@pytest.mark.parametrize("shares,epoch_rows", [({"studio": 1.0, "webcam": 1.0}, 0), ({"studio": 1.0, "webcam": 3.0}, 0),
                                               ({"studio": 1.0, "webcam": 3.0}, 120)])
def test_rows_of_both_sources_reach_the_trainer_in_the_stated_proportion(ray_session, two_sources, shares, epoch_rows):
    from raymotion.data.pipeline import load_cached
    from raymotion.train.loop import epoch_batches
    from raymotion.train.trainer import worker_datasets

    sources = open_sources(two_sources)
    cached, _ = load_cached(sources, 32)
    cfg = TrainConfig(batch_size=20, source_shares=shares, augmentation=Augmentation.only(), epoch_rows=epoch_rows)
    counts = sources.counts_by_source("train")
    stream = worker_datasets(cfg, classes=sources.classes, cached=cached, source_counts=counts)["train"]
    seen = np.zeros(2)
    epochs = 4
    for epoch in range(1, epochs + 1):
        for batch in epoch_batches(stream.iterator(), cfg, epoch, device=__import__("torch").device("cpu")):
            seen += np.bincount(batch["source"].numpy(), minlength=2)
    wanted = np.asarray([shares["studio"], shares["webcam"]]) / sum(shares.values())
    # 240 rows an epoch (the sources' total) or epoch_rows, each drawn at its source's rate: within a few
    # standard errors.
    total, per_epoch = seen.sum(), epoch_rows or 240
    assert abs(total - epochs * per_epoch) < epochs * per_epoch / 6
    assert np.all(np.abs(seen / total - wanted) < 0.06), (seen, wanted)


def test_a_two_source_run_reports_every_figure_per_source(ray_session, two_sources, tmp_path):
    out = tmp_path / "run"
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "-m", "raymotion.tune", "--address", address, "--data", *two_sources,
         "--models", "lenet", "--preset", "smoke", "--num-samples", "1", "--epochs", "2", "--no-distill",
         "--set", "input_size=32", "--no-int8", "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:]
    terminal = proc.stdout
    assert "training rows per epoch by source" in terminal and "studio 63% (x0.85)" in terminal
    epoch_lines = [line for line in terminal.splitlines() if line.startswith("[lenet] trial 1/1 epoch ")]
    assert len(epoch_lines) == 2 and all(" (studio 0." in line and ", webcam 0." in line for line in epoch_lines)
    manifest = rundir.read_manifest(str(out))
    assert [s.name for s in manifest.data.sources] == ["studio", "webcam"]
    assert manifest.data.sources[1].val == {"angry": 8, "happy": 8, "sad": 8}
    entry, ens = manifest.models["lenet"], manifest.ensemble
    for scores in (entry.by_source, ens.by_source):
        assert list(scores) == ["studio", "webcam"] and [s.images for s in scores.values()] == [36, 24]
        for s in scores.values():
            assert {"accuracy", "macro_f1", "recall_sad"} <= set(s.val) and s.val_out_of_fold and s.val_degraded
    assert ens.by_source["webcam"].disagreements["member"] == "lenet"
    # The epochs' own figures, per source, and the objective: the mean of the sources' macro-F1.
    last = entry.tune["history"][-1]
    assert last["val_source_macro_f1"] == pytest.approx((last["val_studio_macro_f1"] + last["val_webcam_macro_f1"]) / 2)
    assert "val_webcam_recall_angry" in last
    predictions = rundir.read_val_predictions(str(out))
    assert predictions.source_names == ["studio", "webcam"] and list(np.bincount(predictions.sources)) == [36, 24]
    assert predictions.paths[-1].startswith(two_sources[1])
    assert "webcam" in terminal.split("=== summary ===")[1]
    with open(out / "report" / "index.html") as f:
        report = f.read().split('<section id="sources">')[1].split("</section>")[0]
    assert report.count("<td>studio</td>") == 2 and report.count("<td>webcam</td>") == 2  # lenet + ensemble each
    assert "webcam: the ensemble minus its best member here (lenet)" in report


def test_a_parquet_cache_and_a_folder_with_a_bad_file_train_as_two_sources(ray_session, two_sources, tmp_path):
    from raymotion.data.__main__ import prepare_parquet
    from raymotion.data.pipeline import load_cached

    cache = tmp_path / "studio-cache"
    prepare_parquet(two_sources[0], str(cache), 32)
    webcam = tmp_path / "webcam"
    shutil.copytree(two_sources[1], webcam)
    (webcam / "train" / "sad" / "broken.jpg").write_bytes(b"not an image")
    sources = open_sources([str(cache), str(webcam)])
    assert sources.names == ["studio-cache", "webcam"]
    cached, report = load_cached(sources, 32)
    # The broken file of the second source is skipped and named; every other row keeps a run-wide uid.
    assert sum(report.skipped.values()) == 1 and report.skipped_paths[0].endswith("broken.jpg")
    rows = cached["train"].to_pandas()
    assert len(rows) == 180 + 60 and rows["uid"].is_unique
    assert rows.groupby("source").size().to_dict() == {0: 180, 1: 60}
    assert rows.loc[rows["source"] == 1, "uid"].min() >= 180  # after the cache's rows
    val = cached["val"].to_pandas()
    assert val.groupby("source").size().to_dict() == {0: 36, 1: 24}
