"""Tests for mlic_edge.metrics, with scikit-learn as the AP reference."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from mlic_edge import metrics as M

sk_metrics = pytest.importorskip("sklearn.metrics")


def _sk_ap(y_true, y_score) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sk_metrics.average_precision_score(y_true, y_score))


def _random_problem(seed: int, n: int = 300, c: int = 12, ties: bool = False, ignore: bool = False):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < rng.uniform(0.03, 0.5, size=c)).astype(np.int64)
    # Scores correlated with the targets so AP is neither trivial nor random.
    scores = 1 / (1 + np.exp(-(rng.normal(size=(n, c)) + 1.5 * targets)))
    if ties:
        scores = np.round(scores, 1)
    if ignore:
        targets[rng.random((n, c)) < 0.1] = -1
    # Make sure every class has at least one positive.
    for j in range(c):
        if not (targets[:, j] == 1).any():
            targets[rng.integers(n), j] = 1  # after the -1 entries, so it stays
    return scores, targets


# ----------------------------------------------------------------------------- AP vs sklearn


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_equals_sklearn(seed, ties):
    scores, targets = _random_problem(seed, ties=ties)
    result = M.mean_average_precision(scores, targets)
    expected = [_sk_ap(targets[:, j], scores[:, j]) for j in range(targets.shape[1])]
    for j, e in enumerate(expected):
        assert M.average_precision(scores[:, j], targets[:, j]) == e
        assert result.per_class[j] == e
    assert result.map == pytest.approx(np.mean(expected), abs=1e-15)
    assert result.classes_without_positives == []


def test_heavy_ties_equal_sklearn():
    rng = np.random.default_rng(7)
    for _ in range(20):
        y = rng.integers(0, 2, size=40)
        y[0] = 1
        s = rng.integers(0, 3, size=40).astype(float)  # only 3 distinct values
        assert M.average_precision(s, y) == _sk_ap(y, s)
    # All scores equal: one threshold, AP = prevalence.
    y = np.array([1, 0, 0, 1, 0])
    assert M.average_precision(np.full(5, 0.3), y) == pytest.approx(0.4)
    assert M.average_precision(np.full(5, 0.3), y) == _sk_ap(y, np.full(5, 0.3))


@pytest.mark.parametrize("seed", [10, 11, 12])
@pytest.mark.parametrize("ties", [False, True])
def test_ignore_entries_left_out(seed, ties):
    scores, targets = _random_problem(seed, ties=ties, ignore=True)
    assert (targets == -1).any()
    result = M.mean_average_precision(scores, targets)
    for j in range(targets.shape[1]):
        keep = targets[:, j] != -1
        expected = _sk_ap(targets[keep, j], scores[keep, j])
        assert result.per_class[j] == expected
        assert M.average_precision(scores[:, j], targets[:, j]) == expected


def test_ignore_entry_with_top_score_does_not_count():
    s = np.array([0.9, 0.8, 0.7, 0.6])
    assert M.average_precision(s, [-1, 1, 0, 1]) == pytest.approx((1 + 2 / 3) / 2)
    assert M.average_precision(s, [0, 1, 0, 1]) == pytest.approx((1 / 2 + 2 / 4) / 2)


# ----------------------------------------------------------------------------- METHODS.md vector

METHODS_LABELS = np.array([1, 0, 0, 1, 1, 0, 1])
METHODS_SCORES = np.linspace(0.9, 0.3, 7)  # strictly decreasing


def test_methods_vector_standard():
    ap = M.average_precision(METHODS_SCORES, METHODS_LABELS)
    assert round(ap, 4) == 0.6679
    # By hand: positives at ranks 1, 4, 5, 7 -> (1 + 2/4 + 3/5 + 4/7) / 4.
    assert ap == pytest.approx((1 + 2 / 4 + 3 / 5 + 4 / 7) / 4)
    assert ap == _sk_ap(METHODS_LABELS, METHODS_SCORES)


def test_methods_vector_voc07():
    ap = M.average_precision_voc07(METHODS_SCORES, METHODS_LABELS)
    assert round(ap, 4) == 0.7013
    # By hand: t=0,.1,.2 -> 1; t=.3..0.7 -> 0.6; t=.8,.9,1 -> 4/7.
    assert ap == pytest.approx((3 * 1 + 5 * 0.6 + 3 * 4 / 7) / 11)
    res = M.mean_average_precision(METHODS_SCORES[:, None], METHODS_LABELS[:, None], mode="voc07")
    assert round(res.map, 4) == 0.7013


def test_voc07_perfect_and_recall_levels():
    # Perfect ranking -> 1.0
    assert M.average_precision_voc07([0.9, 0.8, 0.1], [1, 1, 0]) == pytest.approx(1.0)
    # Recall exactly 0.3 must count for t = 0.3 (10 positives, 3 found first).
    y = np.array([1] * 3 + [0] * 7 + [1] * 7)
    s = np.linspace(1, 0, y.size)
    # precision 1 up to recall 0.3, then best later precision is 10/17 at recall 1.
    expected = (4 * 1 + 7 * 10 / 17) / 11
    assert M.average_precision_voc07(s, y) == pytest.approx(expected)


def test_bad_mode_raises():
    with pytest.raises(ValueError, match="mode"):
        M.mean_average_precision(np.zeros((2, 2)), np.ones((2, 2), int), mode="voc12")


# ----------------------------------------------------------------------------- no positives


def test_class_without_positives_excluded_and_reported():
    scores, targets = _random_problem(3, c=5)
    targets[:, 2] = 0
    targets[:3, 2] = -1  # -1 entries are not positives either
    res = M.mean_average_precision(scores, targets)
    assert res.classes_without_positives == [2]
    assert math.isnan(res.per_class[2])
    assert math.isnan(M.average_precision(scores[:, 2], targets[:, 2]))
    others = [j for j in range(5) if j != 2]
    expected = np.mean([_sk_ap(targets[:, j], scores[:, j]) for j in others])
    assert res.map == pytest.approx(expected, abs=1e-15)

    names = [f"c{j}" for j in range(5)]
    out = M.evaluate(scores, targets, names)
    assert out["classes_without_positives"] == ["c2"]
    assert out["per_class_ap"]["c2"] is None
    assert out["mAP"] == pytest.approx(expected, abs=1e-15)


def test_no_class_with_positives():
    scores = np.random.default_rng(0).random((6, 3))
    targets = np.zeros((6, 3), int)
    targets[0, 0] = -1
    res = M.mean_average_precision(scores, targets)
    assert math.isnan(res.map)
    assert res.classes_without_positives == [0, 1, 2]
    out = M.evaluate(scores, targets, ["a", "b", "c"])
    assert out["mAP"] is None
    json.dumps(out, allow_nan=False)


# ----------------------------------------------------------------------------- thresholded

# 4 images x 3 classes, worked out by hand below.
HAND_SCORES = np.array(
    [
        [0.9, 0.6, 0.1],
        [0.8, 0.2, 0.7],
        [0.3, 0.55, 0.4],
        [0.5, 0.45, 0.9],
    ]
)
HAND_TARGETS = np.array(
    [
        [1, 0, 0],
        [1, 1, -1],  # -1 counts as negative for thresholded metrics
        [0, 1, 0],
        [0, 0, 1],
    ]
)


def test_threshold_metrics_by_hand():
    # Predicted (score >= 0.5): [1,1,0] [1,0,1] [0,1,0] [1,0,1]
    # class 0: Ng=2 Np=3 Nc=2 ; class 1: Ng=2 Np=2 Nc=1 ; class 2: Ng=1 Np=2 Nc=1
    # CP = (2/3 + 1/2 + 1/2)/3 = 5/9 ; CR = (1 + 1/2 + 1)/3 = 5/6 ; CF1 = 2/3
    # OP = 4/7 ; OR = 4/5 ; OF1 = 2/3
    m = M.threshold_metrics(HAND_SCORES, HAND_TARGETS, threshold=0.5)
    assert set(m) == {"CP", "CR", "CF1", "OP", "OR", "OF1"}
    assert m["CP"] == pytest.approx(0.555555555556)
    assert m["CR"] == pytest.approx(0.833333333333)
    assert m["CF1"] == pytest.approx(0.666666666667)
    assert m["OP"] == pytest.approx(0.571428571429)
    assert m["OR"] == pytest.approx(0.8)
    assert m["OF1"] == pytest.approx(0.666666666667)


def test_threshold_metrics_top1_by_hand():
    # Top-1 per image: class 0, 0, 1, 2 (all >= 0.5).
    # class 0: Ng=2 Np=2 Nc=2 ; class 1: Ng=2 Np=1 Nc=1 ; class 2: Ng=1 Np=1 Nc=1
    # CP = 1 ; CR = (1 + 1/2 + 1)/3 = 5/6 ; CF1 = 10/11 ; OP = 1 ; OR = 4/5 ; OF1 = 8/9
    m = M.threshold_metrics(HAND_SCORES, HAND_TARGETS, threshold=0.5, top_k=1)
    assert m["CP"] == pytest.approx(1.0)
    assert m["CR"] == pytest.approx(0.833333333333)
    assert m["CF1"] == pytest.approx(0.909090909091)
    assert m["OP"] == pytest.approx(1.0)
    assert m["OR"] == pytest.approx(0.8)
    assert m["OF1"] == pytest.approx(0.888888888889)


def test_top3_rule_needs_rank_and_threshold():
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.1],  # 4 above threshold, only the top 3 kept
            [0.2, 0.1, 0.3, 0.6, 0.05],  # top 3 = classes 3, 2, 0; only class 3 >= 0.5
        ]
    )
    targets = np.array([[0, 0, 0, 1, 0], [0, 0, 0, 1, 0]])
    # top-3: predicted {0,1,2} and {3}. Np = 1,1,1,1,0->1 ; Nc: class 3 = 1 ; Ng: class 3 = 2
    # CP = 1/5 ; CR = 1/2 (class 3 only) ; OP = 1/5 ; OR = 1/2
    m3 = M.threshold_metrics(scores, targets, threshold=0.5, top_k=3)
    assert m3["CP"] == pytest.approx(0.2)
    assert m3["CR"] == pytest.approx(0.5)
    assert m3["OP"] == pytest.approx(0.2)
    assert m3["OR"] == pytest.approx(0.5)
    assert m3["OF1"] == pytest.approx(2 * 0.2 * 0.5 / 0.7)
    # Without top-k: predicted {0,1,2,3} and {3}. Np = 1,1,1,2,0->1 (sum 6) ; Nc = 2 ; Ng = 2
    m = M.threshold_metrics(scores, targets, threshold=0.5)
    assert m["OP"] == pytest.approx(2 / 6)
    assert m["OR"] == pytest.approx(1.0)
    assert m["CP"] == pytest.approx(1 / 5)
    assert m["CR"] == pytest.approx(1.0)


def test_threshold_is_inclusive_and_zero_cases():
    # score == threshold counts as predicted
    m = M.threshold_metrics([[0.5]], [[1]], threshold=0.5)
    assert m["OP"] == 1.0 and m["OR"] == 1.0 and m["OF1"] == 1.0
    # nothing predicted, nothing correct -> zeros, no division error
    m = M.threshold_metrics([[0.1, 0.2]], [[1, 0]], threshold=0.5)
    assert m == {"CP": 0.0, "CR": 0.0, "CF1": 0.0, "OP": 0.0, "OR": 0.0, "OF1": 0.0}


def test_threshold_metrics_match_sklearn_micro():
    scores, targets = _random_problem(5, ignore=True)
    gt = (targets == 1).astype(int)
    pred = (scores >= 0.5).astype(int)
    m = M.threshold_metrics(scores, targets)
    assert m["OP"] == pytest.approx(sk_metrics.precision_score(gt, pred, average="micro"))
    assert m["OR"] == pytest.approx(sk_metrics.recall_score(gt, pred, average="micro"))
    assert m["CR"] == pytest.approx(sk_metrics.recall_score(gt, pred, average="macro", zero_division=0))
    assert m["CP"] == pytest.approx(
        sk_metrics.precision_score(gt, pred, average="macro", zero_division=0)
    )


# ----------------------------------------------------------------------------- groups


def test_group_map():
    ap = np.array([0.9, 0.8, np.nan, 0.5, 0.3, 0.1])
    counts = np.array([500, 101, 100, 20, 19, 0])
    g = M.group_map(ap, counts)
    # head: > 100 -> classes 0, 1 ; middle: 20..100 -> 2 (nan), 3 ; tail: < 20 -> 4, 5
    assert g["head"] == pytest.approx(0.85)
    assert g["middle"] == pytest.approx(0.5)
    assert g["tail"] == pytest.approx(0.2)
    assert (g["head_classes"], g["middle_classes"], g["tail_classes"]) == (2, 2, 2)
    assert all(isinstance(g[k], int) for k in ("head_classes", "middle_classes", "tail_classes"))

    g = M.group_map(ap, counts, head_threshold=400, tail_threshold=101)
    # head: 0 ; middle: 1 ; tail: 2 (nan), 3, 4, 5
    assert g["head"] == pytest.approx(0.9)
    assert g["middle"] == pytest.approx(0.8)
    assert g["tail"] == pytest.approx(0.3)
    assert (g["head_classes"], g["middle_classes"], g["tail_classes"]) == (1, 1, 4)


def test_group_map_empty_group_is_none():
    g = M.group_map([0.4, np.nan], [500, 50])
    assert g["head"] == pytest.approx(0.4)
    assert g["middle"] is None  # only class has no positives
    assert g["tail"] is None  # no class at all
    assert g["tail_classes"] == 0 and g["middle_classes"] == 1
    with pytest.raises(ValueError):
        M.group_map([0.1, 0.2], [1, 2, 3])


# ----------------------------------------------------------------------------- evaluate


def _check_plain(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str)
            _check_plain(v)
    elif isinstance(obj, list):
        for v in obj:
            _check_plain(v)
    else:
        assert obj is None or type(obj) in (float, int, str, bool), type(obj)


def test_evaluate_json_ready():
    scores, targets = _random_problem(8, c=6, ignore=True)
    names = [f"class_{j}" for j in range(6)]
    counts = [1000, 150, 60, 25, 10, 3]
    out = M.evaluate(scores, targets, names, class_counts=counts, top_k=3)
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    _check_plain(out)
    for key in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "top3", "per_class_ap",
                "classes_without_positives", "num_images", "num_classes", "threshold",
                "ap_mode", "groups"):
        assert key in out
    for key in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert 0.0 <= out[key] <= 1.0
    assert set(out["top3"]) == {"CP", "CR", "CF1", "OP", "OR", "OF1"}
    assert all(0.0 <= v <= 1.0 for v in out["top3"].values())
    assert list(out["per_class_ap"]) == names
    assert all(0.0 <= v <= 1.0 for v in out["per_class_ap"].values())
    assert out["num_images"] == 300 and out["num_classes"] == 6
    assert out["threshold"] == 0.5 and out["ap_mode"] == "standard"
    assert out["groups"]["head_classes"] == 2
    assert out["groups"]["middle_classes"] == 2
    assert out["groups"]["tail_classes"] == 2
    assert out["mAP"] == pytest.approx(M.mean_average_precision(scores, targets).map)

    out2 = M.evaluate(scores, targets, names, top_k=5, mode="voc07", threshold=0.3)
    assert "top5" in out2 and "top3" not in out2 and "groups" not in out2
    assert out2["ap_mode"] == "voc07" and out2["threshold"] == 0.3
    json.dumps(out2, allow_nan=False)


def test_shape_mismatch_raises():
    s = np.zeros((4, 3))
    with pytest.raises(ValueError, match="shape"):
        M.evaluate(s, np.zeros((4, 2), int), ["a", "b", "c"])
    with pytest.raises(ValueError, match="2-D"):
        M.evaluate(np.zeros(4), np.zeros(4, int), ["a"])
    with pytest.raises(ValueError, match="names"):
        M.evaluate(s, np.zeros((4, 3), int), ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        M.mean_average_precision(s, np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="shape"):
        M.threshold_metrics(s, np.zeros((4, 4), int))
    with pytest.raises(ValueError):
        M.average_precision([0.1, 0.2], [1])
