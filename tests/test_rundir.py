"""The run-directory contract (raymotion.rundir): one format version, and records that round-trip."""

import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from raymotion import rundir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["angry", "happy", "neutral"]


def sample_manifest(weights: dict[str, float] | None = None) -> rundir.Manifest:
    """A manifest with every record bundle.py writes (values made up; no file behind it)."""
    weights = weights or {"lenet": 0.25, "mobilenet_v2": 0.75}
    models = {}
    for i, name in enumerate(weights):
        fp32 = {"file": f"{rundir.MODELS_DIR}/{name}.onnx", "sha256": f"{i:064x}", "bytes": 1000 + i}
        models[name] = rundir.ModelEntry(
            **fp32, input_size=32 + 32 * i, mean=[0.5] * 3, std=[0.25] * 3, opset=18, exporter="dynamo",
            optimization="basic", parity_max_abs_diff=1e-6, epoch=2, train_config={"lr": 1e-3},
            train_metrics={"train_loss": 0.5}, temperature=1.2, bias=[0.1, -0.1, 0.0],
            val={"accuracy": 0.5, "confusion": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]},
            serve=rundir.ServedFile(variant="fp32", reason="int8 disabled", **fp32),
            int8={"selected": "fp32", "max_latency_ratio": None}, tune={"trials": 2, "history": [{"epoch": 1}]})
    return rundir.Manifest(
        created_at="2025-01-02T03:04:05+0000", classes=CLASSES,
        data=rundir.DataRecord(root="/data/faces", train={c: 10 for c in CLASSES}, val={c: 3 for c in CLASSES},
                               generated=True, warning="GENERATED FACES"),
        models=models,
        ensemble=rundir.Ensemble(members=list(weights), served=[n for n, w in weights.items() if w > 0],
                                 weights=weights, temperature=0.9, method="greedy", combine="mean",
                                 val={"accuracy": 0.6}, val_out_of_fold={"folds": 5, "fold_weights": [weights]}))


def test_manifest_round_trips(tmp_path):
    manifest = sample_manifest()
    rundir.write_manifest(str(tmp_path), manifest)
    back = rundir.read_manifest(str(tmp_path))
    assert back == manifest
    # On disk: the JSON of the typed record, unset optionals left out (no nulls for absent records).
    on_disk = json.loads((tmp_path / rundir.MANIFEST).read_text())
    assert on_disk == rundir.manifest_json(manifest)
    assert "val_equal_weights" not in on_disk["ensemble"]
    assert on_disk["models"]["lenet"]["int8"]["max_latency_ratio"] is None  # inside an open record: kept


def test_extra_fields_survive_a_rewrite(tmp_path):
    """A field this code does not declare (a newer writer's) is written back, not dropped."""
    raw = rundir.manifest_json(sample_manifest())
    raw["models"]["lenet"]["future_field"] = {"x": 1}
    (tmp_path / rundir.MANIFEST).write_text(json.dumps(raw))
    rundir.write_manifest(str(tmp_path), rundir.read_manifest(str(tmp_path)))
    assert json.loads((tmp_path / rundir.MANIFEST).read_text())["models"]["lenet"]["future_field"] == {"x": 1}


@pytest.mark.parametrize("version", [1, 3, None])
def test_unknown_format_version_is_refused(tmp_path, version):
    raw = rundir.manifest_json(sample_manifest())
    if version is None:
        del raw["format_version"]
    else:
        raw["format_version"] = version
    (tmp_path / rundir.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(rundir.UnsupportedFormat) as err:
        rundir.read_manifest(str(tmp_path))
    message = str(err.value)
    assert f"format_version {version!r}" in message and f"format {rundir.FORMAT_VERSION} only" in message
    assert "python -m raymotion.export" in message  # says how to get a readable one
    with pytest.raises(ValidationError, match="format_version"):
        rundir.Manifest.model_validate(dict(raw, format_version=version))


def test_served_must_be_the_positive_weights():
    """Readers deploy "served" and mix with "weights": a manifest where they disagree is refused."""
    raw = rundir.manifest_json(sample_manifest({"lenet": 0.0, "mobilenet_v2": 1.0}))
    assert raw["ensemble"]["served"] == ["mobilenet_v2"]
    raw["ensemble"]["served"] = ["lenet", "mobilenet_v2"]
    with pytest.raises(ValidationError, match="positive weight"):
        rundir.Manifest.model_validate(raw)


def test_rundir_imports_no_torch():
    code = "import sys, raymotion.rundir; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
