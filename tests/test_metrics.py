import numpy as np
import pytest

from raymotion.train.metrics import classification_metrics, confusion_matrix


def test_metrics_match_hand_computed_values():
    classes = ["a", "b", "c"]
    labels = np.array([0, 0, 1, 1, 2, 2])
    # predictions: 0,1 | 1,1 | 2,0 ; second choices chosen so that top-2 misses only one sample
    scores = np.array([[.9, .1, 0], [.1, .7, .2], [.1, .8, .1], [.1, .8, .1], [.1, .2, .7], [.6, .1, .3]])
    m = classification_metrics(scores, labels, classes)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["top2_accuracy"] == pytest.approx(5 / 6)
    # per class: a p=1/2 r=1/2 f1=.5 ; b p=2/3 r=1 f1=.8 ; c p=1 r=1/2 f1=2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert (m["recall_a"], m["recall_b"], m["recall_c"]) == (0.5, 1.0, 0.5)
    assert confusion_matrix(labels, scores.argmax(1), 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
