import pytest
import torch

from raymotion.models import create_model, get_model_spec, list_models
from raymotion.models.mobilenet import mobilenet_v2_imagenet_weights
from raymotion.models.weights import load_state_dict


@pytest.mark.parametrize("name", ["lenet", "mobilenet_v2"])
def test_created_by_name_with_a_three_class_head(name):
    assert name in list_models()
    model = create_model(name, num_classes=3, pretrained=False).eval()
    size = get_model_spec(name).input_size
    with torch.no_grad():
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 3)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="lenet"):
        create_model("no_such_model")


def test_mobilenet_v2_loads_packaged_imagenet_weights_strictly():
    state = load_state_dict(mobilenet_v2_imagenet_weights())
    model = create_model("mobilenet_v2", num_classes=3, pretrained=True)
    own = model.state_dict()
    # Every backbone tensor comes from the file; only the new 3-class head differs.
    backbone = [k for k in state if not k.startswith("classifier.1.")]
    assert len(backbone) == len(own) - 2
    for key in backbone:
        assert torch.equal(own[key], state[key]), key
    assert own["classifier.1.weight"].shape == (3, 1280)


def test_pretrained_path_must_fit_exactly(tmp_path):
    path = tmp_path / "bad.pth"
    state = load_state_dict(mobilenet_v2_imagenet_weights())
    state.pop("features.0.0.weight")
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing"):
        create_model("mobilenet_v2", pretrained=str(path))
