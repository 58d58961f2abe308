"""Cluster bootstrap confidence intervals: resample conversations, not messages.

Messages of one conversation are not independent (same people, same topic, same model state),
so resampling messages would give intervals that are too narrow. `bootstrap_intervals` draws
whole clusters (conversation ids) with replacement and lets the caller's metric function score
the rows of the drawn clusters; with one row per cluster it is the ordinary bootstrap.

Conventions:

- The estimate is the metric on all rows, not the mean of the resamples.
- The interval is the percentile interval of the resampled values (``(1 - confidence) / 2`` and
  ``(1 + confidence) / 2`` quantiles, numpy's linear interpolation).
- A resample on which a metric is NaN (e.g. a recall on a resample without positives) is left
  out of that metric's interval and counted in `Interval.failed`; when every resample is NaN the
  interval bounds are NaN.
- Resampling is seeded (`numpy.random.default_rng`), so the same inputs give the same interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

MetricFunction = Callable[[npt.NDArray[np.int64]], dict[str, float]]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval.

    Attributes:
        estimate: the metric on all rows.
        low: lower bound of the interval (NaN when every resample failed).
        high: upper bound of the interval (NaN when every resample failed).
        confidence: the interval's nominal coverage, e.g. 0.95.
        resamples: how many resamples were drawn.
        failed: how many of them gave NaN for this metric and were left out.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    resamples: int
    failed: int

    def to_dict(self) -> dict[str, float | int]:
        """The fields as a plain dict (JSON-ready; undefined values are NaN)."""
        return asdict(self)


def bootstrap_intervals(
    metric_fn: MetricFunction,
    groups: npt.ArrayLike,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Percentile intervals for every metric ``metric_fn`` returns, resampling whole clusters.

    Args:
        metric_fn: computes all metrics on the rows at the given indices (a 1-D int64 array into
            the caller's data; indices repeat when a cluster is drawn more than once) and
            returns ``{name: value}``, with the same names on every call. It is called once on
            all rows, in row order, for the estimate, then once per resample.
        groups: one cluster id per row (conversation ids; strings or integers), shape ``[n]``.
            Rows of a cluster need not be contiguous.
        n_resamples: how many bootstrap resamples to draw.
        confidence: nominal coverage of the interval, strictly between 0 and 1.
        seed: seed of the random generator.

    Returns:
        ``{name: Interval}`` for every metric of the estimate, in the estimate's key order.

    Raises:
        ValueError: on empty or non 1-D ``groups``, a missing (null) cluster id,
            ``n_resamples < 1``, ``confidence`` outside (0, 1), or a ``metric_fn`` that returns
            different metric names on a resample.
    """
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer):
        raise ValueError(f"n_resamples must be an integer; got {n_resamples!r}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1; got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1; got {confidence}")
    cluster_rows = _ClusterRows(groups)

    estimate = metric_fn(np.arange(cluster_rows.n_rows, dtype=np.int64))
    names = list(estimate)
    values = np.full((n_resamples, len(names)), np.nan, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for resample in range(n_resamples):
        drawn = rng.integers(0, cluster_rows.n_clusters, size=cluster_rows.n_clusters)
        result = metric_fn(cluster_rows.rows_of(drawn))
        if result.keys() != estimate.keys():
            raise ValueError(
                f"metric_fn returned metrics {sorted(result)} on resample {resample} but "
                f"{sorted(estimate)} on all rows; it must return the same names every time"
            )
        values[resample] = [result[name] for name in names]

    alpha = (1.0 - confidence) / 2.0
    intervals: dict[str, Interval] = {}
    for column, name in enumerate(names):
        column_values = values[:, column]
        defined = column_values[~np.isnan(column_values)]
        if defined.size:
            low, high = (float(q) for q in np.quantile(defined, [alpha, 1.0 - alpha]))
        else:
            low = high = float("nan")
        intervals[name] = Interval(
            estimate=float(estimate[name]),
            low=low,
            high=high,
            confidence=float(confidence),
            resamples=n_resamples,
            failed=int(n_resamples - defined.size),
        )
    return intervals


class _ClusterRows:
    """Row indices grouped by cluster, computed once so that each resample is vectorised."""

    def __init__(self, groups: npt.ArrayLike) -> None:
        ids = np.asarray(groups)
        if ids.ndim != 1:
            raise ValueError(f"groups must be 1-D (one cluster id per row); got shape {ids.shape}")
        if ids.size == 0:
            raise ValueError("groups is empty: there are no rows to resample")
        codes, _ = pd.factorize(ids, use_na_sentinel=True)
        if (codes < 0).any():
            missing = np.flatnonzero(codes < 0)[:5].tolist()
            raise ValueError(
                f"groups holds {np.count_nonzero(codes < 0)} missing cluster id(s), "
                f"first at row(s) {missing}; every row needs a cluster id"
            )
        self.n_rows = int(ids.size)
        sizes = np.bincount(codes)
        self.n_clusters = int(sizes.size)
        # Rows sorted by cluster: cluster c owns order[starts[c] : starts[c] + sizes[c]].
        self._order = np.argsort(codes, kind="stable").astype(np.int64)
        self._sizes = sizes.astype(np.int64)
        self._starts = np.concatenate(([0], np.cumsum(self._sizes)[:-1])).astype(np.int64)

    def rows_of(self, clusters: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The rows of the given clusters concatenated, repeats included, in draw order."""
        sizes = self._sizes[clusters]
        # Position p of the output belongs to draw d and reads order[starts[d] + (p - out[d])],
        # where out[d] is where draw d begins in the output.
        out_starts = np.cumsum(sizes) - sizes
        positions = np.arange(int(sizes.sum()), dtype=np.int64)
        offsets = np.repeat(self._starts[clusters] - out_starts, sizes)
        rows: npt.NDArray[np.int64] = self._order[positions + offsets]
        return rows
