"""``python -m bench models RUN_DIR`` on a tiny run directory (untrained models, generated faces)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from raymotion.data import index_image_folders
from raymotion.data.transforms import load_images, normalize
from raymotion import rundir
from raymotion.export.onnx import export_optimized
from raymotion.models import create_model, get_model_spec
from raymotion.train.checkpoint import save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"lenet": 64, "mobilenet_v2": 32}  # mobilenet_v2 at 32 px keeps the test fast


def make_run_dir(run_dir, faces_root, models: dict[str, int] = MODELS) -> rundir.Manifest:
    """checkpoints/<name>/, models/<name>.onnx and a manifest.json built through raymotion.rundir (the model
    bundle.py writes through). No int8 record: the bench builds int8 itself."""
    folders = index_image_folders(faces_root)
    torch.manual_seed(0)
    entries = {}
    for name, size in models.items():
        spec = get_model_spec(name)
        model = create_model(name, num_classes=len(folders.classes), pretrained=False).eval()
        save_checkpoint(str(run_dir / "checkpoints" / name), model,
                        {"model": name, "classes": folders.classes, "input_size": size, "mean": list(spec.mean),
                         "std": list(spec.std), "epoch": 0, "metrics": {}, "train_config": {}})
        images, _ = load_images(list(folders.val.paths[:8]), size)
        path = run_dir / rundir.MODELS_DIR / f"{name}.onnx"
        exported = export_optimized(model, str(path), size, normalize(images, spec.mean, spec.std))
        fp32 = {"file": f"{rundir.MODELS_DIR}/{name}.onnx", "sha256": rundir.sha256_file(str(path)),
                "bytes": os.path.getsize(path)}
        entries[name] = rundir.ModelEntry(
            **fp32, input_size=size, mean=list(spec.mean), std=list(spec.std), opset=18, **exported, epoch=0,
            train_config={}, train_metrics={}, val={},
            serve=rundir.ServedFile(variant="fp32", reason="int8 disabled (ExportConfig.int8=False)", **fp32))
    manifest = rundir.Manifest(
        created_at="2025-01-02T03:04:05+0000", classes=folders.classes,
        data=rundir.DataRecord(root=folders.root, train=folders.counts("train"), val=folders.counts("val")),
        models=entries,
        ensemble=rundir.Ensemble(members=list(entries), served=list(entries),
                                 weights=dict(zip(entries, (0.25, 0.75) if len(entries) == 2 else (1.0,))),
                                 temperature=1.5, method="test",
                                 combine="test", val={}))
    rundir.write_manifest(str(run_dir), manifest)
    return manifest


# Whether int8 beats fp32 depends on the CPU (it loses without VNNI): each outcome is forced here, so the
# verdict is the same on every machine. The command, as a user runs it, with "inf": any speed is accepted,
# with any accuracy (tolerance 100 points); the test after it forces "0" (no int8 file is fast enough, what an
# AVX2-only CPU measures) in-process on LeNet alone, which is cheaper.
def test_bench_models_command_on_a_tiny_run(faces_root, tmp_path):
    run_dir = tmp_path / "run"
    make_run_dir(run_dir, faces_root)
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "models", str(run_dir), "--iters", "5", "--json", str(out),
         "--int8-range-images", "48", "--max-seconds", "0.5", "--rounds", "1", "--int8-max-latency-ratio", "inf",
         "--tolerance", "100"],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["model"], r["variant"]): r for r in result["rows"]}
    expected = {(m, v) for m in [*MODELS, "ensemble"] for v in ("torch", "onnx-fp32", "onnx-int8")}
    assert set(rows) == expected
    for key, row in rows.items():
        for field in ("p50_ms", "p95_ms", "throughput_b32", "bytes", "accuracy", "macro_f1", "flops_per_image",
                      "achieved_gflops", "fraction_of_peak"):
            assert math.isfinite(row[field]) and row[field] > 0, (key, field, row[field])
        assert row["p95_ms"] >= row["p50_ms"]
    # The ensemble runs its members one after the other: its work and size are the members' sums.
    for variant in ("torch", "onnx-fp32"):
        ens = rows[("ensemble", variant)]
        assert ens["flops_per_image"] == sum(rows[(m, variant)]["flops_per_image"] for m in MODELS)
        assert ens["bytes"] == sum(rows[(m, variant)]["bytes"] for m in MODELS)
    # int8 was built here (the manifest has none), and the decision and its reason are recorded. The table
    # has an int8 row either way: the served file, or the rejected candidate with the reason it lost.
    for name in MODELS:
        record = result["models"][name]["int8"]
        assert record["selected"] in ("static", "dynamic") and record["reason"].startswith(record["selected"])
        assert rows[(name, "onnx-int8")]["note"] == f"int8 {record['selected']} (built here)"
        assert rows[(name, "onnx-int8")]["bytes"] < 0.5 * rows[(name, "onnx-fp32")]["bytes"]
    # The ensemble's int8 row is the ensemble as it would be deployed: int8 members only where accepted.
    ens_int8, ens_fp32 = rows[("ensemble", "onnx-int8")], rows[("ensemble", "onnx-fp32")]
    assert "fp32" not in ens_int8["note"] and ens_int8["bytes"] < 0.5 * ens_fp32["bytes"], ens_int8["note"]
    assert result["peak_gflops"] > 0 and result["machine"]["usable_cpus"] >= 1
    assert os.path.getsize(result["chart"]) > 0 and "ensemble" in result["table"]


def test_a_rejected_int8_is_shown_with_its_reason_and_the_ensemble_row_keeps_fp32(faces_root, tmp_path):
    from bench.models import BenchConfig, run_models_bench

    run_dir = tmp_path / "run"
    make_run_dir(run_dir, faces_root, {"lenet": 64})
    result = run_models_bench(BenchConfig(str(run_dir), iters=3, max_seconds=0.5, rounds=1, max_latency_ratio=0.0,
                                          tolerance_points=100.0, int8_range_images=48), log=lambda _: None)
    rows = {(r["model"], r["variant"]): r for r in result["rows"]}
    record = result["models"]["lenet"]["int8"]
    assert record["selected"] == "fp32" and "no int8 variant accepted" in record["reason"]
    # The table still has the int8 row: the rejected candidate, with the reason it lost.
    assert rows[("lenet", "onnx-int8")]["note"].startswith("int8 static REJECTED: batch-1 latency")
    assert rows[("lenet", "onnx-int8")]["bytes"] < 0.5 * rows[("lenet", "onnx-fp32")]["bytes"]
    ensemble = rows[("ensemble", "onnx-int8")]
    assert ensemble["note"] == "members: lenet=onnx-fp32"
    assert ensemble["bytes"] == rows[("ensemble", "onnx-fp32")]["bytes"]
