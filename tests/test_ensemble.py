"""Ensemble weights, temperature and cross-fitting on probabilities built from a seeded generator (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from raymotion.export.ensemble import cross_fitted, fit_temperature, fit_weights, log_loss, served_members, stratified_folds
from raymotion.export.mixture import combine
from raymotion.train.metrics import expected_calibration_error, softmax

C = 3


def _world(seed: int, n: int = 600):
    """True logits z, labels drawn from softmax(z), and members of different quality seeing z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (n, C))
    labels = np.array([rng.choice(C, p=p) for p in softmax(z)])
    members = {
        "soft": softmax(0.6 * z),                                    # right ranking, under-confident
        "noisy": softmax(z + rng.normal(0.0, 1.5, (n, C))),          # informative but noisy
        "sharp": softmax(3.0 * z + rng.normal(0.0, 1.0, (n, C))),    # over-confident
        "useless": rng.dirichlet(np.ones(C), n),                     # independent of the labels
    }
    return z, labels, members


@pytest.mark.parametrize("seed", range(4))
def test_fitted_weights_are_on_the_simplex_and_never_worse_than_the_best_member(seed):
    _, labels, members = _world(seed)
    weights = fit_weights(members, labels)
    assert list(weights) == list(members)  # every member kept, unpicked ones at 0
    values = np.array(list(weights.values()))
    assert (values >= 0).all() and values.sum() == pytest.approx(1.0, abs=1e-12)
    best_single = min(log_loss(p, labels) for p in members.values())
    fitted = log_loss(combine(members, weights), labels)
    assert fitted <= best_single + 1e-12
    # The members really are complementary here: mixing beats any single one, so > 1 member is used.
    assert fitted < best_single - 1e-3 and (values > 0).sum() >= 2


def test_useless_member_gets_weight_zero_and_is_not_served():
    _, labels, members = _world(7)
    weights = fit_weights(members, labels)
    assert weights["useless"] == 0.0
    assert "useless" not in served_members(weights)
    # combine must not need probabilities of an unweighted member (the server does not run it).
    without = {n: p for n, p in members.items() if n != "useless"}
    np.testing.assert_array_equal(combine(without, weights, 1.3), combine(members, weights, 1.3))


def test_duplicate_member_tie_keeps_fewer_members():
    _, labels, members = _world(3)
    weights = fit_weights({"a": members["noisy"], "b": members["noisy"].copy()}, labels)
    assert weights == {"a": 1.0, "b": 0.0}


def test_temperature_on_over_confident_probabilities_is_above_one_and_helps():
    z, labels, _ = _world(11, n=2000)
    over = softmax(2.5 * z)  # the labels come from softmax(z): these are 2.5x too sharp
    temperature = fit_temperature(over, labels)
    assert temperature > 1.5
    scaled = combine({"m": over}, {"m": 1.0}, temperature)
    assert log_loss(scaled, labels) < log_loss(over, labels) - 0.05
    assert expected_calibration_error(scaled, labels) < expected_calibration_error(over, labels) / 2
    # Deterministic, and on under-confident probabilities it sharpens instead.
    assert fit_temperature(over, labels) == temperature
    assert fit_temperature(softmax(0.5 * z), labels) < 1.0


def test_temperature_is_the_nll_minimum_of_a_bounded_search():
    z, labels, _ = _world(5)
    probs = softmax(1.7 * z)
    t = fit_temperature(probs, labels)
    nll = lambda temp: log_loss(combine({"m": probs}, {"m": 1.0}, temp), labels)  # noqa: E731
    assert nll(t) <= min(nll(t * 0.98), nll(t * 1.02))
    assert 0.05 <= t <= 20.0


def test_combine_one_hot_weight_at_t1_is_that_member_and_rows_sum_to_one():
    _, _, members = _world(2)
    for name in members:
        weights = {n: float(n == name) for n in members}
        np.testing.assert_allclose(combine(members, weights), members[name], atol=1e-9)
    mixed = combine(members, {n: 1.0 for n in members}, 0.7)
    np.testing.assert_allclose(mixed.sum(1), 1.0, atol=1e-12)
    # T=1 with equal weights is the plain mean.
    np.testing.assert_allclose(combine(members, {n: 2.0 for n in members}), sum(members.values()) / len(members),
                               atol=1e-9)
    with pytest.raises(ValueError):
        combine(members, {n: 0.0 for n in members})


