"""Message-level indicator metrics, conversation-level risk metrics and threshold choice.

Every model, transformer or baseline, is scored by these functions, so their numbers compare.
The standard metrics come from scikit-learn; this module only fixes the conventions:

- A sample is predicted positive when its score is **greater than or equal to** the threshold
  (``y_prob >= threshold``), the same rule as ``sklearn.metrics.precision_recall_curve``, so a
  threshold chosen by `best_threshold` reproduces the F-beta it was chosen for.
- Undefined precision, recall or F (a zero denominator) count as 0, scikit-learn's
  ``zero_division=0``. Reported metrics are therefore never NaN except AUROC/AUPRC on a
  single-class sample and `macro_f1_supported` when no label is present at all (see below).
- Results are plain ``dict[str, float]`` with stable keys (MLflow/DVC metric names); callers add
  their own stage prefix (``val/``, ``test/``).

Scores are normally probabilities in [0, 1] but any finite real score works; NaN or infinite
scores raise `ValueError` (a diverged model must fail loudly, not score 0).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

from cesagram.taxonomy import INDICATOR_IDS

logger = logging.getLogger(__name__)

# Scores within this distance of the best F-beta count as tied (float noise, not a real gain).
_TIE_TOLERANCE = 1e-12


def indicator_metrics(
    y_true: npt.ArrayLike,
    y_prob: npt.ArrayLike,
    thresholds: float | npt.ArrayLike = 0.5,
    label_names: Sequence[str] = INDICATOR_IDS,
) -> dict[str, float]:
    """Per-indicator and averaged precision, recall and F1 for multi-label message predictions.

    Args:
        y_true: 0/1 label matrix, shape ``[n, len(label_names)]``.
        y_prob: scores of the same shape.
        thresholds: one threshold for every label, or one per label (shape ``[len(label_names)]``,
            e.g. from `best_thresholds_per_indicator`).
        label_names: column names, in column order; the taxonomy's indicators by default.

    Returns:
        For every label ``<id>``: ``precision/<id>``, ``recall/<id>``, ``f1/<id>`` and
        ``support/<id>`` (its positives in ``y_true``). Then:

        - ``macro_f1``: the mean F1 over **all** labels. A label absent from both ``y_true`` and
          the predictions scores 0 (``zero_division=0``), so a model is not rewarded for
          indicators the evaluation data cannot test; this is the headline number.
        - ``macro_f1_supported``: the mean F1 over the labels whose F1 is defined, i.e. present
          in ``y_true`` **or** predicted at least once. Labels absent from the data but predicted
          still count (their F1 is 0: every prediction is a false alarm), so the figure never
          hides false positives; only the 0/0 labels drop out. NaN when no label is present or
          predicted anywhere.
        - ``micro_f1``: F1 over all (sample, label) decisions pooled.
        - ``samples_with_any_label``: how many samples carry at least one label in ``y_true``.
        - ``n``: number of samples.

    Raises:
        ValueError: on empty input, mismatched shapes, labels other than 0/1, non-finite scores
            or a thresholds array of the wrong length.
    """
    names = tuple(label_names)
    truth = _binary_array(y_true, "y_true", ndim=2)
    scores = _score_array(y_prob, "y_prob", shape=truth.shape)
    if truth.shape[1] != len(names):
        raise ValueError(
            f"y_true has {truth.shape[1]} label columns but {len(names)} label names were given "
            f"({', '.join(names)})"
        )
    cutoffs = _thresholds_array(thresholds, len(names))
    predicted = (scores >= cutoffs).astype(np.int8)

    columns = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=columns, average=None, zero_division=0
    )
    result: dict[str, float] = {}
    for index, name in enumerate(names):
        result[f"precision/{name}"] = float(precision[index])
        result[f"recall/{name}"] = float(recall[index])
        result[f"f1/{name}"] = float(f1[index])
        result[f"support/{name}"] = float(support[index])

    defined = (truth.sum(axis=0) > 0) | (predicted.sum(axis=0) > 0)
    result["macro_f1"] = float(np.mean(f1))
    result["macro_f1_supported"] = float(np.mean(f1[defined])) if defined.any() else float("nan")
    result["micro_f1"] = float(
        f1_score(truth, predicted, labels=columns, average="micro", zero_division=0)
    )
    result["samples_with_any_label"] = float(np.count_nonzero(truth.any(axis=1)))
    result["n"] = float(truth.shape[0])
    return result


def risk_metrics(
    y_true: npt.ArrayLike, y_prob: npt.ArrayLike, threshold: float = 0.5
) -> dict[str, float]:
    """Conversation-level risk metrics: ranking quality and decisions at one threshold.

    Args:
        y_true: 0/1 risk labels, shape ``[n]``.
        y_prob: risk scores, shape ``[n]``.
        threshold: a conversation is flagged when its score is ``>= threshold``.

    Returns:
        ``auroc``, ``auprc`` (average precision, scikit-learn's step-wise AUPRC), ``f1``,
        ``f05`` (F0.5, PAN12's ranking metric: precision weighs more than recall), ``precision``,
        ``recall``, ``threshold``, ``positives`` (in ``y_true``), ``predicted_positives`` and
        ``n``.

        When ``y_true`` holds only one class, AUROC and AUPRC are NaN and a warning is logged:
        AUROC is undefined without both classes, and AUPRC is undefined without positives and
        trivially 1 without negatives. NaN rather than an exception, because validation on tiny
        data during training must not crash; NaN also cannot be mistaken for a real score.

    Raises:
        ValueError: on empty input, mismatched shapes, labels other than 0/1 or non-finite
            scores.
    """
    truth = _binary_array(y_true, "y_true", ndim=1)
    scores = _score_array(y_prob, "y_prob", shape=truth.shape)
    _check_threshold(threshold)
    predicted = (scores >= threshold).astype(np.int8)

    positives = int(truth.sum())
    if 0 < positives < truth.size:
        auroc = float(roc_auc_score(truth, scores))
        auprc = float(average_precision_score(truth, scores))
    else:
        logger.warning(
            "risk_metrics: all %d conversations have risk %d; AUROC and AUPRC are undefined "
            "and reported as NaN",
            truth.size,
            int(truth[0]),
        )
        auroc = auprc = float("nan")

    precision, recall, f05, _ = precision_recall_fscore_support(
        truth, predicted, beta=0.5, average="binary", pos_label=1, zero_division=0
    )
    f1 = f1_score(truth, predicted, average="binary", pos_label=1, zero_division=0)
    return {
        "auroc": auroc,
        "auprc": auprc,
        "f1": float(f1),
        "f05": float(f05),
        "precision": float(precision),
        "recall": float(recall),
        "threshold": float(threshold),
        "positives": float(positives),
        "predicted_positives": float(predicted.sum()),
        "n": float(truth.size),
    }


def best_threshold(
    y_true: npt.ArrayLike, y_prob: npt.ArrayLike, beta: float = 0.5, *, default: float = 0.5
) -> float:
    """The threshold that maximises F-beta on the given data (choose it on validation data).

    Candidates are the distinct scores themselves (``y_prob >= threshold`` flags a sample), as
    in ``sklearn.metrics.precision_recall_curve``. Among thresholds with the same best F-beta the
    highest wins: fewer conversations flagged for the same quality means less reviewer work.

    Args:
        y_true: 0/1 labels, shape ``[n]``.
        y_prob: scores, shape ``[n]``.
        beta: F-beta's recall weight; 0.5 (PAN12's F0.5) favours precision, 1.0 is F1.
        default: returned, with a logged warning, when ``y_true`` has no positives (every
            threshold then scores F = 0, so the data cannot choose one).

    Raises:
        ValueError: on empty input, mismatched shapes, labels other than 0/1, non-finite scores
            or ``beta <= 0``.
    """
    truth = _binary_array(y_true, "y_true", ndim=1)
    scores = _score_array(y_prob, "y_prob", shape=truth.shape)
    chosen = _best_fbeta_threshold(truth, scores, beta)
    if chosen is None:
        logger.warning(
            "best_threshold: no positives among %d samples; using the default threshold %s",
            truth.size,
            default,
        )
        return float(default)
    return chosen


def best_thresholds_per_indicator(
    y_true: npt.ArrayLike,
    y_prob: npt.ArrayLike,
    beta: float = 1.0,
    *,
    default: float = 0.5,
    label_names: Sequence[str] = INDICATOR_IDS,
) -> npt.NDArray[np.float64]:
    """`best_threshold` for every label column; the result feeds `indicator_metrics`.

    Args:
        y_true: 0/1 label matrix, shape ``[n, len(label_names)]``.
        y_prob: scores of the same shape.
        beta: F-beta's recall weight (F1 by default, as the indicator metrics are F1).
        default: the threshold for labels without positives in ``y_true``; each such label is
            named in a logged warning.
        label_names: column names, for the warnings and the shape check.

    Returns:
        Thresholds, shape ``[len(label_names)]``, in column order.
    """
    names = tuple(label_names)
    truth = _binary_array(y_true, "y_true", ndim=2)
    scores = _score_array(y_prob, "y_prob", shape=truth.shape)
    if truth.shape[1] != len(names):
        raise ValueError(
            f"y_true has {truth.shape[1]} label columns but {len(names)} label names were given "
            f"({', '.join(names)})"
        )
    thresholds = np.full(len(names), float(default), dtype=np.float64)
    for index, name in enumerate(names):
        chosen = _best_fbeta_threshold(truth[:, index], scores[:, index], beta)
        if chosen is None:
            logger.warning(
                "best_thresholds_per_indicator: no positives for %s among %d samples; "
                "using the default threshold %s",
                name,
                truth.shape[0],
                default,
            )
        else:
            thresholds[index] = chosen
    return thresholds


def _best_fbeta_threshold(
    truth: npt.NDArray[np.int8], scores: npt.NDArray[np.float64], beta: float
) -> float | None:
    """The highest threshold with maximal F-beta, or None when there are no positives."""
    if not beta > 0:
        raise ValueError(f"beta must be positive; got {beta}")
    if not truth.any():
        return None
    precision, recall, thresholds = precision_recall_curve(truth, scores)
    # The curve's last point (precision 1, recall 0) has no threshold; drop it.
    precision, recall = precision[:-1], recall[:-1]
    beta2 = beta * beta
    denominator = beta2 * precision + recall
    fbeta = np.divide(
        (1 + beta2) * precision * recall,
        denominator,
        out=np.zeros_like(denominator),
        where=denominator > 0,
    )
    # Thresholds are increasing, so the last index within the tie band is the highest threshold.
    best = np.flatnonzero(fbeta >= fbeta.max() - _TIE_TOLERANCE)[-1]
    return float(thresholds[best])


def _binary_array(values: npt.ArrayLike, name: str, *, ndim: int) -> npt.NDArray[np.int8]:
    array = np.asarray(values)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s); got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty: there is nothing to score")
    if array.dtype != np.bool_ and not np.isin(array, (0, 1)).all():
        found = np.unique(array[~np.isin(array, (0, 1))])[:5]
        raise ValueError(f"{name} must hold only 0 and 1; found {found.tolist()}")
    return array.astype(np.int8)


def _score_array(
    values: npt.ArrayLike, name: str, *, shape: tuple[int, ...]
) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape} like y_true; got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(
            f"{name} holds {np.count_nonzero(~np.isfinite(array))} NaN or infinite score(s)"
        )
    return array


def _thresholds_array(thresholds: float | npt.ArrayLike, labels: int) -> npt.NDArray[np.float64]:
    array = np.asarray(thresholds, dtype=np.float64)
    if array.ndim == 0:
        _check_threshold(float(array))
        return np.full(labels, float(array))
    if array.shape != (labels,):
        raise ValueError(
            f"thresholds must be one number or one per label ({labels}); got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"thresholds must be finite; got {array.tolist()}")
    return array


def _check_threshold(threshold: float) -> None:
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite; got {threshold}")
