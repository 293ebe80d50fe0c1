import numpy as np
import pytest

from raymotion.data import index_image_folders
from raymotion.data.transforms import load_images, normalize
from raymotion.export.onnx import (PARITY_TOLERANCE, create_session, export_onnx, onnx_probabilities,
                                   parity_max_abs_diff, torch_probabilities)
from raymotion.models import create_model, get_model_spec


@pytest.mark.parametrize("name", ["lenet", "mobilenet_v2"])
def test_onnx_agrees_with_torch_on_real_images(name, faces_root, tmp_path):
    spec = get_model_spec(name)
    model = create_model(name, num_classes=3, pretrained=True).eval()
    path = str(tmp_path / f"{name}.onnx")
    export_onnx(model, path, spec.input_size)
    session = create_session(path)
    folders = index_image_folders(faces_root)
    images, kept = load_images(list(folders.val.paths[:24]), spec.input_size)
    assert len(kept) == 24
    x = normalize(images, spec.mean, spec.std)
    assert parity_max_abs_diff(model, session, x) <= PARITY_TOLERANCE
    # The batch axis is dynamic: one image alone gives the same answer as inside a batch.
    alone = onnx_probabilities(session, x[:1])
    assert np.allclose(alone, torch_probabilities(model, x)[:1], atol=PARITY_TOLERANCE)
