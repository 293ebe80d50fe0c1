import pytest
from ray.tune.search.sample import Categorical, Float

from raymotion.models import get_model_spec
from raymotion.tune.spaces import load_search_space


@pytest.mark.parametrize("model", ["lenet", "resnet34", "mobilenet_v2", "efficientnet_lite0", "vit", "hf_vit"])
def test_shipped_spaces_cover_the_required_hyperparameters(model):
    space = load_search_space(model)
    assert isinstance(space.param_space["lr"], Float) and isinstance(space.param_space["weight_decay"], Float)
    assert isinstance(space.param_space["batch_size"], Categorical)
    assert {"rotation_deg", "contrast"} & set(space.param_space)
    assert space.start and set(space.start[0]) <= set(space.param_space)
    # Pretrained models search both transfer phases.
    if get_model_spec(model).pretrained_weights:
        assert {"head_epochs", "head_lr"} <= set(space.param_space)


def test_unknown_keys_and_domains_are_rejected(tmp_path):
    (tmp_path / "lenet.yaml").write_text("space:\n  learning_rate: {uniform: [0, 1]}\n")
    with pytest.raises(ValueError, match="unknown TrainConfig key.*learning_rate"):
        load_search_space("lenet", str(tmp_path))
    (tmp_path / "lenet.yaml").write_text("space:\n  lr: {gaussian: [0, 1]}\n")
    with pytest.raises(ValueError, match="unknown domain"):
        load_search_space("lenet", str(tmp_path))
