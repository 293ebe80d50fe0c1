"""``python -m raymotion.bench data`` runs end to end on a tiny data set (figures: the real data, not here)."""

import glob
import json

from raymotion.bench.__main__ import main


def test_bench_data_runs_on_a_tiny_data_set(ray_session, faces_root, tmp_path, capsys):
    main(["data", "--data", faces_root, "--model", "lenet", "--size", "32", "--batch-size", "16", "--steps", "6",
          "--warmup", "2", "--rounds", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "ratio Ray / DataLoader" in out and "ratio Parquet / folders" in out
    (path,) = glob.glob(str(tmp_path / "data-*.json"))
    with open(path) as f:
        result = json.load(f)
    summary = result["summary"]
    for key in ("ray_images_per_s", "dataloader_images_per_s", "pipeline_folders_images_per_s",
                "pipeline_parquet_images_per_s"):
        assert summary[key] > 0, key
    assert summary["ratio_parquet_over_folders"] == summary["pipeline_parquet_images_per_s"] / summary[
        "pipeline_folders_images_per_s"]
    assert len(result["rounds"]) == 1 and len(result["pipeline_alone_passes"]["parquet"]) == 3
    assert summary["ratio_source_parquet_over_folders"] > 0 and summary["augment_images_per_s"] > 0
