"""Strict configuration: a misspelt key fails naming itself and where it came from; enums are checked
when a config is built."""

import pytest

from raymotion.config import PRESETS, ConfigError, ExportConfig, Preset, TrainConfig, TuneSettings
from raymotion.tune.__main__ import base_config, parse_args
from raymotion.tune.spaces import default_spaces_dir, load_search_space


def test_a_misspelt_preset_key_names_the_key_the_preset_and_the_model():
    with pytest.raises(ConfigError, match=r"preset 'mine', overrides of model 'lenet'.*'epocs'"):
        Preset(name="mine", train_overrides={"lenet": {"epocs": 3}})
    # Overrides edited after construction still fail where the preset is applied.
    preset = Preset(name="mine")
    preset.train_overrides["*"] = {"early_stoping_patience": 2}
    with pytest.raises(ConfigError, match=r"preset 'mine', overrides of model 'lenet'.*'early_stoping_patience'"):
        base_config("lenet", parse_args([]), preset)


def test_shipped_presets_apply_to_every_model_they_name():
    for preset in PRESETS.values():
        for model in preset.models:
            base_config(model, parse_args([]), preset)


def test_every_shipped_space_file_loads():
    import os

    for name in sorted(os.listdir(default_spaces_dir())):
        load_search_space(name.removesuffix(".yaml"))


def test_a_misspelt_cli_override_names_the_key_and_the_flag():
    with pytest.raises(ConfigError, match=r"--set: unknown TrainConfig key\(s\) 'clas_weighting'"):
        base_config("lenet", parse_args(["--set", "clas_weighting=balanced"]), PRESETS["quick"])
    # A correct one applies, typed by YAML, after the preset.
    base = base_config("mobilenet_v2", parse_args(["--set", "early_stopping_patience=2", "--set", "lr=3e-4"]), PRESETS["quick"])
    assert base.early_stopping_patience == 2 and base.lr == 3e-4 and base.epochs == 3 and base.head_epochs == 1


def test_a_bad_enum_value_fails_when_the_config_is_built():
    with pytest.raises(ConfigError, match=r"TrainConfig.class_weighting must be one of 'none', 'balanced', not 'balancd'"):
        TrainConfig(class_weighting="balancd")
    with pytest.raises(ConfigError, match=r"TrainConfig.mode must be one of 'max', 'min'"):
        TrainConfig().replace("test", mode="maximum")
    with pytest.raises(ConfigError, match=r"TuneSettings.mode must be one of 'max', 'min', not 'maximise'"):
        TuneSettings(mode="maximise")
    with pytest.raises(ConfigError, match=r"ExportConfig.ensemble_rule must be one of 'linear', 'log-linear', not 'mean'"):
        ExportConfig(ensemble_rule="mean")
    assert TrainConfig(class_weighting="balanced", mode="min").mode == "min"


def test_augmentation_fields_go_by_their_own_names_and_travel_as_one_nested_record():
    from raymotion.config import Augmentation

    cfg = TrainConfig().replace("test", rotation_deg=3.0, lr=0.01)
    assert cfg.augmentation.rotation_deg == 3.0 and cfg.lr == 0.01
    assert cfg.augmentation.hflip_p == Augmentation().hflip_p  # the other augmentations keep their values
    # As configs reach Ray workers: a plain dict, rebuilt into the same record.
    assert TrainConfig(**cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"--set: unknown TrainConfig key\(s\) 'rotation'"):
        TrainConfig().replace("--set", rotation=3.0)
    # "source" names where the changes came from; as a change it is an unknown key like any other.
    with pytest.raises(ConfigError, match=r"--set: unknown TrainConfig key\(s\) 'source'"):
        TrainConfig().replace("--set", source="distillation")
    with pytest.raises(ConfigError, match=r"TrainConfig.augmentation: unknown Augmentation key\(s\) 'rotaton_deg'"):
        TrainConfig(augmentation={"rotaton_deg": 3.0})


def test_the_train_command_takes_set_pairs_and_bool_flags_take_no_forms():
    import argparse

    from raymotion.config import ExportConfig
    from raymotion.train.__main__ import parse_args as train_args

    _, cfg = train_args(["--model", "mobilenet_v2", "--set", "epochs=4", "--set", "pretrained=false",
                         "--set", "cutmix_p=0.5"])
    assert (cfg.model, cfg.epochs, cfg.pretrained, cfg.augmentation.cutmix_p) == ("mobilenet_v2", 4, False, 0.5)
    with pytest.raises(ConfigError, match="'epoch'"):
        train_args(["--set", "epoch=4"])
    parser = argparse.ArgumentParser()
    ExportConfig.add_arguments(parser)
    assert ExportConfig.from_arguments(parser.parse_args([])) == ExportConfig()
    off = ExportConfig.from_arguments(parser.parse_args(["--no-int8", "--no-flip-tta"]))
    assert (off.int8, off.flip_tta) == (False, False)
    assert parse_args(["--serve"]).serve and not parse_args([]).serve


def test_what_a_preset_or_the_cli_sets_is_pinned_and_tune_does_not_search_it():
    # The full preset's student sets lr 1e-4: the MobileNetV2 space's start point (5e-4) replaced it, silently.
    student = base_config("mobilenet_v2", parse_args(["--preset", "full"]), PRESETS["full"], student=True)
    assert student.lr == 1e-4 and {"lr", "epochs", "input_size", "distill_alpha"} <= set(student.pinned)
    space = load_search_space("mobilenet_v2", pinned=student.pinned)
    assert "lr" not in space.param_space and "lr" not in space.start[0] and "weight_decay" in space.param_space
    cli = base_config("lenet", parse_args(["--set", "rotation_deg=3", "--epochs", "2"]), PRESETS["quick"])
    assert {"rotation_deg", "epochs"} <= set(cli.pinned) and "lr" not in cli.pinned
    assert "rotation_deg" not in load_search_space("lenet", pinned=cli.pinned).param_space
    with pytest.raises(ConfigError, match="TrainConfig.pinned"):
        TrainConfig(pinned=("learning_rate",))
