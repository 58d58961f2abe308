from __future__ import annotations

import math
from collections import Counter

import numpy as np
import numpy.typing as npt
import pytest

from cesagram.evaluation.bootstrap import Interval, MetricFunction, bootstrap_intervals

# Twelve rows in four conversations whose rows are interleaved, not contiguous:
#   a: rows 0, 4, 8 (3 rows)   b: rows 1, 5 (2 rows)   c: rows 2, 6, 9, 10 (4 rows)   d: 3, 7, 11
CONVERSATIONS = np.array(["a", "b", "c", "d", "a", "b", "c", "d", "a", "c", "c", "d"])


def _mean_of(values: npt.NDArray[np.float64]) -> MetricFunction:
    def metric(indices: npt.NDArray[np.int64]) -> dict[str, float]:
        return {"mean": float(values[indices].mean())}

    return metric


def test_first_call_scores_all_rows_and_resamples_are_unions_of_whole_clusters() -> None:
    calls: list[npt.NDArray[np.int64]] = []

    def record(indices: npt.NDArray[np.int64]) -> dict[str, float]:
        calls.append(indices.copy())
        return {"n": float(indices.size)}

    bootstrap_intervals(record, CONVERSATIONS, n_resamples=200, seed=3)

    assert len(calls) == 201
    np.testing.assert_array_equal(calls[0], np.arange(CONVERSATIONS.size))
    sizes = Counter(CONVERSATIONS.tolist())
    saw_repeat = False
    for indices in calls[1:]:
        assert indices.dtype == np.int64
        drawn_rows = Counter(indices.tolist())
        drawn = Counter(CONVERSATIONS[indices].tolist())
        for conversation, rows in drawn.items():
            members = np.flatnonzero(conversation == CONVERSATIONS).tolist()
            # A drawn conversation comes whole, every one of its rows as often as the others.
            times = rows // sizes[conversation]
            assert rows == times * sizes[conversation]
            assert all(drawn_rows[row] == times for row in members)
            saw_repeat = saw_repeat or times > 1
        # As many conversations are drawn as there are conversations.
        assert sum(rows // sizes[c] for c, rows in drawn.items()) == len(sizes)
    assert saw_repeat


def test_estimate_is_the_metric_on_all_rows_and_the_interval_contains_it() -> None:
    values = np.random.default_rng(0).normal(size=300)
    conversations = np.repeat(np.arange(60), 5)

    result = bootstrap_intervals(_mean_of(values), conversations, n_resamples=500)

    interval = result["mean"]
    assert interval.estimate == pytest.approx(values.mean())
    assert interval.low < interval.estimate < interval.high
    assert interval.confidence == 0.95
    assert interval.resamples == 500
    assert interval.failed == 0


def test_same_seed_gives_same_intervals_and_another_seed_differs() -> None:
    values = np.random.default_rng(1).random(120)
    conversations = np.arange(120) % 17

    first = bootstrap_intervals(_mean_of(values), conversations, n_resamples=100, seed=7)
    again = bootstrap_intervals(_mean_of(values), conversations, n_resamples=100, seed=7)
    other = bootstrap_intervals(_mean_of(values), conversations, n_resamples=100, seed=8)

    assert first == again
    assert first["mean"].estimate == other["mean"].estimate
    assert (first["mean"].low, first["mean"].high) != (other["mean"].low, other["mean"].high)


def test_resampling_conversations_widens_the_interval_when_rows_of_a_conversation_agree() -> None:
    # 20 conversations of 10 identical rows each: only 20 independent values, not 200.
    per_conversation = np.random.default_rng(2).random(20)
    values = np.repeat(per_conversation, 10)
    conversations = np.repeat(np.arange(20), 10)

    by_conversation = bootstrap_intervals(_mean_of(values), conversations, n_resamples=500)
    by_row = bootstrap_intervals(_mean_of(values), np.arange(200), n_resamples=500)

    cluster_width = by_conversation["mean"].high - by_conversation["mean"].low
    row_width = by_row["mean"].high - by_row["mean"].low
    # The row bootstrap pretends to have 10x the data: about sqrt(10) ~ 3.2x too narrow.
    assert cluster_width > 2 * row_width


def test_a_single_cluster_gives_a_degenerate_interval() -> None:
    values = np.array([0.0, 1.0, 1.0, 0.0])

    result = bootstrap_intervals(_mean_of(values), ["only"] * 4, n_resamples=20)

    assert result["mean"] == Interval(0.5, 0.5, 0.5, 0.95, 20, 0)


def test_higher_confidence_gives_a_wider_interval() -> None:
    values = np.random.default_rng(4).random(100)
    groups = np.arange(100)

    narrow = bootstrap_intervals(_mean_of(values), groups, confidence=0.5)["mean"]
    wide = bootstrap_intervals(_mean_of(values), groups, confidence=0.99)["mean"]

    assert wide.low < narrow.low < narrow.high < wide.high


def test_integer_and_string_cluster_ids_resample_alike() -> None:
    values = np.random.default_rng(5).random(CONVERSATIONS.size)
    codes = np.unique(CONVERSATIONS, return_inverse=True)[1]

    by_name = bootstrap_intervals(_mean_of(values), CONVERSATIONS, n_resamples=50)
    by_number = bootstrap_intervals(_mean_of(values), codes, n_resamples=50)

    assert by_name == by_number


def test_nan_resamples_are_left_out_and_counted() -> None:
    # Row 0 (conversation "a") is drawn in some resamples only; without it "needs_a" is NaN.
    values = np.arange(CONVERSATIONS.size, dtype=np.float64)
    missing_a = 0

    def metric(indices: npt.NDArray[np.int64]) -> dict[str, float]:
        nonlocal missing_a
        has_a = bool((indices == 0).any())
        missing_a += not has_a
        return {
            "mean": float(values[indices].mean()),
            "needs_a": 1.0 if has_a else float("nan"),
            "never": float("nan"),
        }

    result = bootstrap_intervals(metric, CONVERSATIONS, n_resamples=300, seed=1)

    assert 0 < missing_a < 300  # P(no "a" among 4 draws) = (3/4)^4 ~ 0.32
    assert result["mean"].failed == 0
    assert result["needs_a"].failed == missing_a
    assert (result["needs_a"].low, result["needs_a"].high) == (1.0, 1.0)
    never = result["never"]
    assert math.isnan(never.estimate) and math.isnan(never.low) and math.isnan(never.high)
    assert never.failed == 300


def test_to_dict_is_plain_fields() -> None:
    interval = Interval(estimate=0.5, low=0.25, high=0.75, confidence=0.9, resamples=10, failed=1)

    assert interval.to_dict() == {
        "estimate": 0.5,
        "low": 0.25,
        "high": 0.75,
        "confidence": 0.9,
        "resamples": 10,
        "failed": 1,
    }


@pytest.mark.parametrize(
    ("groups", "kwargs", "message"),
    [
        ([], {}, "empty"),
        (np.zeros((2, 2)), {}, "1-D"),
        (["a", None, "b"], {}, "missing cluster id"),
        ([0, 1], {"n_resamples": 0}, "at least 1"),
        ([0, 1], {"n_resamples": 2.5}, "integer"),
        ([0, 1], {"confidence": 0.0}, "between 0 and 1"),
        ([0, 1], {"confidence": 1.0}, "between 0 and 1"),
        ([0, 1], {"confidence": 95}, "between 0 and 1"),
    ],
)
def test_invalid_input_raises(groups: object, kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_intervals(lambda indices: {"n": 1.0}, groups, **kwargs)  # type: ignore[arg-type]


def test_metric_names_must_not_change_between_calls() -> None:
    calls = 0

    def metric(indices: npt.NDArray[np.int64]) -> dict[str, float]:
        nonlocal calls
        calls += 1
        return {"a": 1.0} if calls == 1 else {"b": 1.0}

    with pytest.raises(ValueError, match="same names"):
        bootstrap_intervals(metric, [0, 1, 2], n_resamples=5)
