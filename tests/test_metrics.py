"""finetune.metrics against values worked out by hand (no sklearn here), edge cases included."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from finetune.metrics import average_precision, compute_metrics, d_prime, roc_auc

# Three classes, four clips. Worked by hand below; class "never" has no positive.
SCORES = np.array([
    # a     b     never
    [0.9, 0.1, 0.3],
    [0.8, 0.4, 0.2],
    [0.7, 0.35, 0.6],
    [0.6, 0.8, 0.1],
])
TARGETS = np.array([
    [1, 1, 0],
    [0, 0, 0],
    [1, 0, 0],
    [0, 1, 0],
])
LABELS = ["a", "b", "never"]


def test_average_precision_by_hand():
    # class a, ranked 0.9(+) 0.8(-) 0.7(+) 0.6(-): precisions at the hits 1/1 and 2/3
    assert average_precision(SCORES[:, 0], TARGETS[:, 0]) == pytest.approx((1 + 2 / 3) / 2)
    # class b, ranked 0.8(+) 0.4(-) 0.35(-) 0.1(+): precisions 1/1 and 2/4
    assert average_precision(SCORES[:, 1], TARGETS[:, 1]) == pytest.approx((1 + 2 / 4) / 2)
    assert math.isnan(average_precision(SCORES[:, 2], TARGETS[:, 2]))


def test_average_precision_ties_count_together():
    # 0.5(+) and 0.5(-) tie: one threshold at 0.5 (P = 1/2, R = 1/2), then 0.2(+) (P = 2/3, R = 1).
    # AP = 1/2 * 1/2 + 1/2 * 2/3. Ranking the tied positive first would give (1 + 2/3)/2 instead.
    scores, targets = np.array([0.5, 0.5, 0.2]), np.array([1, 0, 1])
    assert average_precision(scores, targets) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    # the order of the tied clips in the input does not matter
    assert average_precision(scores[[1, 0, 2]], targets[[1, 0, 2]]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_roc_auc_by_hand():
    # a: positives {0.9, 0.7} vs negatives {0.8, 0.6}: 3 of 4 pairs ordered right
    assert roc_auc(SCORES[:, 0], TARGETS[:, 0]) == pytest.approx(3 / 4)
    # b: positives {0.1, 0.8} vs negatives {0.4, 0.35}: 2 of 4
    assert roc_auc(SCORES[:, 1], TARGETS[:, 1]) == pytest.approx(2 / 4)
    # a tie counts half: positives {0.5, 0.2} vs negative {0.5}: 0.5 + 0
    assert roc_auc(np.array([0.5, 0.5, 0.2]), np.array([1, 0, 1])) == pytest.approx(0.25)
    assert math.isnan(roc_auc(SCORES[:, 2], TARGETS[:, 2]))  # no positive
    assert math.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))  # no negative


def test_d_prime():
    assert d_prime(0.5) == pytest.approx(0.0, abs=1e-12)
    for auc in (0.625, 0.9, 0.97):
        assert d_prime(auc) == pytest.approx(math.sqrt(2) * NormalDist().inv_cdf(auc))
    assert d_prime(0.25) < 0


def test_multi_label_metrics_exclude_and_list_classes_without_positives():
    m = compute_metrics(SCORES, TARGETS, LABELS, "multi_label")
    ap_a, ap_b = (1 + 2 / 3) / 2, (1 + 2 / 4) / 2
    assert m["mAP"] == pytest.approx((ap_a + ap_b) / 2)  # "never" is left out, not counted as 0
    assert m["main"] == m["mAP"]
    assert m["mAUC"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert m["d_prime"] == pytest.approx(math.sqrt(2) * NormalDist().inv_cdf(0.625))
    assert m["classes_without_positives"] == ["never"]
    assert m["classes_scored"] == 2
    assert m["num_samples"] == 4
    assert m["per_class"]["never"] == {"AP": None, "AUC": None, "positives": 0}
    assert m["per_class"]["a"]["AP"] == pytest.approx(ap_a)
    assert m["per_class"]["b"]["positives"] == 2
    json.dumps(m, allow_nan=False)  # the report is plain JSON (no NaN in it)


def test_multi_label_class_with_only_positives_has_ap_but_no_auc():
    scores = np.array([[0.2, 0.9], [0.7, 0.1]])
    targets = np.array([[1, 1], [1, 0]])
    m = compute_metrics(scores, targets, ["all", "some"], "multi_label")
    assert m["per_class"]["all"]["AP"] == pytest.approx(1.0)
    assert m["per_class"]["all"]["AUC"] is None
    assert m["mAP"] == pytest.approx(1.0)
    assert m["mAUC"] == pytest.approx(1.0)  # only "some" has both positives and negatives


# Single-label: 4 classes, 6 clips. truth a a b b c c; predicted a b b b a d.
# d is predicted once but never true; c is never predicted.
SL_TRUTH = [0, 0, 1, 1, 2, 2]
SL_PRED = [0, 1, 1, 1, 0, 3]


def _one_hot(idx, n):
    out = np.zeros((len(idx), n))
    out[np.arange(len(idx)), idx] = 1
    return out


def test_single_label_metrics_by_hand():
    scores = _one_hot(SL_PRED, 4) * 0.7 + 0.1  # argmax = SL_PRED
    m = compute_metrics(scores, _one_hot(SL_TRUTH, 4), ["a", "b", "c", "d"], "single_label")
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["main"] == m["accuracy"]
    # F1 = 2tp / (2tp + fp + fn): a: tp 1 fp 1 fn 1 -> 1/2; b: tp 2 fp 1 fn 0 -> 4/5;
    # c (never predicted): tp 0 fn 2 -> 0. d has no true clip: left out of the macro mean.
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert m["per_class"]["d"]["support"] == 0 and m["per_class"]["d"]["recall"] is None
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["a"]["recall"] == pytest.approx(1 / 2)
    assert m["top5"] == 1.0  # 4 classes: every truth is in the top 4


def test_top5():
    # 7 classes. Clip 0's true class (0) is ranked 5th: a hit. Clip 1's (1) is ranked 6th: a miss.
    scores = np.array([
        [0.10, 0.20, 0.15, 0.18, 0.17, 0.05, 0.01],  # ranks: 1,3,4,2,0,... -> class 0 is 5th
        [0.20, 0.06, 0.15, 0.18, 0.17, 0.16, 0.01],  # class 1 is 6th
    ])
    m = compute_metrics(scores, _one_hot([0, 1], 7), list("abcdefg"), "single_label")
    assert m["top5"] == pytest.approx(0.5)
    assert m["accuracy"] == 0.0


def test_no_samples_is_an_error():
    with pytest.raises(ValueError, match="no samples"):
        compute_metrics(np.zeros((0, 3)), np.zeros((0, 3)), LABELS, "single_label")
