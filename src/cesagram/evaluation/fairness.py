"""Metrics disaggregated by sensitive features (language, age band, gender, platform).

Per group the report gives TPR, FPR, F1 and selection rate with cluster-bootstrap intervals,
and per sensitive feature the gaps between groups: the equalized-odds difference (the larger
of the TPR gap and the FPR gap) and the demographic-parity difference (the selection-rate
gap). The per-group metrics come from fairlearn's `MetricFrame`; this module fixes the
conventions:

- ``y_true`` and ``y_pred`` are 0/1 decisions already taken: the caller applies its threshold.
- **Undefined rates are NaN.** fairlearn's ``true_positive_rate`` and ``false_positive_rate``
  go through scikit-learn's normalised confusion matrix, which turns 0/0 into 0, so a group
  without positives would report TPR 0 and look like the worst group. Here TPR is NaN in a group
  without positives and FPR is NaN in a group without negatives; NaN rates are left out of the
  gaps and of ``min_tpr``. F1 keeps scikit-learn's ``zero_division=0`` (as in
  `cesagram.evaluation.metrics`), and selection rate is always defined.
- Rows whose sensitive value is null (None, NaN, pandas NA) form the group ``"unknown"``; other
  values are reported as strings (``str(value)``), so a real value ``"unknown"`` merges with
  them.
- Groups with fewer than ``min_group_size`` rows are reported, with ``"in_gaps": False``, but
  left out of every gap and of ``min_tpr``: a handful of rows can swing a rate from 0 to 1 and
  would otherwise dominate the gap. A gap over a single group is 0; a gap over no group with a
  defined rate is NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import f1_score

from cesagram.evaluation.bootstrap import MetricFunction, bootstrap_intervals

GROUP_METRICS = ("tpr", "fpr", "f1", "selection_rate")
UNKNOWN_GROUP = "unknown"


def group_metrics(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, sensitive: npt.ArrayLike
) -> pd.DataFrame:
    """Per-group TPR, FPR, F1 and selection rate, from fairlearn's `MetricFrame`.

    Args:
        y_true: 0/1 labels, shape ``[n]``.
        y_pred: 0/1 decisions, shape ``[n]``.
        sensitive: one group value per row, shape ``[n]``; null values form the group
            ``"unknown"``.

    Returns:
        One row per group (index ``group``, the group values as strings, sorted), columns
        ``tpr``, ``fpr``, ``f1``, ``selection_rate`` (floats; TPR is NaN in a group without
        positives, FPR NaN in a group without negatives), ``count`` and ``positives`` (ints).

    Raises:
        ValueError: on empty input, mismatched lengths or labels other than 0/1.
    """
    truth, predicted = _decisions(y_true, y_pred)
    labels = _group_labels(sensitive, truth.size, "sensitive")
    return _by_group(_metric_frame(truth, predicted, labels))


def fairness_report(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    sensitive_features: Mapping[str, npt.ArrayLike],
    *,
    clusters: npt.ArrayLike | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    min_group_size: int = 1,
) -> dict[str, Any]:
    """Disaggregated metrics, bootstrap intervals and group gaps for every sensitive feature.

    Args:
        y_true: 0/1 labels, shape ``[n]``.
        y_pred: 0/1 decisions at the chosen threshold, shape ``[n]``.
        sensitive_features: ``{feature name: one value per row}``, e.g. ``language``,
            ``age_band``, ``gender``, ``platform``.
        clusters: one cluster id per row (conversation ids); the bootstrap resamples whole
            clusters within each group. None makes every row its own cluster.
        n_resamples: bootstrap resamples per group.
        confidence: nominal coverage of the intervals.
        seed: seed of every group's bootstrap.
        min_group_size: groups with fewer rows are reported but left out of the gaps and of
            ``min_tpr``.

    Returns:
        ``{feature name: column report}``, JSON-ready, each column report being::

            {
                "groups": [
                    {"group": "en", "count": 6, "positives": 2, "in_gaps": True,
                     "tpr": {"estimate": 0.5, "low": 0.0, "high": 1.0},
                     "fpr": {...}, "f1": {...}, "selection_rate": {...}},
                    ...
                ],
                "equalized_odds_difference": max(tpr_gap, fpr_gap),
                "demographic_parity_difference": selection-rate gap (fairlearn),
                "tpr_gap": max - min TPR over groups with positives,
                "fpr_gap": max - min FPR over groups with negatives,
                "min_tpr": the lowest defined TPR,
                "min_tpr_group": its group, or None when no group has positives,
            }

        Groups are sorted by name. Undefined values (a rate or gap without data, an interval
        whose resamples all lack the needed class) are NaN.

    Raises:
        ValueError: on empty input, mismatched lengths, labels other than 0/1, a missing
            cluster id, ``min_group_size < 1`` or invalid bootstrap settings.
    """
    truth, predicted = _decisions(y_true, y_pred)
    if isinstance(min_group_size, bool) or not isinstance(min_group_size, int | np.integer):
        raise ValueError(f"min_group_size must be an integer; got {min_group_size!r}")
    if min_group_size < 1:
        raise ValueError(f"min_group_size must be at least 1; got {min_group_size}")
    cluster_ids = _cluster_ids(clusters, truth.size)
    return {
        name: _column_report(
            truth,
            predicted,
            _group_labels(values, truth.size, f"sensitive_features[{name!r}]"),
            cluster_ids,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
            min_group_size=min_group_size,
        )
        for name, values in sensitive_features.items()
    }


def _column_report(
    truth: npt.NDArray[np.int8],
    predicted: npt.NDArray[np.int8],
    labels: npt.NDArray[np.object_],
    cluster_ids: npt.NDArray[Any],
    *,
    n_resamples: int,
    confidence: float,
    seed: int,
    min_group_size: int,
) -> dict[str, Any]:
    table = _by_group(_metric_frame(truth, predicted, labels))
    groups: list[dict[str, Any]] = []
    for group, row in table.iterrows():
        rows = np.flatnonzero(labels == group)
        intervals = bootstrap_intervals(
            _confusion_metrics(truth[rows].astype(bool), predicted[rows].astype(bool)),
            cluster_ids[rows],
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
        )
        entry: dict[str, Any] = {
            "group": str(group),
            "count": int(row["count"]),
            "positives": int(row["positives"]),
            "in_gaps": bool(row["count"] >= min_group_size),
        }
        for metric in GROUP_METRICS:
            entry[metric] = {
                "estimate": float(row[metric]),
                "low": intervals[metric].low,
                "high": intervals[metric].high,
            }
        groups.append(entry)

    in_gaps = np.isin(labels, table.index[table["count"] >= min_group_size].to_numpy())
    if in_gaps.any():
        # MetricFrame.difference is max - min over groups; pandas skips the NaN (undefined)
        # rates, which fairlearn's own equalized_odds_difference would count as 0.
        gaps = _metric_frame(truth[in_gaps], predicted[in_gaps], labels[in_gaps]).difference(
            method="between_groups"
        )
        tpr_gap, fpr_gap = float(gaps["tpr"]), float(gaps["fpr"])
        parity_gap = float(
            demographic_parity_difference(
                truth[in_gaps], predicted[in_gaps], sensitive_features=labels[in_gaps]
            )
        )
    else:
        tpr_gap = fpr_gap = parity_gap = float("nan")
    odds_gap = max((gap for gap in (tpr_gap, fpr_gap) if not np.isnan(gap)), default=float("nan"))

    tprs = table.loc[table["count"] >= min_group_size, "tpr"].dropna()
    return {
        "groups": groups,
        "equalized_odds_difference": odds_gap,
        "demographic_parity_difference": parity_gap,
        "tpr_gap": tpr_gap,
        "fpr_gap": fpr_gap,
        "min_tpr": float(tprs.min()) if not tprs.empty else float("nan"),
        "min_tpr_group": str(tprs.idxmin()) if not tprs.empty else None,
    }


def _metric_frame(
    truth: npt.NDArray[np.int8], predicted: npt.NDArray[np.int8], labels: npt.NDArray[np.object_]
) -> MetricFrame:
    return MetricFrame(
        metrics={
            "tpr": _true_positive_rate,
            "fpr": _false_positive_rate,
            "f1": _f1,
            "selection_rate": selection_rate,
            "count": count,
            "positives": _positives,
        },
        y_true=truth,
        y_pred=predicted,
        sensitive_features=pd.Series(labels, name="group"),
    )


def _by_group(frame: MetricFrame) -> pd.DataFrame:
    table = pd.DataFrame(frame.by_group)
    for column in GROUP_METRICS:
        table[column] = table[column].astype(np.float64)
    for column in ("count", "positives"):
        table[column] = table[column].astype(np.int64)
    return table


def _true_positive_rate(y_true: npt.NDArray[np.int8], y_pred: npt.NDArray[np.int8]) -> float:
    """fairlearn's TPR, but NaN (not 0) when the group has no positives."""
    if not np.any(y_true == 1):
        return float("nan")
    return float(true_positive_rate(y_true, y_pred, pos_label=1))


