from __future__ import annotations

import math

import numpy as np
import pytest

from cesagram.evaluation.early import (
    DEFAULT_SKEPTICISM,
    ESPD_HISTORY,
    PENALTY_P,
    early_detection_by_skepticism,
    early_detection_metrics,
    latencies,
    penalty,
    warning_latency,
)

# Four conversations, threshold 0.5 (positive when score >= 0.5):
#   A (risk 1): 0.9 0.2 0.7 0.8 -> positive 1 0 1 1 -> running counts 1 1 2 3
#   B (risk 1): 0.1 0.3 0.6     -> positive 0 0 1   -> running counts 0 0 1
#   C (risk 0): 0.5 0.4 0.1 0.2 -> positive 1 0 0 0 -> running counts 1 1 1 1 (0.5 is a tie: >=)
#   D (risk 0): 0.6 0.7 0.1     -> positive 1 1 0   -> running counts 1 2 2
# All are shorter than 10 messages, so every window is "the scores so far".
#   skepticism 1: A k=1 (TP), B k=3 (TP), C k=1 (FP), D k=1 (FP)
#   skepticism 2: A k=3 (TP), B none (FN), C none (TN), D k=2 (FP)
CONVERSATIONS = [
    [0.9, 0.2, 0.7, 0.8],
    [0.1, 0.3, 0.6],
    [0.5, 0.4, 0.1, 0.2],
    [0.6, 0.7, 0.1],
]
LABELS = [1, 1, 0, 0]
LATENCIES_S1 = [1, 3, 1, 1]
LATENCIES_S2 = [3, None, None, 2]

# penalty(3) = -1 + 2 / (1 + exp(-2p)) with p = ln 3 / 89 = 0.0123439583; = 0.0123433314
PENALTY_3 = 0.012343331374605082


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# skepticism 1: TP 2, FP 2, FN 0
#   precision = 2/4 = 1/2, recall = 2/2 = 1, F1 = 2 (1/2)(1) / (3/2) = 2/3
#   TP latencies 1, 3 -> penalties 0, 0.0123433 -> median 0.0061717 -> speed 0.9938283
#   F_latency = 2/3 x 0.9938283 = 0.6625522
#   c_fp = 2 positive / 4 conversations = 1/2; ERDE costs: A 1 - 1/(1+e^(1-o)) = sigmoid(1-o),
#   B sigmoid(3-o), C 1/2, D 1/2
#   ERDE_5  = (sigmoid(-4) + sigmoid(-2) + 1) / 4 = (0.0179862 + 0.1192029 + 1) / 4 = 0.2842973
#   ERDE_50 = (sigmoid(-49) + sigmoid(-47) + 1) / 4 = (5e-22 + 4e-21 + 1) / 4 = 0.25
EXPECTED_S1 = {
    "precision": 0.5,
    "recall": 1.0,
    "f1": 2 / 3,
    "speed": 1 - PENALTY_3 / 2,
    "f_latency": 2 / 3 * (1 - PENALTY_3 / 2),
    "erde_5": (sigmoid(-4) + sigmoid(-2) + 1) / 4,
    "erde_50": 0.25,
    "median_latency": 2.0,
    "warnings": 4.0,
    "true_positives": 2.0,
    "n": 4.0,
}
# skepticism 2: TP 1 (A), FN 1 (B), TN 1 (C), FP 1 (D)
#   precision = 1/2, recall = 1/2, F1 = 1/2
#   TP latencies 3 -> speed = 1 - 0.0123433 = 0.9876567; F_latency = 0.4938283
#   ERDE_5  = (sigmoid(3-5) + 1 + 0 + 1/2) / 4 = (0.1192029 + 1.5) / 4 = 0.4048007
#   ERDE_50 = (sigmoid(-47) + 1.5) / 4 = 0.375
EXPECTED_S2 = {
    "precision": 0.5,
    "recall": 0.5,
    "f1": 0.5,
    "speed": 1 - PENALTY_3,
    "f_latency": 0.5 * (1 - PENALTY_3),
    "erde_5": (sigmoid(-2) + 1.5) / 4,
    "erde_50": 0.375,
    "median_latency": 3.0,
    "warnings": 2.0,
    "true_positives": 1.0,
    "n": 4.0,
}


