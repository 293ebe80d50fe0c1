"""Strict configuration: a misspelt key fails naming itself and where it came from; enums are checked
when a config is built."""

import dataclasses
import os
import re
import typing
from types import SimpleNamespace

import pytest

from raymotion.config import (EPOCH_METRICS, MODEL_NAMES, PRESETS, VAL_METRICS, Augmentation, ConfigError,
                              ExportConfig, Preset, TrainConfig, TuneSettings, metric_names, parse_set_pairs)
from raymotion.tune.__main__ import base_config, checked_configs, parse_args
from raymotion.tune.spaces import default_spaces_dir, load_search_space


def test_a_misspelt_preset_key_names_the_key_the_preset_and_the_model():
    with pytest.raises(ConfigError, match=r"preset 'mine', overrides of model 'lenet'.*'epocs'"):
        Preset(name="mine", train_overrides={"lenet": {"epocs": 3}})
    # Overrides edited after construction still fail where the preset is applied.
    preset = Preset(name="mine")
    preset.train_overrides["*"] = {"early_stoping_patience": 2}
    with pytest.raises(ConfigError, match=r"preset 'mine', overrides of model 'lenet'.*'early_stoping_patience'"):
        base_config("lenet", parse_args([]), preset)


def _augmentation_or_own(cfg: TrainConfig, key: str):
    return getattr(cfg.augmentation, key) if key in {f.name for f in dataclasses.fields(Augmentation)} \
        else getattr(cfg, key)


def test_shipped_presets_reach_every_model_they_name_with_their_overrides_pinned():
    """Each shipped preset's overrides arrive in each of its models' configs (the "*" ones and the model's
    own, which win), pinned so that the search space leaves them; and every model it names anywhere is one
    the registry builds."""
    from raymotion.models import list_models

    for preset in PRESETS.values():
        named = {*preset.models, *preset.samples, *preset.students, *preset.online_teachers,
                 *(m for m in preset.train_overrides if m != "*"), *([preset.student] if preset.student else [])}
        assert named <= set(list_models()), (preset.name, named - set(list_models()))
        for model in preset.models:
            cfg = base_config(model, parse_args(["--preset", preset.name]), preset)
            expected = {**preset.train_overrides.get("*", {}), **preset.train_overrides.get(model, {})}
            assert expected, (preset.name, model)  # every shipped preset overrides something per model
            for key, value in expected.items():
                assert _augmentation_or_own(cfg, key) == value, (preset.name, model, key)
            assert set(expected) <= set(cfg.pinned)


def test_every_registered_model_has_one_space_file_and_its_start_point_lies_in_its_space():
    """tune_spaces/ holds one file per registered model (a file named for no model is never read, a model
    without one cannot be tuned), and each start point (Optuna's first trial) is a point of the space."""
    from ray.tune.search.sample import Categorical, Float, Integer

    from raymotion.models import list_models

    names = sorted(name.removesuffix(".yaml") for name in os.listdir(default_spaces_dir()))
    assert names == list_models()
    for model in names:
        space = load_search_space(model)
        for key, value in space.start[0].items():
            domain = space.param_space[key]
            if isinstance(domain, Categorical):
                assert value in domain.categories, (model, key, value)
            elif isinstance(domain, Integer):  # randint: upper bound excluded
                assert domain.lower <= value < domain.upper, (model, key, value)
            elif isinstance(domain, Float):
                assert domain.lower <= value <= domain.upper, (model, key, value)
            else:
                assert value == domain, (model, key, value)


def test_the_torch_free_model_names_are_the_registry_s():
    from raymotion.models import list_models

    assert sorted(MODEL_NAMES) == list_models()


@pytest.mark.parametrize("kwargs, where", [
    ({"models": ("lenet", "mobilnet_v2")}, r"preset 'mine', models: unknown model\(s\) 'mobilnet_v2'"),
    ({"train_overrides": {"mobilnet_v2": {"epochs": 3}}}, r"preset 'mine', train_overrides: unknown model\(s\) 'mobilnet_v2'"),
    ({"samples": {"lenett": 5}}, r"preset 'mine', samples: unknown model\(s\) 'lenett'"),
    ({"students": ("nosuch",)}, r"preset 'mine', students: unknown model\(s\) 'nosuch'"),
    ({"student": "mobilenet"}, r"preset 'mine', student: unknown model\(s\) 'mobilenet'"),
    ({"students": ("lenet",), "online_teachers": ("lenet", "vitt")}, r"preset 'mine', online_teachers: unknown model\(s\) 'vitt'"),
])
def test_a_misspelt_model_name_anywhere_in_a_preset_fails_at_definition_naming_it(kwargs, where):
    with pytest.raises(ConfigError, match=where):
        Preset(name="mine", **kwargs)
    # Edited after construction: the tune command checks the preset again before anything trains.
    preset = Preset(name="mine")
    for key, value in kwargs.items():
        object.__setattr__(preset, key, value)
    with pytest.raises(ConfigError, match=where):
        checked_configs(parse_args([]), preset, ["lenet"], ONE_SOURCE)