def _false_positive_rate(y_true: npt.NDArray[np.int8], y_pred: npt.NDArray[np.int8]) -> float:
    """fairlearn's FPR, but NaN (not 0) when the group has no negatives."""
    if not np.any(y_true == 0):
        return float("nan")
    return float(false_positive_rate(y_true, y_pred, pos_label=1))


def _f1(y_true: npt.NDArray[np.int8], y_pred: npt.NDArray[np.int8]) -> float:
    return float(f1_score(y_true, y_pred, pos_label=1, zero_division=0))


def _positives(y_true: npt.NDArray[np.int8], y_pred: npt.NDArray[np.int8]) -> int:
    return int(np.count_nonzero(y_true == 1))


def _confusion_metrics(
    truth: npt.NDArray[np.bool_], predicted: npt.NDArray[np.bool_]
) -> MetricFunction:
    """The group metrics from confusion counts, for the bootstrap's many resamples.

    The same definitions as the `MetricFrame` metrics (tests check they agree on all rows),
    but plain counting: fairlearn's and scikit-learn's input checks would cost milliseconds per
    call, a thousand times per group.
    """

    def metrics(indices: npt.NDArray[np.int64]) -> dict[str, float]:
        labels, decisions = truth[indices], predicted[indices]
        positives = int(np.count_nonzero(labels))
        flagged = int(np.count_nonzero(decisions))
        true_positives = int(np.count_nonzero(labels & decisions))
        negatives = indices.size - positives
        return {
            "tpr": true_positives / positives if positives else float("nan"),
            "fpr": (flagged - true_positives) / negatives if negatives else float("nan"),
            "f1": 2 * true_positives / (positives + flagged) if positives + flagged else 0.0,
            "selection_rate": flagged / indices.size,
        }

    return metrics


