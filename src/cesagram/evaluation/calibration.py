"""Calibration: do the scores mean what they say, and temperature scaling to make them.

Reviewers read a score of 0.8 as "80 % of such conversations are risky"; that only holds for a
calibrated model. This module measures calibration and fixes it with one parameter.

**Expected calibration error (binary reliability).** Every decision is one binary prediction:
a 1-D ``y_true``/``y_prob`` pair holds one decision per sample, a 2-D multi-label matrix holds one
per (sample, label) cell and is flattened, so all indicators share one reliability diagram. The
predicted probabilities are put in ``n_bins`` equal-width bins on [0, 1]; bin ``i`` is
``[i / n_bins, (i + 1) / n_bins)`` except the last, which is closed, so a probability of
exactly 1.0 falls in it. Then::

    ECE = sum over non-empty bins b of (|b| / n) * |fraction of positives in b - mean p in b|

This is the binary (per-decision) reliability ECE, not the top-label "confidence" ECE of
multi-class classifiers: a prediction of 0.1 that turns out negative is well calibrated, not a
90 %-confident correct answer.

**Temperature scaling** (Guo et al. 2017). One temperature ``T > 0`` divides the logits:
``p = sigmoid(logit / T)``. ``T > 1`` softens over-confident scores, ``T < 1`` sharpens
under-confident ones; the ranking, hence AUROC and AUPRC, is unchanged. Fit ``T`` on validation
data, never on the test split. The models here output probabilities; `logits_from_probabilities`
turns them back into logits first.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import numpy.typing as npt

# scipy ships no type information; it comes with scikit-learn, a direct dependency.
from scipy import optimize, special  # type: ignore[import-untyped]

logger = logging.getLogger(__name__)

DEFAULT_BINS = 15
# Clipping keeps log-odds finite for scores of exactly 0 or 1 (|logit| <= ~16.1).
PROBABILITY_EPSILON = 1e-7
# The search range for T: wide enough for any realistic miscalibration; a fit on the edge means
# the data are (nearly) separable and the optimum is unbounded, which is logged.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def expected_calibration_error(
    y_true: npt.ArrayLike, y_prob: npt.ArrayLike, n_bins: int = DEFAULT_BINS
) -> float:
    """Expected calibration error over ``n_bins`` equal-width probability bins.

    See the module docstring for the definition (binary reliability; 2-D input is flattened).

    Args:
        y_true: 0/1 labels, shape ``[n]`` or ``[n, labels]``.
        y_prob: predicted probabilities in [0, 1], same shape.
        n_bins: number of equal-width bins on [0, 1].

    Returns:
        The ECE, in [0, 1]; 0 for perfect calibration.

    Raises:
        ValueError: on empty input, mismatched shapes, more than two dimensions, labels other
            than 0/1, probabilities outside [0, 1] or non-finite, or ``n_bins < 1``.
    """
    truth, probabilities = _flat_pair(y_true, y_prob, n_bins)
    counts, positives, probability_sums = _bin_statistics(truth, probabilities, n_bins)
    filled = counts > 0
    gaps = np.abs(positives[filled] - probability_sums[filled]) / counts[filled]
    return float(np.sum(counts[filled] / truth.size * gaps))


def reliability_curve(
    y_true: npt.ArrayLike, y_prob: npt.ArrayLike, n_bins: int = DEFAULT_BINS
) -> dict[str, list[float]]:
    """The points of a reliability diagram, with the same bins as `expected_calibration_error`.

    Args:
        y_true: 0/1 labels, shape ``[n]`` or ``[n, labels]`` (flattened).
        y_prob: predicted probabilities in [0, 1], same shape.
        n_bins: number of equal-width bins on [0, 1].

    Returns:
        Lists of equal length, one entry per **non-empty** bin, in increasing order:
        ``bin_lower``, ``bin_upper`` (the bin's edges), ``mean_probability`` (x axis),
        ``fraction_positive`` (y axis; on the diagonal when calibrated) and ``count`` (decisions
        in the bin, to size markers or show where the evidence is thin).

    Raises:
        ValueError: as `expected_calibration_error`.
    """
    truth, probabilities = _flat_pair(y_true, y_prob, n_bins)
    counts, positives, probability_sums = _bin_statistics(truth, probabilities, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    filled = np.flatnonzero(counts > 0)
    return {
        "bin_lower": edges[filled].tolist(),
        "bin_upper": edges[filled + 1].tolist(),
        "mean_probability": (probability_sums[filled] / counts[filled]).tolist(),
        "fraction_positive": (positives[filled] / counts[filled]).tolist(),
        "count": counts[filled].astype(np.float64).tolist(),
    }


def logits_from_probabilities(p: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Log-odds ``log(p / (1 - p))`` of probabilities, clipped to [1e-7, 1 - 1e-7] first.

    Args:
        p: probabilities in [0, 1], any shape.

    Returns:
        Finite logits of the same shape.

    Raises:
        ValueError: on probabilities outside [0, 1] or non-finite.
    """
    probabilities = _probabilities(p, "p")
    clipped = np.clip(probabilities, PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
    return np.asarray(special.logit(clipped), dtype=np.float64)


def fit_temperature(logits: npt.ArrayLike, y_true: npt.ArrayLike) -> float:
    """The temperature ``T`` minimising the binary cross-entropy of ``sigmoid(logits / T)``.

    One ``T`` is shared by all columns of a 2-D (multi-label) input, like the ECE's pooling.
    The search runs over ``log T`` (scipy's bounded scalar minimiser) so that halving and
    doubling ``T`` are equally easy steps, within `TEMPERATURE_BOUNDS`.

    Args:
        logits: logits, shape ``[n]`` or ``[n, labels]``; from probabilities use
            `logits_from_probabilities`.
        y_true: 0/1 labels of the same shape.

    Returns:
        The fitted temperature. 1.0 (no change), with a logged warning, when ``y_true`` holds a
        single class: the cross-entropy then keeps falling as the scores are pushed to that
        class, so no finite temperature is the optimum.

    Raises:
        ValueError: on empty input, mismatched shapes, more than two dimensions, labels other
            than 0/1 or non-finite logits.
        RuntimeError: if the optimiser reports failure.
    """
    truth = _labels(y_true, "y_true")
    values = _logits(logits, "logits", shape=truth.shape)
    flat_truth = truth.ravel().astype(np.float64)
    flat_logits = values.ravel()
    if flat_truth.min() == flat_truth.max():
        logger.warning(
            "fit_temperature: all %d labels are %d; temperature is undefined, using 1.0",
            flat_truth.size,
            int(flat_truth[0]),
        )
        return 1.0

    def cross_entropy(log_temperature: float) -> float:
        scaled = flat_logits / math.exp(log_temperature)
        # -[y log s(x) + (1 - y) log(1 - s(x))] = log(1 + e^x) - y x, stable for any x.
        return float(np.mean(np.logaddexp(0.0, scaled) - flat_truth * scaled))

    low, high = TEMPERATURE_BOUNDS
    result = optimize.minimize_scalar(
        cross_entropy, bounds=(math.log(low), math.log(high)), method="bounded"
    )
    if not result.success:
        raise RuntimeError(f"fit_temperature: the optimiser failed: {result.message}")
    temperature = math.exp(float(result.x))
    if not low * 1.01 < temperature < high * 0.99:
        logger.warning(
            "fit_temperature: T = %.4g is at the edge of the search range %s; the data may be "
            "(nearly) separable or the logits degenerate",
            temperature,
            TEMPERATURE_BOUNDS,
        )
    logger.info("fit_temperature: T = %.4g on %d decisions", temperature, flat_truth.size)
    return temperature


def apply_temperature(logits: npt.ArrayLike, temperature: float) -> npt.NDArray[np.float64]:
    """Calibrated probabilities ``sigmoid(logits / temperature)``.

    Args:
        logits: logits, any shape.
        temperature: ``T > 0``, e.g. from `fit_temperature`.

    Returns:
        Probabilities of the logits' shape.

    Raises:
        ValueError: on non-finite logits or a temperature that is not a finite positive number.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature}")
    values = _logits(logits, "logits", shape=None)
    return np.asarray(special.expit(values / temperature), dtype=np.float64)


def _bin_statistics(
    truth: npt.NDArray[np.int8], probabilities: npt.NDArray[np.float64], n_bins: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per bin: decision count, positive count and the sum of predicted probabilities."""
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    # side="right" puts a value on an inner edge in the upper bin ([lower, upper)); 1.0 lies
    # beyond every inner edge, so it lands in the last bin.
    bins = np.searchsorted(inner_edges, probabilities, side="right")
    counts = np.bincount(bins, minlength=n_bins).astype(np.int64)
    positives = np.bincount(bins, weights=truth, minlength=n_bins).astype(np.float64)
    probability_sums = np.bincount(bins, weights=probabilities, minlength=n_bins).astype(np.float64)
    return counts, positives, probability_sums


def _flat_pair(
    y_true: npt.ArrayLike, y_prob: npt.ArrayLike, n_bins: int
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float64]]:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a whole number >= 1; got {n_bins!r}")
    truth = _labels(y_true, "y_true")
    probabilities = _probabilities(y_prob, "y_prob")
    if probabilities.shape != truth.shape:
        raise ValueError(
            f"y_prob must have shape {truth.shape} like y_true; got {probabilities.shape}"
        )
    return truth.ravel(), probabilities.ravel()


def _labels(values: npt.ArrayLike, name: str) -> npt.NDArray[np.int8]:
    array = np.asarray(values)
    if array.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be 1-D (binary) or 2-D (multi-label); got shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty: there is nothing to calibrate")
    if array.dtype != np.bool_ and not np.isin(array, (0, 1)).all():
        found = np.unique(array[~np.isin(array, (0, 1))])[:5]
        raise ValueError(f"{name} must hold only 0 and 1; found {found.tolist()}")
    return array.astype(np.int8)


def _probabilities(values: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(
            f"{name} holds {np.count_nonzero(~np.isfinite(array))} NaN or infinite value(s)"
        )
    outside = (array < 0.0) | (array > 1.0)
    if outside.any():
        found = np.unique(array[outside])[:5]
        raise ValueError(
            f"{name} must hold probabilities in [0, 1]; found {found.tolist()} "
            "(pass logits through apply_temperature or a sigmoid first)"
        )
    return array


def _logits(
    values: npt.ArrayLike, name: str, *, shape: tuple[int, ...] | None
) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} must have shape {shape} like y_true; got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(
            f"{name} holds {np.count_nonzero(~np.isfinite(array))} NaN or infinite value(s)"
        )
    return array
