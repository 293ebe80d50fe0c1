import pytest
from ray.tune.search.sample import Categorical, Float

from raymotion.tune.spaces import load_search_space


@pytest.mark.parametrize("model", ["lenet", "mobilenet_v2"])
def test_shipped_spaces_cover_the_required_hyperparameters(model):
    space = load_search_space(model)
    assert isinstance(space.param_space["lr"], Float) and isinstance(space.param_space["weight_decay"], Float)
    assert isinstance(space.param_space["batch_size"], Categorical)
    assert {"rotation_deg", "contrast"} & set(space.param_space)
    assert space.start and set(space.start[0]) <= set(space.param_space)


def test_unknown_keys_and_domains_are_rejected(tmp_path):
    (tmp_path / "lenet.yaml").write_text("space:\n  learning_rate: {uniform: [0, 1]}\n")
    with pytest.raises(ValueError, match="not a TrainConfig field"):
        load_search_space("lenet", str(tmp_path))
    (tmp_path / "lenet.yaml").write_text("space:\n  lr: {gaussian: [0, 1]}\n")
    with pytest.raises(ValueError, match="unknown domain"):
        load_search_space("lenet", str(tmp_path))
