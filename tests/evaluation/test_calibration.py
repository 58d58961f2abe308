from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import pytest

from cesagram.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    logits_from_probabilities,
    reliability_curve,
)

# Eight predictions, 4 bins of width 0.25 (edges exact in binary floating point):
#   [0, .25)   p 0.1 0.2      y 0 0    frac 0    mean 0.15 gap 0.15   weight 2/8
#   [.25, .5)  p 0.3          y 1      frac 1    mean 0.3  gap 0.7    weight 1/8
#   [.5, .75)  p 0.6 0.7 0.5  y 1 0 1  frac 2/3  mean 0.6  gap 1/15   weight 3/8
#              (0.5 sits on an edge: bins are [lower, upper), so it goes up)
#   [.75, 1]   p 0.9 1.0      y 1 1    frac 1    mean 0.95 gap 0.05   weight 2/8
#              (1.0 falls in the last, closed bin)
#   ECE = (2 x 0.15 + 1 x 0.7 + 3 x 1/15 + 2 x 0.05) / 8 = (0.3 + 0.7 + 0.2 + 0.1) / 8 = 0.1625
HAND_PROB = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9, 1.0, 0.5])
HAND_TRUE = np.array([0, 0, 1, 1, 0, 1, 1, 1])


def sigmoid(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def test_ece_matches_hand_computation() -> None:
    assert expected_calibration_error(HAND_TRUE, HAND_PROB, n_bins=4) == pytest.approx(0.1625)


def test_reliability_curve_matches_hand_computation() -> None:
    curve = reliability_curve(HAND_TRUE, HAND_PROB, n_bins=4)
    assert curve["bin_lower"] == [0.0, 0.25, 0.5, 0.75]
    assert curve["bin_upper"] == [0.25, 0.5, 0.75, 1.0]
    assert curve["mean_probability"] == pytest.approx([0.15, 0.3, 0.6, 0.95])
    assert curve["fraction_positive"] == pytest.approx([0.0, 1.0, 2 / 3, 1.0])
    assert curve["count"] == [2.0, 1.0, 3.0, 2.0]


def test_reliability_curve_skips_empty_bins() -> None:
    # 15 bins; only [0.2, 0.2667) and the last bin [0.9333, 1] are filled.
    curve = reliability_curve([0, 1, 1], [0.25, 0.95, 1.0])
    assert curve["count"] == [1.0, 2.0]
    assert curve["bin_lower"] == pytest.approx([3 / 15, 14 / 15])
    assert curve["bin_upper"] == pytest.approx([4 / 15, 1.0])


def test_perfect_calibration_scores_zero() -> None:
    # Within each bin the fraction of positives equals the predicted probability exactly.
    y_prob = [0.25] * 4 + [0.75] * 4
    y_true = [1, 0, 0, 0, 1, 1, 1, 0]
    assert expected_calibration_error(y_true, y_prob) == pytest.approx(0.0, abs=1e-12)


def test_labels_drawn_from_the_scores_are_nearly_calibrated() -> None:
    rng = np.random.default_rng(7)
    y_prob = rng.uniform(size=50_000)
    y_true = (rng.uniform(size=y_prob.size) < y_prob).astype(int)
    assert expected_calibration_error(y_true, y_prob) < 0.015


def test_multilabel_matrix_is_flattened() -> None:
    # Every (sample, label) cell is one decision: a 4 x 2 matrix equals the 8 flat predictions.
    matrix_true = HAND_TRUE.reshape(4, 2)
    matrix_prob = HAND_PROB.reshape(4, 2)
    assert expected_calibration_error(matrix_true, matrix_prob, n_bins=4) == pytest.approx(0.1625)
    assert reliability_curve(matrix_true, matrix_prob, n_bins=4) == reliability_curve(
        HAND_TRUE, HAND_PROB, n_bins=4
    )


def test_probability_one_falls_in_the_last_bin() -> None:
    assert expected_calibration_error([1], [1.0]) == 0.0
    assert expected_calibration_error([0], [1.0]) == 1.0
    assert expected_calibration_error([0], [0.0]) == 0.0
    curve = reliability_curve([1, 0], [1.0, 0.0], n_bins=10)
    assert curve["bin_upper"] == [0.1, 1.0]
    assert curve["count"] == [1.0, 1.0]


def test_logits_from_probabilities_clips_the_extremes() -> None:
    logits = logits_from_probabilities([0.0, 0.5, 1.0, 0.8])
    assert np.isfinite(logits).all()
    assert logits[1] == pytest.approx(0.0)
    assert logits[0] == pytest.approx(-logits[2])
    assert logits[0] == pytest.approx(np.log(1e-7 / (1 - 1e-7)))
    assert logits[3] == pytest.approx(np.log(4.0))
    assert apply_temperature(logits[1:], 1.0)[1:] == pytest.approx([1 - 1e-7, 0.8])


def test_fit_temperature_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 4.0, size=20_000)
    y = (rng.uniform(size=z.size) < sigmoid(z / 2.5)).astype(int)
    assert fit_temperature(z, y) == pytest.approx(2.5, abs=0.3)


