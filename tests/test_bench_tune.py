"""bench tune's accounting, on made-up search histories (the searches themselves run in the benchmark:
a test of Tune's trials is tests/test_tune_resume.py)."""

import math

from bench.tune import TuneBenchConfig, cost_to_reach, summarize


def trial(f1s, seconds=30.0):
    return {"f1": list(f1s), "seconds": [seconds] * len(f1s), "start_seconds": 10.0}


def run(method, curve, best):
    return {"method": method, "seed": 0, "best_f1": best, "curve": curve, "start_seconds": [10.0],
            "trial_epochs": sum(len(t["f1"]) for t in curve), "train_minutes": sum(sum(t["seconds"]) for t in curve) / 60,
            "overhead_per_trial_s": 5.0}


def test_cost_to_reach_counts_epochs_in_trial_order_up_to_the_first_that_reaches():
    curve = [trial([0.30, 0.35]), trial([0.31]), trial([0.36, 0.41, 0.42])]
    assert cost_to_reach(curve, 0.40) == {"trial_epochs": 5, "train_minutes": 2.5}
    assert cost_to_reach(curve, 0.50)["trial_epochs"] == math.inf


def test_a_search_that_never_reaches_the_target_counts_everything_it_spent():
    runs = [run("optuna+asha", [trial([0.3]), trial([0.5])], 0.5),            # reaches at epoch 2
            run("random, all epochs", [trial([0.3, 0.3]), trial([0.51, 0.51])], 0.51),  # reaches at epoch 3
            run("optuna+asha", [trial([0.2, 0.2])], 0.2),                      # never: 2 epochs spent
            run("random, all epochs", [trial([0.2, 0.2]), trial([0.2, 0.2])], 0.2)]  # never: 4 spent
    result = summarize(TuneBenchConfig(data_root="-", tolerance=0.01), {}, runs)
    assert result["target_macro_f1"] == 0.51 - 0.01
    totals = result["totals_to_target"]
    assert totals["optuna+asha"]["trial_epochs"] == 2 + 2 and totals["optuna+asha"]["reached"] == 1
    assert totals["random, all epochs"]["trial_epochs"] == 3 + 4
    assert result["ratio_trial_epochs"] == 4 / 7