def _decisions(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int8]]:
    truth = _binary_vector(y_true, "y_true")
    predicted = _binary_vector(y_pred, "y_pred")
    if predicted.shape != truth.shape:
        raise ValueError(f"y_pred must have shape {truth.shape} like y_true; got {predicted.shape}")
    return truth, predicted


def _binary_vector(values: npt.ArrayLike, name: str) -> npt.NDArray[np.int8]:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one decision per row); got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: there is nothing to score")
    if array.dtype != np.bool_ and not np.isin(array, (0, 1)).all():
        found = pd.unique(array[~np.isin(array, (0, 1))])[:5]
        raise ValueError(
            f"{name} must hold only 0 and 1 (decisions already thresholded); found {list(found)}"
        )
    return array.astype(np.int8)


def _group_labels(values: npt.ArrayLike, n_rows: int, name: str) -> npt.NDArray[np.object_]:
    array = np.asarray(values, dtype=object)
    if array.shape != (n_rows,):
        raise ValueError(f"{name} must have shape ({n_rows},) like y_true; got {array.shape}")
    missing = pd.isna(array)
    return np.array(
        [UNKNOWN_GROUP if null else str(value) for value, null in zip(array, missing, strict=True)],
        dtype=object,
    )


def _cluster_ids(clusters: npt.ArrayLike | None, n_rows: int) -> npt.NDArray[Any]:
    if clusters is None:
        return np.arange(n_rows)
    ids = np.asarray(clusters)
    if ids.shape != (n_rows,):
        raise ValueError(f"clusters must have shape ({n_rows},) like y_true; got {ids.shape}")
    missing = pd.isna(ids)
    if missing.any():
        raise ValueError(
            f"clusters holds {int(missing.sum())} missing conversation id(s), first at row(s) "
            f"{np.flatnonzero(missing)[:5].tolist()}; every row needs one"
        )
    return ids
