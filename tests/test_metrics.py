import warnings

import numpy as np
import pytest

from raymotion.train.metrics import classification_metrics, confusion_matrix, softmax

# Four classes; "d" never occurs in the labels but is predicted once (row 6): it costs "c" its recall and
# must stay out of the macro-F1 (an absent class has no defined recall).
CLASSES = ["a", "b", "c", "d"]
LABELS = np.array([0, 0, 1, 1, 2, 2, 2])
SCORES = np.array([[.9, .1, 0, 0],     # a: first a                hit, top-2 hit
                   [.3, .6, .1, 0],    # a: first b, second a      miss, top-2 hit
                   [.15, .8, .05, 0],  # b: first b                hit, top-2 hit
                   [0, .8, .05, .15],  # b: first b                hit, top-2 hit
                   [.1, .2, .7, 0],    # c: first c                hit, top-2 hit
                   [.6, .3, .1, 0],    # c: first a, second b      miss, top-2 miss
                   [.1, 0, .2, .7]])   # c: first d, second c      miss, top-2 hit


def test_metrics_match_hand_computed_values():
    m = classification_metrics(SCORES, LABELS, CLASSES)
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["top2_accuracy"] == pytest.approx(6 / 7)
    # per present class (true positives, predicted, support): a (1, 2, 2) p=1/2 r=1/2 f1=1/2;
    # b (2, 3, 2) p=2/3 r=1 f1=4/5; c (1, 1, 3) p=1 r=1/3 f1=1/2. With d's 0 it would be 1.8 / 4.
    assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 1 / 2) / 3)
    assert [m[f"recall_{c}"] for c in CLASSES] == pytest.approx([1 / 2, 1, 1 / 3, 0])
    cm = confusion_matrix(LABELS, SCORES.argmax(1), 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0]]
    assert cm.dtype == np.int64


def test_tied_scores_rank_the_lower_class_first_as_argmax_does():
    # An untrained head: every score equal. argmax says class 0, so the top two are classes 0 and 1.
    m = classification_metrics(np.zeros((3, 3)), np.array([0, 0, 2]), ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["top2_accuracy"] == pytest.approx(2 / 3)


def test_two_classes_and_no_rows():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "k >= n_classes" warning, and no refusal of 0/1 labels
        m = classification_metrics(np.array([[.2, .8], [.9, .1], [.4, .6]]), np.array([1, 1, 0]), ["x", "y"])
    assert (m["accuracy"], m["top2_accuracy"]) == (pytest.approx(1 / 3), 1.0)
    assert m["macro_f1"] == pytest.approx((0 + 1 / 2) / 2)  # x: tp 0 of 1 predicted; y: p=1/2 r=1/2
    empty = classification_metrics(np.zeros((0, 3)), np.zeros(0), ["a", "b", "c"])
    assert all(np.isnan(v) for v in empty.values())


def test_softmax_matches_its_definition_and_does_not_overflow():
    logits = np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]])
    np.testing.assert_allclose(softmax(logits), [[1 / 4, 3 / 4], [1 / 2, 1 / 2]], rtol=1e-12)
    assert softmax(logits.astype(np.float32)).dtype == np.float32
