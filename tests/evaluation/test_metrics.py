from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from cesagram.evaluation.metrics import (
    best_threshold,
    best_thresholds_per_indicator,
    indicator_metrics,
    risk_metrics,
)
from cesagram.taxonomy import INDICATOR_IDS

# Six conversations, threshold 0.5. Flagged: the first two (0.9, 0.8); 0.4 and below are not.
#   TP = 2 (0.9, 0.8), FN = 1 (0.3), FP = 0, TN = 3
#   precision = 2/2 = 1, recall = 2/3
#   F1   = 2 P R / (P + R)               = (4/3) / (5/3)            = 4/5
#   F0.5 = 1.25 P R / (0.25 P + R)       = (5/6) / (1/4 + 2/3)      = 10/11
#   AUROC: of 9 (positive, negative) pairs, only (0.3, 0.4) is ranked wrongly -> 8/9
#   AUPRC (average precision): positives at ranks 1, 2, 4 with precision 1, 1, 3/4 -> 11/12
RISK_TRUE = np.array([1, 1, 1, 0, 0, 0])
RISK_PROB = np.array([0.9, 0.8, 0.3, 0.4, 0.2, 0.1])

# Four messages, four labels, threshold 0.5:
#   a: true [1,1,0,0] pred [1,0,1,0] -> TP 1 FP 1 FN 1 -> P 1/2, R 1/2, F1 1/2, support 2
#   b: true [0,1,0,1] pred [0,1,0,1] -> P 1, R 1, F1 1, support 2
#   c: true [0,0,0,0] pred [0,0,0,1] -> a false alarm: P 0, R 0, F1 0, support 0 (F1 defined)
#   d: true [0,0,0,0] pred [0,0,0,0] -> 0/0, counted as 0 (zero_division=0), F1 undefined
#   macro_f1 = (1/2 + 1 + 0 + 0) / 4 = 3/8; macro_f1_supported (a, b, c) = 3/2 / 3 = 1/2
#   micro: TP 3, FP 2, FN 1 -> F1 = 2*3 / (2*3 + 2 + 1) = 2/3
LABELS = ("a", "b", "c", "d")
MULTI_TRUE = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
MULTI_PROB = np.array(
    [
        [0.9, 0.2, 0.1, 0.0],
        [0.4, 0.7, 0.1, 0.0],
        [0.6, 0.1, 0.1, 0.0],
        [0.1, 0.8, 0.6, 0.0],
    ]
)


def test_risk_metrics_match_hand_computation() -> None:
    result = risk_metrics(RISK_TRUE, RISK_PROB, threshold=0.5)
    assert result == pytest.approx(
        {
            "auroc": 8 / 9,
            "auprc": 11 / 12,
            "f1": 4 / 5,
            "f05": 10 / 11,
            "precision": 1.0,
            "recall": 2 / 3,
            "threshold": 0.5,
            "positives": 3.0,
            "predicted_positives": 2.0,
            "n": 6.0,
        }
    )
    assert all(type(value) is float for value in result.values())


def test_risk_threshold_is_inclusive() -> None:
    # 0.8 itself is flagged: the rule is score >= threshold.
    assert risk_metrics(RISK_TRUE, RISK_PROB, threshold=0.8)["predicted_positives"] == 2.0


@pytest.mark.parametrize("label", [0, 1])
def test_risk_metrics_single_class_gives_nan_and_warns(
    label: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cesagram.evaluation.metrics"):
        result = risk_metrics(np.full(4, label), np.array([0.1, 0.4, 0.6, 0.9]))
    assert math.isnan(result["auroc"])
    assert math.isnan(result["auprc"])
    assert result["positives"] == 4.0 * label
    assert result["recall"] == 0.5 * label  # two of four flagged
    assert "undefined" in caplog.text


def test_indicator_metrics_match_hand_computation() -> None:
    result = indicator_metrics(MULTI_TRUE, MULTI_PROB, label_names=LABELS)
    expected_per_label = {
        "a": (0.5, 0.5, 0.5, 2.0),
        "b": (1.0, 1.0, 1.0, 2.0),
        "c": (0.0, 0.0, 0.0, 0.0),
        "d": (0.0, 0.0, 0.0, 0.0),
    }
    for name, (precision, recall, f1, support) in expected_per_label.items():
        assert result[f"precision/{name}"] == pytest.approx(precision)
        assert result[f"recall/{name}"] == pytest.approx(recall)
        assert result[f"f1/{name}"] == pytest.approx(f1)
        assert result[f"support/{name}"] == support
    assert result["macro_f1"] == pytest.approx(3 / 8)
    assert result["macro_f1_supported"] == pytest.approx(1 / 2)
    assert result["micro_f1"] == pytest.approx(2 / 3)
    assert result["samples_with_any_label"] == 3.0
    assert result["n"] == 4.0


def test_indicator_metrics_per_label_thresholds() -> None:
    # a at 0.95 predicts nothing (F1 0, still defined: a has positives); c at 0.7 predicts
    # nothing, so c joins d as undefined and leaves macro_f1_supported: (0 + 1) / 2.
    result = indicator_metrics(
        MULTI_TRUE, MULTI_PROB, thresholds=np.array([0.95, 0.5, 0.7, 0.5]), label_names=LABELS
    )
    assert result["f1/a"] == 0.0
    assert result["recall/a"] == 0.0
    assert result["f1/b"] == 1.0
    assert result["macro_f1"] == pytest.approx(1 / 4)
    assert result["macro_f1_supported"] == pytest.approx(1 / 2)
    # micro: TP 2 (b), FP 0, FN 2 (a) -> 4 / (4 + 0 + 2)
    assert result["micro_f1"] == pytest.approx(2 / 3)


def test_indicator_metrics_default_keys_cover_the_taxonomy() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, size=(20, len(INDICATOR_IDS)))
    result = indicator_metrics(y_true, rng.random((20, len(INDICATOR_IDS))))
    per_label = {
        f"{m}/{i}" for m in ("precision", "recall", "f1", "support") for i in INDICATOR_IDS
    }
    totals = {"macro_f1", "macro_f1_supported", "micro_f1", "samples_with_any_label", "n"}
    assert set(result) == per_label | totals
    assert all(type(value) is float for value in result.values())


