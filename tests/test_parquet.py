import numpy as np

from raymotion.data import index_image_folders, open_data
from raymotion.data.__main__ import prepare_parquet
from raymotion.data.parquet import ParquetCache
from raymotion.data.pipeline import load_cached


def test_parquet_round_trip_keeps_pixels_and_labels(ray_session, faces_root, tmp_path):
    out = tmp_path / "cache"
    prepare_parquet(faces_root, str(out), 48)
    cache = open_data(out)
    assert isinstance(cache, ParquetCache) and cache.size == 48
    folders = index_image_folders(faces_root)
    assert cache.classes == folders.classes
    for split in ("train", "val"):
        assert cache.counts(split) == folders.counts(split)
        from_parquet, labels_parquet = cache.arrays(split)
        from_files, labels_files = folders.arrays(split, 48)
        assert np.array_equal(from_parquet, from_files)  # same pixels, same order
        assert np.array_equal(labels_parquet, labels_files)
    # Every command's data loader takes the cache, at its own size or another.
    cached, _ = load_cached(cache, 48)
    assert cached["train"].count() == len(folders.train)
    resized, _ = load_cached(cache, 32)
    first = next(iter(resized["val"].iter_batches(batch_size=4)))
    assert first["image"].shape == (4, 32, 32, 3)
