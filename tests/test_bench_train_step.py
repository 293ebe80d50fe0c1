"""``python -m raymotion.bench train-step``: each variant runs the train loop's own step in its own layout
and precision, and the table's ratios are the measured speeds' (no speed is asserted: machines differ)."""

import json

import torch

from raymotion.bench.__main__ import main


def test_bench_train_step_times_every_variant_in_its_layout_and_precision(tmp_path, capsys):
    out = tmp_path / "step.json"
    threads_before = torch.get_num_threads()
    main(["train-step", "--models", "lenet,mobilenet_v2", "--sizes", "32,32", "--batch-size", "4", "--steps", "1",
          "--warmup", "1", "--rounds", "2", "--threads", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert [r["model"] for r in result["rows"]] == ["lenet", "mobilenet_v2"]
    for row in result["rows"]:
        assert row["input_size"] == 32
        assert set(row["images_per_s"]) == {"float32", "channels_last", "channels_last+bf16"}
        assert all(len(r) == 2 for r in row["rounds"].values())
        for variant, speed in row["images_per_s"].items():
            assert speed > 0
            assert abs(row["ratio_to_float32"][variant] - speed / row["images_per_s"]["float32"]) < 1e-9
        # The forced bf16 variant really ran under bf16 autocast; the others in float32.
        assert row["logits_dtype"] == {"float32": "float32", "channels_last": "float32",
                                       "channels_last+bf16": "bfloat16"}
    assert result["threads"] == 1 and torch.get_num_threads() == threads_before  # restored after the bench
    assert "vector_extensions" in result["machine"] and isinstance(result["cpu_computes_bf16"], bool)
    printed = capsys.readouterr().out
    assert "bf16 in hardware" in printed and "mobilenet_v2" in printed and str(out) in printed
