"""``python -m bench distill``: the session run's distilled LeNet trained again against its stored
soft labels and against its teacher online, each variant the member's own config with only the
distillation and epochs changed (no accuracy is asserted: one epoch on generated faces says nothing)."""

import json
import os

import pytest

from bench.__main__ import main
from bench.distill import DistillBenchConfig, variant_config
from raymotion.config import TrainConfig


def test_bench_distill_trains_the_member_against_stored_and_online_teachers(run, faces_root, tmp_path, capsys):
    run_dir, manifest = run
    out = tmp_path / "distill.json"
    main(["distill", run_dir, "--model", "lenet", "--epochs", "1", "--variants", "stored,online",
          "--data", faces_root, "--json", str(out)])
    result = json.loads(out.read_text())
    member = manifest["models"]["lenet"]["train_config"]
    teacher = os.path.join(run_dir, "checkpoints", "mobilenet_v2")
    assert result["teachers"] == [teacher]
    stored, online = result["train_config"]["stored"], result["train_config"]["online"]
    assert (stored["soft_labels"], stored["teacher_checkpoints"]) == (member["soft_labels"], [])
    assert (online["soft_labels"], online["teacher_checkpoints"]) == ("", [teacher])
    for config in (stored, online):  # the member's own config otherwise
        assert config["epochs"] == 1
        assert {k: v for k, v in config.items() if k not in ("epochs", "soft_labels", "teacher_checkpoints")} == \
            {k: v for k, v in member.items() if k not in ("epochs", "soft_labels", "teacher_checkpoints")}
    assert [row["variant"] for row in result["rows"]] == ["stored", "online"]
    for row in result["rows"]:
        assert row["best_epoch"] == row["last_epoch"] == 1 and row["minutes"] > 0
        assert 0 <= row["val_accuracy"] <= 1 and 0 <= row["val_macro_f1"] <= 1
    assert "online - stored" in capsys.readouterr().out


def test_bench_distill_refuses_what_the_run_cannot_compare():
    with pytest.raises(ValueError, match="choose from"):
        DistillBenchConfig(run_dir="r", variants=("teachers",))
    with pytest.raises(ValueError, match="not trained on stored soft labels"):
        variant_config(TrainConfig(model="mobilenet_v2"), "stored", ["t"], 2)
    with pytest.raises(ValueError, match="no member trained on labels alone"):
        variant_config(TrainConfig(model="lenet", soft_labels="s.npz"), "online", [], 2)
