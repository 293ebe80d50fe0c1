"""``python -m bench data`` runs end to end on a tiny data set (figures: the real data, not here)."""

import glob
import json
import math
import re

from bench.__main__ import main


STEPS, WARMUP, BATCH = 6, 2, 16


def test_bench_data_runs_on_a_tiny_data_set(ray_session, faces_root, tmp_path, capsys):
    main(["data", "--data", faces_root, "--model", "lenet", "--size", "32", "--batch-size", str(BATCH),
          "--steps", str(STEPS), "--warmup", str(WARMUP), "--rounds", "1", "--passes", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    (path,) = glob.glob(str(tmp_path / "data-*.json"))
    with open(path) as f:
        result = json.load(f)
    # Both pipelines ran the requested steps in each requested round, and timed only the post-warm-up ones.
    assert len(result["rounds"]) == 1
    for pipeline in ("ray", "dataloader"):
        figures = result["rounds"][0][pipeline]
        assert figures["steps"] == STEPS, (pipeline, figures)
        assert figures["timed_images"] == (STEPS - WARMUP) * BATCH, (pipeline, figures)
        assert math.isfinite(figures["images_per_s"]) and figures["images_per_s"] > 0, (pipeline, figures)
        assert math.isfinite(figures["startup_s"]) and figures["startup_s"] > 0, (pipeline, figures)
    # The pipeline alone: the passes asked for per source, each over every training image (3 classes x 100).
    passes = result["pipeline_alone_passes"]
    assert set(passes) == {"folders", "parquet"}
    assert all(len(runs) == 1 and all(r["rows"] == 300 for r in runs) for runs in passes.values()), passes
    summary = result["summary"]
    assert all(math.isfinite(v) and v > 0 for v in summary.values()), summary
    # What the table prints is what the JSON keeps: its 13 figures are the summary's, as printed (2 decimals).
    printed = re.findall(r"^\s*\S.*?\s{2,}(-?\d+\.\d\d)$", out, re.M)
    assert "ratio Ray / DataLoader" in out and "ratio Parquet / folders" in out
    assert sorted(printed) == sorted(f"{v:.2f}" for v in summary.values()), (printed, summary)