def test_cross_fitted_predicts_every_row_from_a_fit_that_excluded_it():
    _, labels, members = _world(4, n=300)
    out = cross_fitted(members, labels, folds=5, seed=0)
    probs, fold = out["probs"], out["fold"]
    assert probs.shape == (len(labels), C) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    assert sorted(set(fold.tolist())) == list(range(5))
    np.testing.assert_array_equal(fold, stratified_folds(labels, 5, 0))
    for k in range(5):  # stratified: each fold holds about a fifth of each class
        for c in range(C):
            assert abs((fold[labels == c] == k).sum() - (labels == c).sum() / 5) <= 1
    # Each fold's rows are exactly what weights + T fitted on the other folds predict.
    for k in range(5):
        rest, held = fold != k, fold == k
        weights = fit_weights({n: p[rest] for n, p in members.items()}, labels[rest])
        assert weights == out["weights"][k]
        t = fit_temperature(combine({n: p[rest] for n, p in members.items()}, weights), labels[rest])
        assert t == out["temperatures"][k]
        np.testing.assert_allclose(probs[held], combine({n: p[held] for n, p in members.items()}, weights, t))
    metrics = out["metrics"]
    assert metrics["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    assert metrics["log_loss"] == pytest.approx(log_loss(probs, labels))
    assert np.array(metrics["confusion"]).sum() == len(labels)


def test_calibrating_members_first_lets_the_accurate_overconfident_member_in():
    """An accurate member that is far too sure of itself loses a raw log-loss selection to a less accurate,
    humble one; tempered by its own temperature first, it carries the ensemble."""
    from raymotion.export.ensemble import calibrate_members, fit_member_calibrations

    rng = np.random.default_rng(7)
    n = 900
    z = rng.normal(0.0, 2.0, (n, C))
    labels = z.argmax(1)
    members = {
        "accurate_overconfident": softmax(100.0 * (z + rng.normal(0.0, 1.2, (n, C)))),
        "humble_weaker": softmax(0.5 * (z + rng.normal(0.0, 2.0, (n, C)))),
    }
    acc = {m: float((p.argmax(1) == labels).mean()) for m, p in members.items()}
    assert acc["accurate_overconfident"] > acc["humble_weaker"] + 0.08
    raw_weights = fit_weights(members, labels)
    assert raw_weights["accurate_overconfident"] < 0.5  # the failure mode being fixed
    calibrations = fit_member_calibrations(members, labels)
    assert calibrations["accurate_overconfident"]["temperature"] > 1.0
    calibrated = calibrate_members(members, calibrations)
    weights = fit_weights(calibrated, labels)
    assert weights["accurate_overconfident"] > 0.5
    ensemble_acc = float((combine(calibrated, weights).argmax(1) == labels).mean())
    assert ensemble_acc >= acc["accurate_overconfident"] - 0.01
    # Out-of-fold with per-fold member temperatures predicts every row.
    oof = cross_fitted(members, labels, folds=5, fit_member_calibration=True)
    assert oof["probs"].shape == (n, C) and np.isfinite(oof["probs"]).all()


def test_class_bias_removes_a_prior_shift_that_temperature_cannot():
    """A member trained with class weights over-predicts the rare classes: its probabilities are the true
    posterior times a wrong prior. Temperature alone cannot move mass between classes; T + bias recovers
    the posterior (the bias converges to the log prior ratio) and its NLL and ECE."""
    from raymotion.export.ensemble import fit_calibration
    from raymotion.export.mixture import temper

    rng = np.random.default_rng(11)
    n = 6000
    prior = np.array([0.15, 0.7, 0.15])
    labels = rng.choice(C, size=n, p=prior)
    # x ~ N(e_y, I), so p(y | x) = softmax(x + log prior): the exact posterior.
    x = rng.normal(0.0, 1.0, (n, C)) + np.eye(C)[labels]
    posterior = softmax(x + np.log(prior))
    shifted = softmax(x)  # the same model believing in equal priors
    t_only = fit_temperature(shifted, labels)
    cal = fit_calibration(shifted, labels)
    assert len(cal["bias"]) == C and abs(sum(cal["bias"])) < 1e-9
    # The fitted bias is the log prior ratio (centred), up to sampling noise; the temperature stays ~1.
    expected = np.log(prior) - np.log(prior).mean()
    np.testing.assert_allclose(cal["bias"], expected, atol=0.1)
    assert cal["temperature"] == pytest.approx(1.0, abs=0.1)
    fixed = temper(shifted, **cal)
    assert log_loss(fixed, labels) < log_loss(combine({"m": shifted}, {"m": 1.0}, t_only), labels) - 0.01
    # Calibrated in the sense the prior shift breaks: the mean predicted probability of each class is its
    # frequency. Temperature alone leaves the happy class ~0.1 short.
    frequency = np.bincount(labels, minlength=C) / n
    assert np.abs(fixed.mean(0) - frequency).max() < 0.01
    assert np.abs(temper(shifted, t_only).mean(0) - frequency).max() > 0.1
    assert log_loss(fixed, labels) == pytest.approx(log_loss(posterior, labels), abs=0.01)
    # Deterministic, and the identity when the member is already calibrated.
    assert fit_calibration(shifted, labels) == cal
    ident = fit_calibration(posterior, labels)
    assert ident["temperature"] == pytest.approx(1.0, abs=0.1) and np.abs(ident["bias"]).max() < 0.1


def test_member_calibration_out_of_fold_is_fitted_without_the_rows_it_scores():
    """cross_fitted_calibration: every fold goes through the calibration fitted on the other folds (the
    same stratified folds as cross_fitted), so it equals that fit, and it differs from the in-sample fit."""
    from raymotion.export.ensemble import cross_fitted_calibration, fit_calibration, stratified_folds
    from raymotion.export.mixture import temper

    rng = np.random.default_rng(5)
    prior = np.array([0.2, 0.6, 0.2])
    labels = rng.choice(C, size=900, p=prior)
    shifted = softmax(rng.normal(0.0, 1.0, (900, C)) + 1.5 * np.eye(C)[labels])  # equal-prior beliefs
    oof = cross_fitted_calibration(shifted, labels, folds=5, seed=0)
    fold = stratified_folds(labels, 5, 0)
    for k in range(5):
        held = fold == k
        expected = temper(shifted[held], **fit_calibration(shifted[~held], labels[~held]))
        np.testing.assert_allclose(oof[held], expected)
    np.testing.assert_allclose(oof.sum(1), 1.0)
    in_sample = temper(shifted, **fit_calibration(shifted, labels))
    assert not np.allclose(oof, in_sample)
    # Out of fold it still removes most of the prior shift, and in-sample flatters it (lower NLL).
    assert log_loss(in_sample, labels) <= log_loss(oof, labels) < log_loss(shifted, labels) - 0.01


def test_thumbnail_order_shows_confident_mistakes_first_and_keeps_room_for_correct_rows():
    from raymotion.export.bundle import thumbnail_order

    rng = np.random.default_rng(2)
    labels = rng.integers(0, C, 300)
    probs = softmax(rng.normal(0.0, 2.0, (300, C)))  # about 2/3 of the rows wrong
    wrong = probs.argmax(1) != labels
    order = thumbnail_order(probs, labels, 30)
    assert len(order) == 30 and len(set(order.tolist())) == 30
    assert wrong[order[:20]].all() and not wrong[order[20:]].any()  # 2/3 mistakes, then correct rows
    confidence = probs.max(1)[order[:20]]
    assert (np.diff(confidence) <= 0).all() and confidence[0] == probs.max(1)[wrong].max()
    assert set(labels[order[20:]]) == set(range(C))  # every class among the correct rows
    # Only 3 correct rows: mistakes fill the rest of the grid.
    mostly_wrong = np.eye(C)[(labels + 1) % C] * 0.8 + 0.2 / C
    mostly_wrong[:3] = np.eye(C)[labels[:3]] * 0.8 + 0.2 / C
    few = thumbnail_order(mostly_wrong, labels, 30)
    assert len(few) == 30 and sorted(few[27:].tolist()) == [0, 1, 2]


# --- the log-linear pool -------------------------------------------------------------------------------------

def test_log_linear_combine_is_the_weighted_geometric_mean_then_temperature_and_bias():
    _, _, members = _world(5, n=50)
    weights, temperature, bias = {"soft": 0.25, "noisy": 0.75, "sharp": 0.0}, 0.8, [0.3, -0.1, -0.2]
    got = combine(members, weights, temperature, bias, "log-linear")
    logits = (0.25 * np.log(members["soft"]) + 0.75 * np.log(members["noisy"])) / temperature + np.array(bias)
    np.testing.assert_allclose(got, softmax(logits), atol=1e-12)
    # Unnormalised weights mean the same pool; an unknown rule is refused, not guessed.
    np.testing.assert_allclose(combine(members, {"soft": 1, "noisy": 3}, temperature, bias, "log-linear"), got)
    with pytest.raises(ValueError, match="unknown ensemble rule"):
        combine(members, weights, rule="median")


@pytest.mark.parametrize("seed", range(3))
def test_log_linear_fit_is_never_worse_in_sample_than_its_best_calibrated_member(seed):
    from raymotion.export.ensemble import calibrate_members, fit, fit_member_calibrations

    _, labels, raw = _world(seed)
    members = calibrate_members(raw, fit_member_calibrations(raw, labels))
    fitted = fit(members, labels, rule="log-linear")
    assert fitted.rule == "log-linear" and len(fitted.bias) == C and fitted.temperature > 0
    values = np.array(list(fitted.weights.values()))
    assert (values >= 0).all() and values.sum() == pytest.approx(1.0, abs=1e-9)
    pooled = fitted.probabilities(members)
    np.testing.assert_allclose(pooled, combine(members, fitted.weights, fitted.temperature, fitted.bias, "log-linear"))
    # Each calibrated member alone is a point of the family fitted over (a = 1 on it, b = 0).
    best = min(log_loss(p, labels) for p in members.values())
    assert log_loss(pooled, labels) <= best + 1e-6
    # The member that knows nothing is pruned, so it is not served: calibrated, it is near-uniform, and a
    # weight on it would change nothing while costing a model call.
    assert fitted.weights["useless"] == 0.0 and "useless" not in served_members(fitted.weights)


def test_log_linear_beats_the_linear_pool_when_members_err_on_different_classes():
    """Two members that each confuse a different pair of classes: in the geometric mean each one's confident
    "not this class" vetoes the other's mistake, which the arithmetic mean only halves."""
    from raymotion.export.ensemble import fit

    rng = np.random.default_rng(0)
    n = 3000
    labels = rng.integers(0, C, n)
    z = 4.0 * np.eye(C)[labels] + rng.normal(0.0, 1.0, (n, C))
    a, b = z.copy(), z.copy()
    a[:, [0, 1]] = z[:, [0, 1]].mean(1, keepdims=True) + rng.normal(0.0, 0.3, (n, 2))  # a cannot tell 0 from 1
    b[:, [1, 2]] = z[:, [1, 2]].mean(1, keepdims=True) + rng.normal(0.0, 0.3, (n, 2))  # b cannot tell 1 from 2
    members = {"a": softmax(a), "b": softmax(b)}
    fold = stratified_folds(labels, 5, 0)
    out = {}
    for rule in ("linear", "log-linear"):
        oof = cross_fitted(members, labels, folds=5, seed=0, rule=rule)
        out[rule] = oof["metrics"]
        assert (oof["fold"] == fold).all()
    assert out["log-linear"]["log_loss"] < out["linear"]["log_loss"] - 0.02
    assert out["log-linear"]["accuracy"] > out["linear"]["accuracy"]
