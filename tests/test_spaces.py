import pytest
from ray.tune.search.sample import Categorical, Float

from raymotion.models import get_model_spec
from raymotion.tune.spaces import load_search_space


@pytest.mark.parametrize("model", ["lenet", "resnet34", "mobilenet_v2", "efficientnet_lite0", "efficientnet_lite2", "vit", "hf_vit"])
def test_shipped_spaces_cover_the_required_hyperparameters(model):
    space = load_search_space(model)
    assert isinstance(space.param_space["lr"], Float) and isinstance(space.param_space["weight_decay"], Float)
    assert isinstance(space.param_space["batch_size"], Categorical)
    assert {"rotation_deg", "contrast"} & set(space.param_space)
    assert space.start and set(space.start[0]) <= set(space.param_space)
    # Pretrained models search both transfer phases.
    if get_model_spec(model).pretrained_weights:
        assert {"head_epochs", "head_lr"} <= set(space.param_space)


@pytest.mark.parametrize("text, key, message", [
    ("space:\n  learning_rate: {uniform: [0, 1]}\n", "learning_rate", "unknown TrainConfig key"),
    ("space:\n  lr: {gaussian: [0, 1]}\n", "lr", "is not one of {kind: args}"),
    ("space:\n  lr: {loguniform: [0.1]}\n", "lr", "bad loguniform arguments"),
    ("space:\n  lr: {uniform: [0, 1]}\nstart:\n  weight_decy: 0.1\n", "weight_decy", "section 'start'"),
    ("space:\n  lr: {uniform: [0, 1]}\nstart:\n  weight_decay: 0.1\n", "weight_decay", "not in its space"),
    ("space:\n  lr: {uniform: [0, 1]}\nwhen_pretrained:\n  lr: 0.1\n", "lr", "in both"),
    ("spaces:\n  lr: 0.1\n", "spaces", "unknown section"),
    ("space: [lr]\n", "space", "must be a mapping"),
    ("space:\n  lr: {uniform: [0, 1]\n", "", "not valid YAML"),
])
def test_a_bad_space_file_fails_on_load_naming_the_file_and_the_key(tmp_path, text, key, message):
    (tmp_path / "lenet.yaml").write_text(text)
    with pytest.raises(ValueError) as err:
        load_search_space("lenet", str(tmp_path))
    assert str(tmp_path / "lenet.yaml") in str(err.value) and key in str(err.value) and message in str(err.value)


def test_the_head_phase_is_searched_only_for_a_model_that_starts_from_its_weights(tmp_path):
    (tmp_path / "m.yaml").write_text("space:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
                                     "when_pretrained:\n  head_epochs: {choice: [1, 2]}\n"
                                     "start:\n  lr: 1.0e-3\n  head_epochs: 1\n")
    with_weights = load_search_space("m", str(tmp_path), pretrained=True)
    from_scratch = load_search_space("m", str(tmp_path), pretrained=False)
    assert set(with_weights.param_space) == {"lr", "head_epochs"} and with_weights.start == [{"lr": 1e-3, "head_epochs": 1}]
    assert set(from_scratch.param_space) == {"lr"} and from_scratch.start == [{"lr": 1e-3}]


def test_pinned_keys_leave_the_space_and_its_start_point(tmp_path):
    (tmp_path / "m.yaml").write_text("space:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n  batch_size: {choice: [32, 64]}\n"
                                     "start:\n  lr: 1.0e-3\n  batch_size: 32\n")
    space = load_search_space("m", str(tmp_path), pinned=("lr", "epochs"))
    assert set(space.param_space) == {"batch_size"} and space.start == [{"batch_size": 32}]
    # Every key pinned: an empty space, which Tune runs as the base config alone.
    assert load_search_space("m", str(tmp_path), pinned=("lr", "batch_size")).param_space == {}
