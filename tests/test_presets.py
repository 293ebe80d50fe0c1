"""The shipped presets are YAML files (raymotion/presets/<name>.yaml) validated into Preset: each loads, and a
file with a misspelt key, model name or a value of the wrong type fails naming it and the file. No Ray."""

import os
import re
import sys

import pytest

from raymotion.config import (PRESETS, PRESETS_DIR, ConfigError, Preset, load_preset, load_preset_file,
                              preset_names)


def write(tmp_path, text: str, name: str = "mine") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def test_every_shipped_preset_file_loads_into_presets():
    names = preset_names()
    assert {"quick", "full", "smoke"} <= set(names)
    assert sorted(PRESETS) == names
    for name in names:
        preset = load_preset(name)
        assert isinstance(preset, Preset) and preset.name == name
        assert preset == PRESETS[name]
        assert preset.train_overrides, name  # every shipped preset overrides something


def test_the_preset_files_are_package_data():
    if sys.version_info < (3, 11):
        pytest.skip("tomllib")
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    assert "presets/*.yaml" in package_data["raymotion"]
    assert os.path.dirname(PRESETS_DIR) == os.path.dirname(os.path.abspath(sys.modules["raymotion.config"].__file__))


def test_a_file_sets_what_it_says_and_leaves_the_rest_at_the_defaults(tmp_path):
    preset = load_preset_file(write(tmp_path, """
models: [lenet]
tune: {num_samples: 3}
train_overrides:
  lenet: {epochs: 2, lr: 1.0e-4, rotation_deg: 5}
"""))
    assert (preset.name, preset.models, preset.tune.num_samples) == ("mine", ("lenet",), 3)
    assert preset.tune.grace_period == Preset(name="x").tune.grace_period
    assert preset.train_overrides == {"lenet": {"epochs": 2, "lr": 1e-4, "rotation_deg": 5}}
    assert load_preset_file(write(tmp_path, "# nothing but a comment\n", "empty")) == Preset(name="empty")


# A bad file per line: its id, its text (one line of YAML) and what the error must name after
# "preset file <path>: " (a regular expression), separated by " | ".
BAD_FILES = r"""
misspelt-key-preset              | modles: [lenet]                            | unknown Preset key\(s\) 'modles'
misspelt-key-tune                | tune: {num_sampels: 2}                     | unknown TuneSettings key\(s\) 'num_sampels'
misspelt-key-train_overrides     | train_overrides: {lenet: {epocs: 3}}       | overrides of model 'lenet'.*'epocs'
misspelt-key-student_overrides   | student_overrides: {lr_head: 0.1}          | student_overrides.*'lr_head'
misspelt-model-models            | models: [lenet, mobilenet_v3]              | models: unknown model\(s\) 'mobilenet_v3'
misspelt-model-train_overrides   | train_overrides: {resnet43: {epochs: 3}}   | train_overrides: unknown model\(s\) 'resnet43'
misspelt-model-samples           | samples: {vit: 1, hfvit: 2}                | samples: unknown model\(s\) 'hfvit'
misspelt-model-students          | students: [lenet5]                         | students: unknown model\(s\) 'lenet5'
misspelt-model-student           | student: mobilenet                         | student: unknown model\(s\) 'mobilenet'
misspelt-model-online_teachers   | {students: [vit], online_teachers: [vitt]} | online_teachers: unknown model\(s\) 'vitt'
misspelt-model-student_overrides | student_overrides: {model: lenot}          | model: unknown model\(s\) 'lenot'
bad-value-tune-int               | tune: {num_samples: many}                  | tune\.num_samples='many'
bad-value-tune-choice            | tune: {scheduler: hyperband}               | tune\.scheduler must be one of 'asha', 'fifo', not 'hyperband'
bad-value-samples-int            | samples: {lenet: two}                      | samples\.lenet='two'
bad-value-samples-range          | samples: {lenet: 0}                        | samples\.lenet=0
bad-value-models-list            | models: lenet                              | models='lenet'
bad-value-bool                   | student_from_member: sometimes             | student_from_member='sometimes'
bad-value-override-int           | train_overrides: {'*': {epochs: abc}}      | overrides of model '\*'.*epochs='abc'
bad-value-override-range         | train_overrides: {lenet: {hflip_p: 2}}     | overrides of model 'lenet'.*hflip_p=2
bad-value-override-mapping       | train_overrides: {lenet: [epochs, 3]}      | train_overrides\.lenet=
no-preset-name                   | name: other                                | 'name' is not a key of a preset file; the preset's name is the file's \('mine'\)
no-preset-not-a-mapping          | [lenet]                                    | must be a mapping of Preset keys, not list
no-preset-not-yaml               | models: [lenet                             | not valid YAML
"""


def bad_files():
    for row in BAD_FILES.strip().splitlines():
        id, text, names = (part.strip() for part in row.split(" | ", 2))
        yield pytest.param(text, names, id=id)


@pytest.mark.parametrize("text, names", bad_files())
def test_a_bad_preset_file_fails_naming_the_file_and_the_key_model_or_value(tmp_path, text, names):
    """A misspelt key (of Preset, TuneSettings or TrainConfig), a model name the registry does not build
    in any section, a value of the wrong type or range, or a file that is no mapping of Preset keys."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"preset file {re.escape(path)}: .*{names}"):
        load_preset_file(path)


def test_an_unknown_preset_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown preset 'quik'; known presets: .*quick"):
        load_preset("quik")
