"""``python -m bench train-step``: each variant runs the train loop's own step in its own layout
and precision, and the table's ratios are the measured speeds' (no speed is asserted: machines differ)."""

import json
import re

import torch

from bench.__main__ import main


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
        assert all(speed > 0 for speed in row["images_per_s"].values())
        # The forced bf16 variant really ran under bf16 autocast; the others in float32.
        assert row["logits_dtype"] == {"float32": "float32", "channels_last": "float32",
                                       "channels_last+bf16": "bfloat16"}
    assert result["threads"] == 1 and torch.get_num_threads() == threads_before  # restored after the bench
    assert "vector_extensions" in result["machine"] and isinstance(result["cpu_computes_bf16"], bool)
    printed = capsys.readouterr().out
    assert "bf16 in hardware" in printed and "mobilenet_v2" in printed and str(out) in printed


def test_bench_train_step_reports_the_median_round_and_its_ratio_to_float32(monkeypatch, capsys):
    """Timings the test chooses (rounds in order, each timing every variant once): the reported speed is a
    variant's median round and its ratio the ratio of medians; a mean, or a median of per-round ratios,
    would give other figures."""
    from bench import train_step

    timings = iter([100.0, 120.0, 90.0,  # round 1: float32, channels_last, channels_last+bf16
                    300.0, 330.0, 600.0,  # round 2
                    200.0, 260.0, 500.0])  # round 3
    monkeypatch.setattr(train_step.VariantRunner, "images_per_s", lambda self, steps: next(timings))
    result = train_step.run_train_step_bench(train_step.TrainStepBenchConfig(
        models=("lenet",), sizes=(32,), batch_size=2, steps=1, warmup=0, rounds=3, threads=1), log=lambda line: None)
    (row,) = result["rows"]
    assert row["rounds"] == {"float32": [100.0, 300.0, 200.0], "channels_last": [120.0, 330.0, 260.0],
                             "channels_last+bf16": [90.0, 600.0, 500.0]}
    assert row["images_per_s"] == {"float32": 200.0, "channels_last": 260.0, "channels_last+bf16": 500.0}
    assert row["ratio_to_float32"] == {"float32": 1.0, "channels_last": 1.3, "channels_last+bf16": 2.5}
    # The table's row is these figures: each variant's median speed and its ratio, in the header's order.
    header, columns, lenet = train_step.table(result).splitlines()
    assert "bf16 in hardware" in header
    assert re.split(r"\s{2,}", columns) == ["model", "px", "float32 img/s", "channels_last img/s",
                                            "channels_last+bf16 img/s"]
    assert re.split(r"\s{2,}", lenet) == ["lenet", "32", "200.0 (1.00x)", "260.0 (1.30x)", "500.0 (2.50x)"]
