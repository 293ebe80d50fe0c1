"""``python -m bench ensemble RUN_DIR ...`` on predictions files written here (no model runs)."""

import json
import os

import numpy as np
import pytest

from bench.__main__ import main
from raymotion.export.ensemble import cross_fitted
from raymotion.rundir import ValPredictions, read_val_predictions, write_val_predictions
from raymotion.train.metrics import softmax


def write_run(path, labels, members: dict[str, np.ndarray]) -> str:
    # Calibrated member probabilities beside the raw ones: the bench must read the raw ones only.
    write_val_predictions(str(path), ValPredictions(
        labels=labels, raw_probs=members, probs={"ignored": np.full_like(next(iter(members.values())), 1 / 3)}))
    return str(path)


def test_bench_ensemble_scores_both_rules_on_every_member_set_across_runs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    truth = 3.0 * np.eye(3)[labels]
    noisy = lambda s: softmax(truth + rng.normal(0.0, s, truth.shape))  # noqa: E731
    a = write_run(tmp_path / "run_a", labels, {"m1": noisy(1.5), "m2": noisy(2.0)})
    b = write_run(tmp_path / "run_b", labels, {"m1": noisy(1.8)})
    out = tmp_path / "ensemble.json"
    main(["ensemble", a, b, "--max-members", "3", "--json", str(out)])
    result = json.loads(out.read_text())
    # Members named by run, raw probabilities only; every set of 2 and 3 of the 3 members.
    assert set(result["members_out_of_fold_accuracy"]) == {"run_a:m1", "run_a:m2", "run_b:m1"}
    assert sorted(len(r["members"]) for r in result["rows"]) == [2, 2, 2, 3]
    for row in result["rows"]:
        best = max(result["members_out_of_fold_accuracy"][n] for n in row["members"])
        assert row["best_member_accuracy"] == best
        for rule in ("linear", "log-linear"):
            assert row[rule]["gain_points"] == pytest.approx(100 * (row[rule]["accuracy"] - best))
        assert row["lower_log_loss"] == min(("linear", "log-linear"), key=lambda r: row[r]["log_loss"])
    # The figures are the bundle's own cross-fit of those members.
    full = next(r for r in result["rows"] if len(r["members"]) == 3)
    pa, pb = read_val_predictions(a), read_val_predictions(b)
    members = {"run_a:m1": pa.raw_probs["m1"], "run_a:m2": pa.raw_probs["m2"], "run_b:m1": pb.raw_probs["m1"]}
    expected = cross_fitted(members, labels, fit_member_calibration=True, rule="log-linear")["metrics"]
    assert full["log-linear"]["accuracy"] == expected["accuracy"]
    assert sum(result["lower_log_loss_count"].values()) == 4
    assert "lower out-of-fold log loss" in capsys.readouterr().out
    # Sets of one size only: the run's members all together.
    main(["ensemble", a, b, "--min-members", "3", "--max-members", "3", "--json", str(out)])
    assert [r["members"] for r in json.loads(out.read_text())["rows"]] == [full["members"]]


def test_bench_ensemble_refuses_runs_scored_on_different_val_sets(tmp_path):
    probs = softmax(np.random.default_rng(1).normal(size=(50, 3)))
    a = write_run(tmp_path / "a", np.zeros(50, np.int64), {"m": probs})
    b = write_run(tmp_path / "b", np.ones(50, np.int64), {"m": probs})
    with pytest.raises(ValueError, match="val labels differ"):
        main(["ensemble", a, b])
