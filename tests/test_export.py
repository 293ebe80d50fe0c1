import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import raymotion
from raymotion.data import index_image_folders
from raymotion.data.transforms import load_images, normalize
from raymotion.export.onnx import (PARITY_TOLERANCE, ParityError, export_onnx, export_optimized, optimize_onnx,
                                   parity_max_abs_diff, torch_probabilities)
from raymotion.export.sessions import create_session, onnx_probabilities, session_providers
from raymotion.models import create_model, get_model_spec


@pytest.mark.parametrize("name", ["lenet", "mobilenet_v2"])
def test_onnx_agrees_with_torch_on_real_images(name, faces_root, exported):
    spec = get_model_spec(name)
    model, path, _ = exported(name)
    session = create_session(path)
    folders = index_image_folders(faces_root)
    images, kept = load_images(list(folders.val.paths[:24]), spec.input_size)
    assert len(kept) == 24
    x = normalize(images, spec.mean, spec.std)
    assert parity_max_abs_diff(model, session, x) <= PARITY_TOLERANCE
    # The batch axis is dynamic: one image alone gives the same answer as inside a batch.
    alone = onnx_probabilities(session, x[:1])
    assert np.allclose(alone, torch_probabilities(model, x)[:1], atol=PARITY_TOLERANCE)
    # No per-node debug records (stack traces with this machine's paths) ship in the file.
    proto = onnx.load(path)
    assert not any(node.metadata_props or node.doc_string for node in proto.graph.node)
    assert os.path.dirname(raymotion.__file__).encode() not in open(path, "rb").read()


def _lenet_and_images(faces_root, n=16):
    spec = get_model_spec("lenet")
    model = create_model("lenet", num_classes=3).eval()
    images, _ = load_images(list(index_image_folders(faces_root).val.paths[:n]), spec.input_size)
    return model, spec, normalize(images, spec.mean, spec.std)


@pytest.mark.parametrize("level", ["basic", "extended"])
def test_offline_optimised_file_agrees_with_torch(level, faces_root, tmp_path):
    model, spec, x = _lenet_and_images(faces_root)
    path = str(tmp_path / "lenet.onnx")
    info = export_optimized(model, path, spec.input_size, x, level=level)
    assert info["optimization"] == level and info["parity_max_abs_diff"] <= PARITY_TOLERANCE
    assert os.listdir(tmp_path) == ["lenet.onnx"]  # the raw export does not stay behind
    # An impossible tolerance turns the same check into a ParityError; "all" (hardware specific) is refused.
    with pytest.raises(ParityError):
        export_optimized(model, str(tmp_path / "strict.onnx"), spec.input_size, x, tolerance=-1.0)
    with pytest.raises(ValueError):
        optimize_onnx(path, str(tmp_path / "all.onnx"), "all")


def test_session_options_compute_the_same_and_gpu_devices_fall_back(faces_root, tmp_path):
    model, spec, x = _lenet_and_images(faces_root)
    path = str(tmp_path / "lenet.onnx")
    export_onnx(model, path, spec.input_size)
    reference = onnx_probabilities(create_session(path), x)
    for options in ({"intra_op_threads": 1}, {"allow_spinning": False, "enable_mem_arena": False},
                    {"graph_optimization": "basic", "execution_mode": "parallel", "inter_op_threads": 2}):
        assert np.allclose(onnx_probabilities(create_session(path, **options), x), reference, atol=1e-6), options
    for device in ("cuda", "tensorrt"):
        providers = session_providers(device)
        assert providers[-1] == "CPUExecutionProvider"
        assert set(providers) <= set(ort.get_available_providers())
        # No GPU here: the session still starts (the CPU provider answers).
        assert np.allclose(onnx_probabilities(create_session(path, device=device), x), reference, atol=1e-6)
    with pytest.raises(ValueError):
        session_providers("tpu")


def test_a_checkpoint_exported_earlier_in_the_run_is_not_exported_again(faces_root, tmp_path):
    """A teacher is exported for its soft labels, then comes to the final export: the same weights are not
    exported a second time; other weights are."""
    import torch

    from raymotion.export.bundle import export_member_once
    from raymotion.train.checkpoint import save_checkpoint

    spec = get_model_spec("lenet")
    images, _ = load_images(list(index_image_folders(faces_root).val.paths[:8]), 32)
    checkpoint, run_dir = str(tmp_path / "checkpoints" / "lenet"), str(tmp_path / "run")

    def save(seed: int) -> None:
        torch.manual_seed(seed)
        save_checkpoint(checkpoint, create_model("lenet", num_classes=3).eval(),
                        {"model": "lenet", "classes": ["angry", "happy", "sad"], "input_size": 32,
                         "mean": list(spec.mean), "std": list(spec.std), "epoch": 1, "metrics": {}, "train_config": {}})

    save(0)
    exported: dict = {}
    first, first_probs = export_member_once(checkpoint, run_dir, images, False, exported)
    path = os.path.join(run_dir, first["file"])
    written = os.stat(path).st_mtime_ns
    again, again_probs = export_member_once(checkpoint, run_dir, images, False, exported)
    assert os.stat(path).st_mtime_ns == written and again == first
    np.testing.assert_array_equal(again_probs, first_probs)
    save(1)  # new weights under the same name: exported anew
    other, _ = export_member_once(checkpoint, run_dir, images, False, exported)
    assert os.stat(path).st_mtime_ns != written and other["sha256"] != first["sha256"]


def test_the_bundle_returns_the_typed_manifest_it_wrote(faces_root, tmp_path):
    """build_run_bundle hands its caller the Manifest record (what the tune command's summary reads by
    field), the same one a reader of the run directory gets."""
    import torch

    from raymotion import rundir
    from raymotion.config import ExportConfig
    from raymotion.export.bundle import build_run_bundle, results_table
    from raymotion.train.checkpoint import save_checkpoint

    spec = get_model_spec("lenet")
    checkpoint, run_dir = str(tmp_path / "lenet"), str(tmp_path / "run")
    torch.manual_seed(0)
    save_checkpoint(checkpoint, create_model("lenet", num_classes=3).eval(),
                    {"model": "lenet", "classes": ["angry", "happy", "sad"], "input_size": 32, "mean": list(spec.mean),
                     "std": list(spec.std), "epoch": 1, "metrics": {}, "train_config": {"lr": 0.02}})
    manifest = build_run_bundle(run_dir, {"lenet": checkpoint}, index_image_folders(faces_root),
                                export=ExportConfig(int8=False, flip_tta=False))
    assert isinstance(manifest, rundir.Manifest)
    assert rundir.manifest_json(manifest) == rundir.manifest_json(rundir.read_manifest(run_dir))
    assert manifest.ensemble.served == ["lenet"] and manifest.models["lenet"].train_config.lr == 0.02
    assert "lr=2.00e-02" in results_table(manifest)
    assert len(rundir.read_val_predictions(run_dir).labels) == sum(manifest.data.val.values())
