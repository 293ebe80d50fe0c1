"""Fit and honestly score the ensemble of a run's members (scipy's optimisers, scikit-learn's folds).

The formula fitted here is ``raymotion.export.mixture`` (``temper``, ``combine``): the export bundle scores
the validation set with it and the Serve ingress answers requests with it, so served probabilities are the
reported ones.

Members are calibrated first: each member's probabilities get its own temperature T_m and class bias b_m
(bias-corrected temperature scaling, Alexandari et al., ICML 2020: softmax(log p_m / T_m + b_m), fitted on
val), and those calibrated probabilities are what the weights mix. An over-confident member otherwise
loses the log-loss selection to a worse but humbler one, and the mixture of calibrated members needs only
a small final correction. The bias is there for prior shift: a member trained with class weights (or on a
rebalanced sample) believes in other class frequencies than val has, and no temperature can move
probability mass between classes. (What real runs showed: docs/results.md, "int8 and ensemble measurements".)

Two pooling rules (``mixture``): the weighted mean of the calibrated members ("linear": greedy selection,
then a temperature) and their weighted geometric mean ("log-linear": weights, temperature and a class bias
fitted jointly). A member that is confidently wrong where the others are right is outvoted in the mean but
vetoes in the geometric mean, and members that err on different classes (a class-weighted member beside
an unweighted one) combine better in log space; the bundle records both rules' out-of-fold figures, and
docs/results.md "The ensemble's pooling rule, measured" what runs measured.

``METHODS[rule]`` (recorded in the manifest) states the procedure step by step; here is why it is shaped so:
  * Weights minimise the val log loss (NLL), not accuracy. Accuracy is piecewise constant in the weights
    and moves in steps of 1/N: on a val set of a few hundred images many weightings tie and the greedy
    choice among them is noise. Log loss is smooth, rewards a member for being right with confidence and
    penalises confident mistakes, and is a proper scoring rule, so it is the objective that temperature
    scaling then continues. Accuracy is reported next to it (in-sample and out-of-fold).
  * The final temperature (Guo et al., 2017) is a monotone map of each row's log-probabilities, so it
    never changes a prediction, only its confidence.
  * Both are fitted on the val set, which is also the set they are reported on: in-sample figures flatter
    the ensemble. ``cross_fitted`` refits both on K-1 folds and predicts the held-out fold; that
    out-of-fold estimate is the honest one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import logsumexp
from sklearn import metrics

from raymotion.export.mixture import EPS, RULES, Rule, combine, log_probs, temper
from raymotion.train.metrics import classification_metrics, confusion_matrix, expected_calibration_error, softmax

T_BOUNDS = (0.05, 20.0)
ROUNDS = 50
# The log-linear pool drops members while its val NLL stays within this of the pool of them all, per image:
# well under what a useful member adds (0.005-0.01 nats in runs here), and each member kept is served.
PRUNE_NATS = 1e-3
# A greedy step must beat the current best by more than this to count: float noise is not an improvement,
# and a tie keeps the smaller ensemble.
IMPROVEMENT_TOL = 1e-12

CALIBRATION_STEP = ("each member's probabilities calibrated by its own fitted temperature and class bias "
                    "(softmax(log p / T + b), L-BFGS-B on the val NLL), then ")
OBJECTIVE = "Log loss, not accuracy, is optimised: it is smooth and proper, accuracy is reported alongside"
METHODS = {
    "linear": (CALIBRATION_STEP +
               f"greedy ensemble selection with replacement (Caruana et al. 2004): start from the member with the lowest "
               f"val log loss, then {ROUNDS} rounds each add one copy of the member that lowers val log loss most; "
               "weights = copy counts of the best prefix (ties keep fewer members); then one temperature T fitted by "
               f"bounded scalar minimisation on log T in [{T_BOUNDS[0]}, {T_BOUNDS[1]}] of the val NLL of "
               "softmax(log(p_mix) / T). " + OBJECTIVE),
    "log-linear": (CALIBRATION_STEP +
                   "a log-linear pool softmax(sum_m a_m log q_m + b) with a_m >= 0 and a class bias b, fitted jointly by "
                   "L-BFGS-B on the val NLL (convex) from equal weights; then members dropped (and the rest refitted) "
                   f"while the val NLL stays within {PRUNE_NATS} nats per image of the pool of them all; weights "
                   "w = a / sum(a), T = 1 / sum(a); members at w = 0 are not served. " + OBJECTIVE),
}
COMBINES = {
    "linear": "weighted mean of member probabilities, then temperature scaling on its log-probabilities: "
              "softmax(log(p_mix) / T)",
    "log-linear": "weighted geometric mean of member probabilities, renormalised, then temperature and class bias: "
                  "softmax(sum_m w_m log q_m / T + b)",
}


@dataclass(frozen=True)
class EnsembleFit:
    """A fitted ensemble: ``combine(member_probs, weights, temperature, bias, rule)`` gives its probabilities."""

    weights: dict[str, float]
    temperature: float
    bias: list[float] | None
    rule: Rule

    def probabilities(self, member_probs: dict[str, np.ndarray], tempered: bool = True) -> np.ndarray:
        """The pool, then (``tempered``) its temperature and class bias; untempered: the pool alone."""
        if not tempered:
            return combine(member_probs, self.weights, rule=self.rule)
        return combine(member_probs, self.weights, self.temperature, self.bias, self.rule)


def fit_calibration(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Bias-corrected temperature scaling: T and b (C,) minimising the NLL of softmax(log p / T + b).

    The NLL is convex in (1/T, b) (a log-sum-exp of a linear map), so L-BFGS-B from the identity
    (1/T = 1, b = 0) with the exact gradient finds its minimum; 1/T is bounded by ``T_BOUNDS``. b is returned
    centred (softmax ignores a common shift). Deterministic. Returns {"temperature": T, "bias": [b_c, ...]}.
    """
    labels = np.asarray(labels, np.int64)
    logp = log_probs(probs)
    num_classes = logp.shape[1]
    onehot = np.eye(num_classes)[labels]

    def nll_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] * logp + theta[1:]
        resid = softmax(z) - onehot
        grad = np.concatenate([[(resid * logp).sum(axis=1).mean()], resid.mean(axis=0)])
        return float((logsumexp(z, axis=1) - (z * onehot).sum(axis=1)).mean()), grad

    start = np.concatenate([[1.0], np.zeros(num_classes)])  # (1/T, b_1..b_C)
    bounds = [(1.0 / T_BOUNDS[1], 1.0 / T_BOUNDS[0])] + [(None, None)] * num_classes
    theta = minimize(nll_and_grad, start, jac=True, method="L-BFGS-B", bounds=bounds,
                     options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 500}).x
    bias = theta[1:] - theta[1:].mean()
    return {"temperature": float(1.0 / theta[0]), "bias": [float(b) for b in bias]}