def test_constants() -> None:
    assert ESPD_HISTORY == 10
    assert DEFAULT_SKEPTICISM == 5
    assert math.log(3) / 89 == PENALTY_P


def test_penalty_anchor_points() -> None:
    assert penalty(1) == pytest.approx(0.0, abs=1e-12)
    assert penalty(90) == pytest.approx(0.5, abs=1e-12)
    assert penalty(3) == pytest.approx(PENALTY_3, abs=1e-12)
    assert isinstance(penalty(5), float)


def test_penalty_is_vectorised_and_increasing() -> None:
    values = penalty([1, 3, 90, 10_000])
    assert isinstance(values, np.ndarray)
    assert values == pytest.approx([0.0, PENALTY_3, 0.5, 1.0], abs=1e-12)
    assert penalty(np.array([[1, 90]])).shape == (1, 2)  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [0, -3, [1, 0.5], float("nan")])
def test_penalty_rejects_latency_below_one(bad: object) -> None:
    with pytest.raises(ValueError, match="latency k"):
        penalty(bad)  # type: ignore[arg-type]


def test_latencies_match_hand_computation() -> None:
    assert latencies(CONVERSATIONS, 0.5, skepticism=1) == LATENCIES_S1
    assert latencies(CONVERSATIONS, 0.5, skepticism=2) == LATENCIES_S2
    for scores, s1, s2 in zip(CONVERSATIONS, LATENCIES_S1, LATENCIES_S2, strict=True):
        assert warning_latency(scores, 0.5, skepticism=1) == s1
        assert warning_latency(scores, 0.5, skepticism=2) == s2


def test_metrics_match_hand_computation() -> None:
    assert early_detection_metrics(LATENCIES_S1, LABELS) == pytest.approx(EXPECTED_S1)
    assert early_detection_metrics(LATENCIES_S2, LABELS) == pytest.approx(EXPECTED_S2)
    # The arithmetic in the comments, as numbers, so a formula typo cannot cancel itself out.
    result = early_detection_metrics(LATENCIES_S1, LABELS)
    assert result["speed"] == pytest.approx(0.9938283343, abs=1e-9)
    assert result["erde_5"] == pytest.approx(0.2842972830, abs=1e-9)


def test_by_skepticism_matches_metrics_per_value() -> None:
    curve = early_detection_by_skepticism(CONVERSATIONS, LABELS, 0.5, skepticisms=[2, 1])
    assert list(curve) == [2, 1]
    assert curve[1] == pytest.approx(EXPECTED_S1)
    assert curve[2] == pytest.approx(EXPECTED_S2)


def test_by_skepticism_defaults_to_one_through_ten() -> None:
    curve = early_detection_by_skepticism(CONVERSATIONS, LABELS, 0.5)
    assert list(curve) == list(range(1, 11))
    # Only A has three positives (firing at message 4 with skepticism 3); no conversation has
    # four, so from skepticism 4 on nothing fires.
    assert curve[3]["warnings"] == 1.0
    assert curve[3]["median_latency"] == 4.0
    assert curve[4]["warnings"] == 0.0
    assert curve[10]["recall"] == 0.0


def test_fewer_than_history_scores_at_the_start() -> None:
    # The window at message k < 10 holds only k scores: all positive fires exactly at k = s.
    assert warning_latency([0.9] * 12, 0.5, skepticism=5) == 5
    assert warning_latency([0.9] * 12, 0.5, skepticism=10) == 10
    assert warning_latency([0.9, 0.9, 0.9], 0.5, skepticism=3) == 3
    # Too short to ever hold s scores: no warning.
    assert warning_latency([0.9, 0.9, 0.9], 0.5, skepticism=4) is None