@pytest.mark.parametrize("overrides, where", [
    ({"lenet": {"epochs": 0}}, r"preset 'mine', overrides of model 'lenet': epochs=0: .*greater than or equal to 1"),
    ({"*": {"lr": "fast"}}, r"preset 'mine', overrides of model '\*': lr='fast': .*valid number"),
    ({"lenet": {"hflip_p": 1.5}}, r"preset 'mine', overrides of model 'lenet': hflip_p=1.5: .*less than or equal to 1"),
])
def test_a_bad_value_in_a_preset_fails_at_definition_naming_the_key_the_value_and_the_model(overrides, where):
    with pytest.raises(ConfigError, match=where):
        Preset(name="mine", train_overrides=overrides)


ONE_SOURCE = SimpleNamespace(classes=["angry", "happy", "sad"], names=["faces"])
TWO_SOURCES = SimpleNamespace(classes=["angry", "happy", "sad"], names=["emotions", "fer2013"])


@pytest.mark.parametrize("argv, message", [
    (["--set", "epochs=abc"], r"--set: epochs='abc': Input should be a valid integer"),
    (["--set", "batch_size=-3"], r"--set: batch_size=-3: Input should be greater than or equal to 1"),
    (["--set", "lr=0"], r"--set: lr=0: Input should be greater than 0"),
    (["--set", "jpeg_p=2"], r"--set: jpeg_p=2: Input should be less than or equal to 1"),
    (["--set", "class_weighting=balancd"], r"--set: class_weighting='balancd': Input should be 'none' or 'balanced'"),
    (["--set", "source_shares={emotions: lots}"], r"--set: source_shares=\{'emotions': 'lots'\}: Input should be a valid number"),
    (["--set", "model=nosuch"], r"--set: model: unknown model\(s\) 'nosuch'"),
    (["--set", "metric=val_macro_f"], r"TrainConfig.metric: metric 'val_macro_f' is not one the train loop reports"),
    (["--set", "metric=val_recall_angy"], r"mobilenet_v2: TrainConfig.metric: metric 'val_recall_angy' is not reported by this run's epochs"),
    (["--models", "lenet,mobilnet_v2"], r"--models: unknown model\(s\) 'mobilnet_v2'"),
    (["--student", "mobilenet"], r"--student: unknown model\(s\) 'mobilenet'"),
    (["--epochs", "0"], r"--epochs: TrainConfig.epochs=0: Input should be greater than or equal to 1"),
    (["--num-samples", "0"], r"--num-samples: TuneSettings.num_samples=0: Input should be greater than or equal to 1"),
    (["--workers", "0"], r"TrainConfig.num_workers=0: Input should be greater than or equal to 1"),
])
def test_a_bad_tune_command_fails_before_a_run_directory_or_ray_exists_naming_the_key_and_value(
        argv, message, tmp_path, monkeypatch):
    from raymotion.data.synthetic import make_synthetic_faces
    from raymotion.tune import __main__ as tune_main

    def no_ray(address):
        raise AssertionError("Ray started for a config that fails")

    monkeypatch.setattr(tune_main, "init_ray", no_ray)
    data = make_synthetic_faces(tmp_path / "faces", train_per_class=2, val_per_class=1, size=32)
    out = tmp_path / "run"
    args = parse_args(["--data", data, "--out", str(out), "--preset", "quick", *argv])
    with pytest.raises(ConfigError, match=message):
        tune_main.start_run(args, [], None)
    assert not out.exists()


def test_the_metric_is_checked_against_this_run_s_classes_and_sources():
    args = parse_args(["--set", "metric=val_fer2013_recall_sad"])
    bases, _ = checked_configs(args, PRESETS["quick"], ["lenet"], TWO_SOURCES)
    assert bases["lenet"].metric == "val_fer2013_recall_sad"
    with pytest.raises(ConfigError, match=r"'val_fer2013_recall_sad' is not reported by this run's epochs"):
        checked_configs(args, PRESETS["quick"], ["lenet"], ONE_SOURCE)  # one source: no per-source figures
    with pytest.raises(ConfigError, match=r"TuneSettings.metric: metric 'val_macro_f' is not one"):
        TuneSettings(metric="val_macro_f")
    tune = TuneSettings(metric="val_recall_angy")  # of the form; which classes there are is the run's
    with pytest.raises(ConfigError, match=r"preset 'mine', tune.metric: metric 'val_recall_angy'"):
        checked_configs(parse_args([]), Preset(name="mine", tune=tune), ["lenet"], ONE_SOURCE)