def test_fit_temperature_shares_one_temperature_across_columns() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 4.0, size=(10_000, 3))
    y = (rng.uniform(size=z.shape) < sigmoid(z / 0.5)).astype(int)
    temperature = fit_temperature(z, y)
    assert temperature == pytest.approx(0.5, abs=0.1)
    assert temperature == pytest.approx(fit_temperature(z.ravel(), y.ravel()))


def test_temperature_scaling_lowers_ece_of_overconfident_scores() -> None:
    # True risk sigmoid(z); the model reports sigmoid(3 z): right ranking, far too confident.
    rng = np.random.default_rng(3)
    z = rng.normal(0.0, 2.0, size=20_000)
    y = (rng.uniform(size=z.size) < sigmoid(z)).astype(int)
    overconfident = sigmoid(3.0 * z)
    # Fit on one half, measure on the other, as on validation and test splits.
    fit, held_out = slice(0, 10_000), slice(10_000, None)
    temperature = fit_temperature(logits_from_probabilities(overconfident[fit]), y[fit])
    assert temperature == pytest.approx(3.0, abs=0.4)
    calibrated = apply_temperature(logits_from_probabilities(overconfident[held_out]), temperature)
    before = expected_calibration_error(y[held_out], overconfident[held_out])
    after = expected_calibration_error(y[held_out], calibrated)
    assert before > 0.1
    assert after < 0.03
    # Temperature preserves the ranking (ties aside: saturated scores and clipping make some).
    order = np.argsort(overconfident[held_out], kind="stable")
    assert (np.diff(calibrated[order]) >= 0).all()


def test_single_class_falls_back_to_one(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cesagram.evaluation.calibration"):
        assert fit_temperature([0.3, -1.2, 2.0], [0, 0, 0]) == 1.0
    assert "temperature is undefined" in caplog.text


def test_apply_temperature_divides_logits() -> None:
    assert apply_temperature([0.0, 2.0], 2.0) == pytest.approx([0.5, sigmoid(np.array(1.0))])
    assert apply_temperature(np.zeros((2, 3)), 1.5).shape == (2, 3)


def test_input_errors_name_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"y_prob must have shape \(3,\) like y_true; got \(2,\)"):
        expected_calibration_error([0, 1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match=r"y_true must hold only 0 and 1; found \[2\]"):
        expected_calibration_error([0, 2], [0.2, 0.3])
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]; found \[1.2\]"):
        expected_calibration_error([0, 1], [0.2, 1.2])
    with pytest.raises(ValueError, match="NaN or infinite"):
        reliability_curve([0, 1], [0.2, float("nan")])
    with pytest.raises(ValueError, match="y_true is empty"):
        expected_calibration_error([], [])
    with pytest.raises(ValueError, match=r"1-D \(binary\) or 2-D"):
        expected_calibration_error(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="n_bins must be a whole number >= 1; got 0"):
        expected_calibration_error([0, 1], [0.2, 0.3], n_bins=0)
    with pytest.raises(ValueError, match=r"p must hold probabilities in \[0, 1\]"):
        logits_from_probabilities([-0.1])
    with pytest.raises(ValueError, match=r"logits must have shape \(2,\)"):
        fit_temperature([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="logits holds 1 NaN"):
        fit_temperature([0.1, float("inf")], [0, 1])
    with pytest.raises(ValueError, match="temperature must be a finite number > 0; got 0"):
        apply_temperature([0.1], 0.0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        apply_temperature([0.1], float("nan"))