def fit_member_calibrations(member_probs: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, dict]:
    """Each member's own temperature and class bias (``fit_calibration`` on these rows)."""
    return {name: fit_calibration(p, labels) for name, p in member_probs.items()}


def calibrate_members(member_probs: dict[str, np.ndarray], calibrations: dict[str, dict]) -> dict[str, np.ndarray]:
    """Each member through its calibration record (``temper(p, **record)``; no record: unchanged)."""
    return {name: temper(p, **calibrations.get(name, {})) for name, p in member_probs.items()}


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true class (natural log): sklearn's, told every class (a val
    split or fold may lack one)."""
    return float(metrics.log_loss(labels, probs, labels=np.arange(probs.shape[1])))


def fit_weights(member_probs: dict[str, np.ndarray], labels: np.ndarray, rounds: int = ROUNDS) -> dict[str, float]:
    """Greedy selection with replacement; weights on the simplex, unpicked members kept with weight 0.

    On the data it is fitted on the result is never worse than the best single member by log loss: the
    search starts there and only a strict improvement replaces the incumbent.
    """
    names = list(member_probs)
    if not names:
        raise ValueError("no members")
    labels = np.asarray(labels, np.int64)
    rows = np.arange(len(labels))
    # Only the true-class probability enters the log loss: (M, N).
    true_p = np.stack([np.asarray(member_probs[n], np.float64)[rows, labels] for n in names])

    def loss_of(counts: np.ndarray) -> float:
        mixed = counts @ true_p / counts.sum()
        return float(-np.log(np.clip(mixed, EPS, None)).mean())

    singles = [loss_of(np.eye(len(names))[i]) for i in range(len(names))]
    counts = np.zeros(len(names))
    counts[int(np.argmin(singles))] = 1  # argmin: the first of equals, i.e. the earlier member
    best_counts, best_loss = counts.copy(), min(singles)
    for _ in range(rounds):
        trials = []
        for i in range(len(names)):
            candidate = counts.copy()
            candidate[i] += 1
            # Among equal losses prefer a member already in (fewer members), then the earlier one.
            trials.append((loss_of(candidate), counts[i] == 0, i, candidate))
        loss, _, _, counts = min(trials, key=lambda t: t[:3])
        if loss < best_loss - IMPROVEMENT_TOL:
            best_counts, best_loss = counts.copy(), loss
    return {n: float(c / best_counts.sum()) for n, c in zip(names, best_counts)}


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """T in ``T_BOUNDS`` minimising NLL of softmax(log p / T); bounded scalar search on log T, deterministic.

    The NLL is convex in 1/T, hence unimodal in log T, so a bounded scalar minimiser finds its minimum.
    """
    labels = np.asarray(labels, np.int64)
    logp = log_probs(probs)
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        z = logp / math.exp(log_t)
        return float((logsumexp(z, axis=1) - z[rows, labels]).mean())

    log_t = minimize_scalar(nll, bounds=(math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])), method="bounded",
                            options={"xatol": 1e-10}).x
    return float(math.exp(log_t))


def _fit_pool(logps: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """(a_1..a_M, b_1..b_C) minimising the NLL of softmax(sum_m a_m logp_m + b), a >= 0, and that NLL.
    As in ``fit_calibration`` (its one-member case) the NLL is convex, so L-BFGS-B from equal weights with
    the exact gradient finds its minimum. ``logps``: (M, N, C)."""
    num_members, num_classes = logps.shape[0], logps.shape[2]
    onehot = np.eye(num_classes)[labels]

    def nll_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = np.tensordot(theta[:num_members], logps, axes=1) + theta[num_members:]
        resid = softmax(z) - onehot
        grad = np.concatenate([(resid * logps).sum(axis=2).mean(axis=1), resid.mean(axis=0)])
        return float((logsumexp(z, axis=1) - (z * onehot).sum(axis=1)).mean()), grad

    start = np.concatenate([np.full(num_members, 1.0 / num_members), np.zeros(num_classes)])
    bounds = [(0.0, 1.0 / T_BOUNDS[0])] * num_members + [(None, None)] * num_classes
    result = minimize(nll_and_grad, start, jac=True, method="L-BFGS-B", bounds=bounds,
                      options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 1000})
    return result.x, float(result.fun)


def fit_log_linear(member_probs: dict[str, np.ndarray], labels: np.ndarray) -> EnsembleFit:
    """The log-linear pool softmax(sum_m a_m log q_m + b), a_m >= 0, minimising the val NLL (``_fit_pool``),
    then pruned: while the pool without one more member (refitted) stays within ``PRUNE_NATS`` of NLL per
    image of the pool of them all, the member whose loss costs least goes. A member's weight alone does not say what it adds (a calibrated member that knows
    nothing is near-uniform, and any weight on it changes nothing), its refit without it does; and each
    member kept is one more model to serve. Returned as weights w = a / sum(a) on the simplex, T = 1 / sum(a)
    and the centred b: ``combine(..., rule="log-linear")`` computes the same probabilities."""
    names = list(member_probs)
    labels = np.asarray(labels, np.int64)
    logps = {n: log_probs(member_probs[n]) for n in names}
    kept = list(names)
    theta, full_nll = _fit_pool(np.stack([logps[n] for n in kept]), labels)
    while len(kept) > 1:
        refits = [(*_fit_pool(np.stack([logps[n] for n in kept if n != drop]), labels), drop) for drop in kept]
        best_theta, best_nll, drop = min(refits, key=lambda r: r[1])
        if best_nll > full_nll + PRUNE_NATS:  # against the full pool: small drops must not add up
            break
        kept.remove(drop)
        theta = best_theta
    a, bias = dict(zip(kept, theta[:len(kept)])), theta[len(kept):] - theta[len(kept):].mean()
    total = float(sum(a.values()))
    if total <= 1.0 / T_BOUNDS[1]:  # nothing but the class prior: keep the best member as it is calibrated
        best = names[int(np.argmin([log_loss(member_probs[n], labels) for n in names]))]
        return EnsembleFit({n: float(n == best) for n in names}, 1.0, None, "log-linear")
    return EnsembleFit({n: float(a.get(n, 0.0) / total) for n in names}, 1.0 / total, [float(b) for b in bias],
                       "log-linear")


def fit(member_probs: dict[str, np.ndarray], labels: np.ndarray, rounds: int = ROUNDS,
        rule: Rule = "linear") -> EnsembleFit:
    """The ensemble of these (calibrated) member probabilities by ``rule``: for "linear", greedy weights,
    then the temperature of the weighted mixture; for "log-linear", ``fit_log_linear``."""
    if rule == "log-linear":
        return fit_log_linear(member_probs, labels)
    if rule != "linear":
        raise ValueError(f"unknown ensemble rule {rule!r}; known: {RULES}")
    weights = fit_weights(member_probs, labels, rounds)
    return EnsembleFit(weights, fit_temperature(combine(member_probs, weights), labels), None, "linear")


def served_members(weights: dict[str, float]) -> list[str]:
    """The members a server has to run: those with a positive weight, in manifest order."""
    return [name for name, w in weights.items() if w > 0]


def scores(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """classification_metrics plus log loss, ECE and the confusion matrix (rows true, cols predicted); JSON-ready."""
    labels = np.asarray(labels, np.int64)
    out = classification_metrics(probs, labels, classes)
    out["log_loss"] = log_loss(probs, labels) if len(labels) else float("nan")
    out["ece"] = expected_calibration_error(probs, labels)
    out["confusion"] = confusion_matrix(labels, np.asarray(probs).argmax(1), len(classes)).tolist()
    return out


def stratified_folds(labels: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold id per row from scikit-learn's seeded ``StratifiedKFold``: folds keep the class ratios."""
    # Imported here: scikit-learn takes 1.5 s to import and only the fitting needs it.
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels, np.int64)
    fold = np.empty(len(labels), np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold[held] = k
    return fold


def cross_fitted_calibration(probs: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """One member's probabilities calibrated out-of-fold: each stratified fold through the temperature and
    class bias fitted on the other folds. The calibration is fitted on val, the set it is scored on; this is
    its honest score (``cross_fitted``'s ``member_probs`` for a single member)."""
    return cross_fitted({"member": probs}, labels, folds, seed, fit_member_calibration=True)["member_probs"]["member"]


def cross_fitted(member_probs: dict[str, np.ndarray], labels: np.ndarray, folds: int = 5, seed: int = 0,
                 classes: list[str] | None = None, rounds: int = ROUNDS, fit_member_calibration: bool = False,
                 rule: Rule = "linear") -> dict:
    """Out-of-fold ensemble: for each of ``folds`` stratified folds fit weights + T on the others, predict it.

    Returns ``probs`` (N, C: every row predicted by a fit that never saw it), ``probs_raw`` (same weights,
    T=1), ``member_probs`` (each member's rows as that fold mixed them: out-of-fold calibrated when
    ``fit_member_calibration``), ``fold`` (N,), per-fold ``weights`` and ``temperatures``, and ``metrics`` (``scores`` of
    ``probs`` plus the fold count and seed). ``fit_member_calibration``: ``member_probs`` are raw, and each fold also refits the
    members' own calibrations (temperature and class bias) on its fitting rows (as the bundle does on all of val).
    """
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    num_classes = next(iter(member_probs.values())).shape[1]
    classes = classes or [str(c) for c in range(num_classes)]
    folds = max(2, min(folds, n))
    fold = stratified_folds(labels, folds, seed)
    probs, probs_raw = np.zeros((n, num_classes)), np.zeros((n, num_classes))
    member_out = {m: np.zeros((n, num_classes)) for m in member_probs}
    fold_weights, temperatures = [], []
    for k in range(folds):
        held, fit_rows = fold == k, fold != k
        fold_probs = member_probs
        if fit_member_calibration:
            member_cal = fit_member_calibrations({m: p[fit_rows] for m, p in member_probs.items()}, labels[fit_rows])
            fold_probs = calibrate_members(member_probs, member_cal)
        fitted = fit({m: p[fit_rows] for m, p in fold_probs.items()}, labels[fit_rows], rounds, rule)
        held_probs = {m: p[held] for m, p in fold_probs.items()}
        for m, p in held_probs.items():
            member_out[m][held] = p
        probs[held] = fitted.probabilities(held_probs)
        probs_raw[held] = fitted.probabilities(held_probs, tempered=False)
        fold_weights.append(fitted.weights)
        temperatures.append(fitted.temperature)
    metrics = scores(probs, labels, classes)
    metrics.update(folds=folds, seed=seed)
    return {"probs": probs, "probs_raw": probs_raw, "member_probs": member_out, "fold": fold, "weights": fold_weights,
            "temperatures": temperatures, "metrics": metrics}
