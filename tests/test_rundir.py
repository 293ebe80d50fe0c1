"""The run-directory contract (raymotion.rundir): one format version, and records that round-trip."""

import ast
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


# Where run directories are read and written: everything but raymotion/rundir.py must go through it.
SCANNED = ("raymotion", "serve", "scripts")
# json.load calls outside rundir that read no run directory's file, each with the reason.
NOT_RUN_FILES = {
    ("raymotion/data/parquet.py", "ParquetCache.open"): "a Parquet cache's own meta, not a run directory's",
    ("raymotion/tune/experiment.py", "snapshot_trial_count"): "Ray Tune's experiment snapshot, in Tune's format",
}
# Names of the run directory's files and folders distinctive enough to flag anywhere in a string.
RUN_FILE_NAMES = {rundir.MANIFEST, rundir.CHECKPOINTS_DIR, rundir.CHECKPOINT_META, rundir.CHECKPOINT_MODEL,
                  rundir.COMMAND, rundir.LOGS_DIR, rundir.TUNE_LOG, *rundir.PREDICTIONS.split(os.sep)}
# Every folder name of the layout, flagged as a literal argument of os.path.join (elsewhere "models" or
# "trials" are ordinary keys).
RUN_DIR_NAMES = RUN_FILE_NAMES | {rundir.MODELS_DIR, rundir.REPORT_DIR, rundir.TUNE_DIR, rundir.TRIALS_DIR,
                                  rundir.DISTILL_DIR, rundir.STUDENT_DIR, rundir.CHECKPOINT_TRANSFORMERS}


def _python_files(repo: str):
    for top in SCANNED:
        for folder, _, files in os.walk(os.path.join(repo, top)):
            for name in sorted(files):
                path = os.path.relpath(os.path.join(folder, name), repo)
                if name.endswith(".py") and path != os.path.join("raymotion", "rundir.py"):
                    yield path


def _functions(tree):
    """node -> the qualified name of the function or class it sits in ("" at module level)."""
    owner = {}

    def visit(node, name):
        for child in ast.iter_child_nodes(node):
            inner = name
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = f"{name}.{child.name}" if name else child.name
            owner[child] = inner
            visit(child, inner)

    visit(tree, "")
    return owner


def _docstrings(tree) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _is_json_file_read(node) -> bool:
    """json.load(f), load(f) from json, or json.loads(<file>.read() / .read_text())."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    module = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
    if name == "load" and module in ("json", None if isinstance(func, ast.Name) else "json"):
        return True
    if name == "loads" and module == "json" and node.args and isinstance(node.args[0], ast.Call):
        inner = node.args[0].func
        return isinstance(inner, ast.Attribute) and inner.attr in ("read", "read_text")
    return False


def _path_parts(text: str) -> set[str]:
    return set(text.replace("\\", "/").split("/"))


def run_file_leaks(repo: str) -> list[str]:
    """Every json.load of a file (NOT_RUN_FILES aside) and every literal run-directory name in code (not in
    docstrings, nor in prose: a string with spaces is a message that may name a file for its reader)."""
    leaks = []
    for path in _python_files(repo):
        with open(os.path.join(repo, path)) as f:
            tree = ast.parse(f.read(), path)
        owner, docstrings = _functions(tree), _docstrings(tree)
        json_names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                      and n.module == "json" for a in n.names if a.name == "load"}
        for node in ast.walk(tree):
            where = f"{path}:{getattr(node, 'lineno', '?')}"
            if _is_json_file_read(node) and (not isinstance(node.func, ast.Name) or node.func.id in json_names):
                if (path, owner.get(node, "")) not in NOT_RUN_FILES:
                    leaks.append(f"{where}: json.load in {owner.get(node) or 'the module'}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value
                if not any(c.isspace() for c in text) and _path_parts(text) & RUN_FILE_NAMES:
                    leaks.append(f"{where}: literal {text!r}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join"
                    and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "path"):
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value in RUN_DIR_NAMES:
                        leaks.append(f"{where}: os.path.join(..., {arg.value!r})")
    return leaks


def test_run_files_are_read_and_named_only_by_rundir():
    """No json.load of a run file and no literal run-directory name (manifest.json, predictions/val.npz,
    meta.json, checkpoints/, logs/, ...) outside raymotion/rundir.py: a field or a name then has one
    definition, and a reader cannot drift from the writer."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert run_file_leaks(repo) == []


def test_the_scan_finds_each_kind_of_leak(tmp_path):
    """The scanner itself, on a tree with one leak of each kind (and what it must leave alone)."""
    (tmp_path / "raymotion").mkdir()
    (tmp_path / "raymotion" / "leaky.py").write_text(
        '"""Reads manifest.json and predictions/val.npz (a docstring may name them)."""\n'
        "import json\n"
        "import os\n"
        "from json import load\n"
        "def read(run_dir):\n"
        "    with open(os.path.join(run_dir, 'manifest.json')) as f:\n"
        "        return json.load(f)\n"
        "def meta(d):\n"
        "    return load(open(f'{d}/checkpoints/x/meta.json'))\n"
        "def trials(run_dir):\n"
        "    return os.path.join(run_dir, 'trials')\n"
        "def fine(d):\n"
        "    print('see the run directory\\'s manifest.json')\n"
        "    return {'models': 1, 'trials': 2}\n")
    leaks = run_file_leaks(str(tmp_path))
    assert sorted(leak.split(": ", 1)[1] for leak in leaks) == sorted([
        "literal 'manifest.json'", "os.path.join(..., 'manifest.json')", "json.load in read", "json.load in meta",
        "literal '/checkpoints/x/meta.json'", "os.path.join(..., 'trials')"])
    assert all(leak.startswith(os.path.join("raymotion", "leaky.py") + ":") for leak in leaks)


def test_a_checkpoint_meta_types_its_train_config_and_runtime():
    from raymotion.config import ConfigError, TrainConfig

    runtime = {"device": "cpu", "torch": "2.x", "autocast": "off", "grad_scaler": False, "channels_last": True,
               "torch_compile": False, "prefetch_batches": 1, "pin_memory": False, "workers": 1, "torch_threads": 2}
    meta = rundir.CheckpointMeta(model="lenet", classes=["a", "b"], input_size=32, mean=[0.5] * 3, std=[0.5] * 3,
                                 epoch=1, train_config={"lr": 0.01, "augmentation": {"rotation_deg": 3.0}},
                                 metrics={}, runtime=runtime)
    assert isinstance(meta.train_config, TrainConfig) and meta.train_config.augmentation.rotation_deg == 3.0
    assert isinstance(meta.runtime, rundir.TrainRuntime) and meta.runtime.device == "cpu" and meta.runtime.gpu is None
    # Through JSON and back, as meta.json is written and read.
    assert rundir.CheckpointMeta.model_validate(json.loads(json.dumps(meta.model_dump()))) == meta
    with pytest.raises(ValidationError, match="device"):
        rundir.CheckpointMeta.model_validate({**meta.model_dump(), "runtime": {k: v for k, v in runtime.items() if k != "device"}})
    with pytest.raises((ValidationError, ConfigError), match="epocs"):
        rundir.CheckpointMeta.model_validate({**meta.model_dump(), "train_config": {"epocs": 3}})