@pytest.mark.parametrize("sources", [["faces"], ["emotions", "fer2013"]])
def test_metric_names_are_what_the_train_loop_reports(sources):
    """The names the config accepts as ``metric`` against the keys of an epoch the loop reports (its own
    evaluate, on a tiny model; the epoch's train figures by name)."""
    import numpy as np
    import torch

    from raymotion.train.loop import AmpSettings, evaluate

    classes = ["angry", "happy", "sad"]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    batch = {"image": torch.randint(0, 255, (6, 4, 4, 3), dtype=torch.uint8),
             "label": torch.tensor([0, 1, 2, 0, 1, 2]), "source": torch.tensor([0, 0, 0, 1, 1, 1]) % len(sources)}
    val = evaluate(model, [batch], torch.device("cpu"), classes, AmpSettings(False, None, False),
                   torch.zeros(3), torch.ones(3), sources=sources)
    reported = {f"val_{k}" for k in val} | set(EPOCH_METRICS)
    assert reported == set(metric_names(classes, sources))
    assert np.isfinite([val[k.removeprefix("val_")] for k in VAL_METRICS]).all()


def test_search_space_values_are_typed_as_train_config_takes_them(tmp_path):
    (tmp_path / "lenet.yaml").write_text("space:\n  batch_size: {choice: [32, big]}\n")
    with pytest.raises(ConfigError, match=r"lenet.yaml, section 'space': batch_size='big': Input should be a valid integer"):
        load_search_space("lenet", str(tmp_path))
    (tmp_path / "lenet.yaml").write_text("space:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\nstart:\n  lr: -1.0\n")
    with pytest.raises(ConfigError, match=r"section 'start': lr=-1.0: Input should be greater than 0"):
        load_search_space("lenet", str(tmp_path))
    (tmp_path / "lenet.yaml").write_text("space:\n  model: {choice: [lenet, lenett]}\n")
    with pytest.raises(ConfigError, match=r"section 'space': model: unknown model\(s\) 'lenett'"):
        load_search_space("lenet", str(tmp_path))


def test_set_values_are_typed_from_the_schema():
    assert parse_set_pairs(["lr=3e-4", "epochs=4", "pretrained=false", "source_shares={a: 1}", "hflip_p=0"]) == {
        "lr": 3e-4, "epochs": 4, "pretrained": False, "source_shares": {"a": 1.0}, "hflip_p": 0.0}
    typed = parse_set_pairs(["lr=3e-4", "hflip_p=0"])
    assert type(typed["lr"]) is float and type(typed["hflip_p"]) is float  # YAML gave a str and an int
    assert parse_set_pairs(["nosuch=1"]) == {"nosuch": 1}  # replace names an unknown key, with the known ones
    with pytest.raises(ConfigError, match=r"--set 'epochs': expected KEY=VALUE"):
        parse_set_pairs(["epochs"])


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


CHOICE_FIELDS = [(cls, f.name) for cls in (TrainConfig, TuneSettings, ExportConfig, Augmentation)
                 for f in dataclasses.fields(cls)
                 if typing.get_origin(typing.get_type_hints(cls)[f.name]) is typing.Literal]


@pytest.mark.parametrize("cls, name", CHOICE_FIELDS, ids=[f"{c.__name__}.{n}" for c, n in CHOICE_FIELDS])
def test_every_choice_a_refusal_offers_is_one_the_config_takes(cls, name):
    with pytest.raises(ConfigError, match=rf"{cls.__name__}.{name} must be one of .*, not 'nosuch'") as refused:
        cls(**{name: "nosuch"})
    offered = re.findall(r"'([^']*)'", str(refused.value).split("must be one of ")[1].split(", not ")[0])
    assert len(offered) >= 2
    for choice in offered:
        assert getattr(cls(**{name: choice}), name) == choice


def test_the_choice_fields_are_all_found():
    assert {f"{c.__name__}.{n}" for c, n in CHOICE_FIELDS} >= {
        "TrainConfig.mode", "TrainConfig.class_weighting", "TuneSettings.search", "TuneSettings.scheduler",
        "ExportConfig.ensemble_rule"}


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


def test_session_options_stop_reasons_and_phases_are_named_choices():
    import typing

    from raymotion.export.sessions import session_options, session_providers
    from raymotion.train.loop import Phase, transfer_phases
    from raymotion.tune.experiment import StopReason, stop_reason

    with pytest.raises(ValueError, match=r"graph_optimization 'full': use disable, basic, extended, all"):
        session_options(graph_optimization="full")
    with pytest.raises(ValueError, match=r"execution_mode 'parallell': use sequential, parallel"):
        session_options(execution_mode="parallell")
    with pytest.raises(ValueError, match=r"device 'gpu': use cpu, cuda, tensorrt"):
        session_providers("gpu")
    base = TrainConfig(epochs=4, early_stopping_patience=2)
    ok, failed = SimpleNamespace(error=None), SimpleNamespace(error=RuntimeError("x"))
    reasons = [stop_reason(failed, [], base), stop_reason(ok, [], base), stop_reason(ok, [{"epoch": 4}], base),
               stop_reason(ok, [{"epoch": 3, "best_epoch": 1}], base), stop_reason(ok, [{"epoch": 2, "best_epoch": 2}], base)]
    assert reasons == ["error", "no epoch", "all epochs", "early stopping", "asha"]
    assert set(reasons) == set(typing.get_args(StopReason))
    phases = transfer_phases(TrainConfig(model="mobilenet_v2", epochs=3, head_epochs=1), pretrained=True)
    assert [p[0] for p in phases] == list(typing.get_args(Phase))