def test_indicator_metrics_without_any_label_or_prediction() -> None:
    result = indicator_metrics(np.zeros((3, 4)), np.zeros((3, 4)), label_names=LABELS)
    assert result["macro_f1"] == 0.0
    assert math.isnan(result["macro_f1_supported"])
    assert result["micro_f1"] == 0.0


@pytest.mark.parametrize(
    ("y_true", "y_prob", "message"),
    [
        (np.zeros((0, 4)), np.zeros((0, 4)), "empty"),
        (np.zeros((3, 4)), np.zeros((3, 3)), "shape"),
        (np.zeros((3, 3)), np.zeros((3, 3)), "3 label columns"),
        (np.full((3, 4), 2), np.zeros((3, 4)), r"only 0 and 1; found \[2\]"),
        (np.zeros(4), np.zeros(4), "2 dimension"),
        (np.zeros((3, 4)), np.full((3, 4), np.nan), "NaN"),
    ],
)
def test_indicator_metrics_rejects_bad_input(
    y_true: np.ndarray, y_prob: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        indicator_metrics(y_true, y_prob, label_names=LABELS)


def test_indicator_metrics_rejects_wrong_threshold_count() -> None:
    with pytest.raises(ValueError, match="one per label"):
        indicator_metrics(MULTI_TRUE, MULTI_PROB, thresholds=[0.5, 0.5], label_names=LABELS)


def test_best_threshold_depends_on_beta() -> None:
    # Candidates on RISK_*: 0.9 -> P 1, R 1/3; 0.8 -> P 1, R 2/3; 0.4 -> P 2/3, R 2/3;
    # 0.3 -> P 3/4, R 1; 0.2 -> P 3/5, R 1; 0.1 -> P 1/2, R 1.
    # F0.5 is best at 0.8 (10/11); F1 is best at 0.3 (2 * 3/4 / (7/4) = 6/7, against 4/5 at 0.8).
    assert best_threshold(RISK_TRUE, RISK_PROB) == 0.8
    assert best_threshold(RISK_TRUE, RISK_PROB, beta=1.0) == 0.3
    chosen = best_threshold(RISK_TRUE, RISK_PROB)
    assert risk_metrics(RISK_TRUE, RISK_PROB, threshold=chosen)["f05"] == pytest.approx(10 / 11)


def test_best_threshold_breaks_ties_towards_the_higher_threshold() -> None:
    # F1 at 0.9: P 1, R 1/2 -> 2/3; at 0.6: P 1/2, R 1 -> 2/3 (0.8 and 0.7 score less).
    assert best_threshold([1, 0, 0, 1], [0.9, 0.8, 0.7, 0.6], beta=1.0) == 0.9


def test_best_threshold_without_positives_uses_default(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cesagram.evaluation.metrics"):
        assert best_threshold([0, 0, 0], [0.1, 0.5, 0.9], default=0.42) == 0.42
    assert "no positives" in caplog.text


def test_best_threshold_rejects_non_positive_beta() -> None:
    with pytest.raises(ValueError, match="beta"):
        best_threshold(RISK_TRUE, RISK_PROB, beta=0.0)


def test_best_thresholds_per_indicator(caplog: pytest.LogCaptureFixture) -> None:
    y_true = np.column_stack([RISK_TRUE, [1, 0, 0, 1, 0, 0], np.zeros(6)])
    y_prob = np.column_stack([RISK_PROB, [0.9, 0.8, 0.7, 0.6, 0.1, 0.1], RISK_PROB])
    with caplog.at_level(logging.WARNING, logger="cesagram.evaluation.metrics"):
        thresholds = best_thresholds_per_indicator(y_true, y_prob, label_names=("x", "y", "z"))
    np.testing.assert_array_equal(thresholds, [0.3, 0.9, 0.5])
    assert "no positives for z" in caplog.text
    assert "for x" not in caplog.text
    # The chosen thresholds plug straight into indicator_metrics.
    result = indicator_metrics(y_true, y_prob, thresholds=thresholds, label_names=("x", "y", "z"))
    assert result["f1/x"] == pytest.approx(6 / 7)