def test_window_slides_over_the_last_ten_scores() -> None:
    # Positive at messages 1-4 and 11-15. A running total would reach 5 at message 11, but the
    # last-10 window after message 11 covers messages 2-11 (4 positives: 2, 3, 4, 11), after 14
    # covers 5-14 (4 positives: 11-14), and only after 15 covers 6-15 with 5 positives.
    scores = [0.9] * 4 + [0.1] * 6 + [0.9] * 5
    assert warning_latency(scores, 0.5, skepticism=5) == 15
    assert warning_latency(scores, 0.5, skepticism=5, history=15) == 11


def test_warning_stays_raised() -> None:
    # Fires at message 5; twenty negative scores afterwards do not retract it.
    scores = [0.9] * 5 + [0.0] * 20
    assert warning_latency(scores, 0.5) == 5
    result = early_detection_metrics(latencies([scores], 0.5), [1])
    assert result["warnings"] == 1.0
    assert result["recall"] == 1.0


def test_speed_is_zero_without_true_positives() -> None:
    # One false alarm and one missed risky conversation: no true-positive latency exists.
    result = early_detection_metrics([4, None], [0, 1])
    assert result["speed"] == 0.0
    assert result["f_latency"] == 0.0
    assert result["f1"] == 0.0
    assert math.isnan(result["median_latency"])
    # c_fp = 1/2: ERDE = (1/2 + 1) / 2 for every deadline.
    assert result["erde_5"] == pytest.approx(0.75)
    assert result["erde_50"] == pytest.approx(0.75)


def test_no_warnings_on_negatives_costs_nothing() -> None:
    result = early_detection_metrics([None, None], [0, 0])
    assert result["erde_5"] == 0.0
    assert result["precision"] == 0.0
    assert result["warnings"] == 0.0


def test_very_late_true_positive_costs_almost_one() -> None:
    result = early_detection_metrics([5_000], [1])
    assert result["erde_50"] == pytest.approx(1.0)
    assert result["speed"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("skepticism", [0, 11, 2.5, True])
def test_skepticism_must_be_in_range(skepticism: object) -> None:
    with pytest.raises(ValueError, match=r"skepticism must be a whole number in 1\.\.10"):
        warning_latency([0.9], 0.5, skepticism=skepticism)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="skepticism"):
        latencies([[0.9]], 0.5, skepticism=skepticism)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="skepticism"):
        early_detection_by_skepticism([[0.9]], [1], 0.5, skepticisms=[1, skepticism])  # type: ignore[list-item]


def test_input_errors_name_what_was_expected() -> None:
    with pytest.raises(ValueError, match="scores is empty"):
        warning_latency([], 0.5)
    with pytest.raises(ValueError, match=r"conversation_scores\[1\] holds 1 NaN"):
        latencies([[0.9], [0.1, float("nan")]], 0.5)
    with pytest.raises(ValueError, match=r"conversation_scores\[0\] must be one score"):
        latencies([[[0.9]]], 0.5)
    with pytest.raises(ValueError, match="conversation_scores is empty"):
        latencies([], 0.5)
    with pytest.raises(ValueError, match="threshold must be finite"):
        warning_latency([0.9], float("inf"))
    with pytest.raises(ValueError, match="labels must hold only 0 and 1; found \\[2\\]"):
        early_detection_metrics([1, None], [1, 2])
    with pytest.raises(ValueError, match="latencies has 2 entries but labels has 3"):
        early_detection_metrics([1, None], [1, 0, 1])
    with pytest.raises(ValueError, match="labels is empty"):
        early_detection_metrics([], [])
    with pytest.raises(ValueError, match=r"latencies\[1\] must be None or a whole number"):
        early_detection_metrics([1, 0], [1, 0])
    with pytest.raises(ValueError, match=r"latencies\[0\] must be None or a whole number"):
        early_detection_metrics([2.5], [1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="conversation_scores has 4 conversations"):
        early_detection_by_skepticism(CONVERSATIONS, [1, 0], 0.5)
    with pytest.raises(ValueError, match="skepticisms is empty"):
        early_detection_by_skepticism(CONVERSATIONS, LABELS, 0.5, skepticisms=[])
