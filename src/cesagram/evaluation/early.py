"""Early-detection metrics: how soon a risky conversation is flagged, not only whether it is.

Two families, both computed from per-message scores of whole conversations:

- **eSPD** (Vogt et al. 2021, "Early detection of sexual predators in chats"). The model scores
  a conversation after each message. A score is *positive* when ``score >= threshold``, the same
  rule as `cesagram.evaluation.metrics`. A warning is raised at the first message where at least
  ``s`` of the last `ESPD_HISTORY` (10) scores are positive; ``s`` is the *skepticism*, 1..10,
  `DEFAULT_SKEPTICISM` (5) by default. At the start of a conversation the window holds only the
  scores seen so far, so a warning can never fire before message ``s``. Once raised a warning
  stays raised: later negative scores do not retract it. The *latency* ``k`` is the number of
  messages read when it fires (1-based); a conversation that never fires has no warning
  (latency ``None``).

  ``penalty(k) = -1 + 2 / (1 + exp(-p (k - 1)))`` with ``p = ln(3) / 89`` (`PENALTY_P`), so a
  warning on the first message costs 0 and one on the 90th costs 0.5. ``speed = 1 - median
  penalty`` over true-positive warnings, and ``F_latency = F1 x speed``, where F1 counts a
  raised warning as a positive prediction at conversation level.

- **ERDE_o** (Losada & Crestani 2016, "A test collection for research on depression and
  language use"). Per conversation: a false positive costs ``c_fp = #positive conversations /
  #conversations``, a false negative 1, a true negative 0, and a true positive at latency ``k``
  costs ``1 - 1 / (1 + exp(k - o))``, which grows from about 0 to 1 as ``k`` passes ``o``.
  ERDE_o is the mean cost (lower is better); ``o = 5`` and ``o = 50`` are reported.

Results are ``dict[str, float]`` with stable keys, like the other evaluation metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from sklearn.metrics import precision_recall_fscore_support

# Vogt et al.'s warning window: the last 10 scores.
ESPD_HISTORY = 10
# Chosen so that penalty(90) == 0.5: a warning after 90 messages has lost half its value.
PENALTY_P = math.log(3) / 89
DEFAULT_SKEPTICISM = 5
# The two ERDE deadlines reported (Losada & Crestani 2016).
ERDE_DEADLINES = (5, 50)


def penalty(k: npt.ArrayLike) -> np.ndarray | float:
    """The eSPD latency penalty ``-1 + 2 / (1 + exp(-p (k - 1)))`` with ``p = ln(3) / 89``.

    ``penalty(1) == 0`` (a warning on the first message is as early as possible), ``penalty(90)
    == 0.5`` and the penalty tends to 1 for very late warnings.

    Args:
        k: latency or latencies, in messages read (1-based); any shape.

    Returns:
        A float for a scalar ``k``, otherwise an array of ``k``'s shape.

    Raises:
        ValueError: when a latency is not finite or is below 1.
    """
    values = np.asarray(k, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"latency k must be finite; got {values.tolist()}")
    if (values < 1).any():
        found = np.unique(values[values < 1])[:5]
        raise ValueError(f"latency k counts messages read and must be >= 1; got {found.tolist()}")
    result = -1.0 + 2.0 / (1.0 + np.exp(-PENALTY_P * (values - 1.0)))
    if result.ndim == 0:
        return float(result)
    return result


def warning_latency(
    scores: npt.ArrayLike,
    threshold: float,
    skepticism: int = DEFAULT_SKEPTICISM,
    history: int = ESPD_HISTORY,
) -> int | None:
    """The message at which an eSPD warning fires for one conversation, or None if it never does.

    Args:
        scores: the model's score after each message, in message order, shape ``[messages]``.
        threshold: a score is positive when ``score >= threshold``.
        skepticism: how many of the last ``history`` scores must be positive (1..history).
        history: the window length; fewer scores count at the start of the conversation.

    Returns:
        The latency ``k``: the number of messages read when the warning fires (1-based), or
        None when no window ever reaches ``skepticism`` positives.

    Raises:
        ValueError: on empty or non-finite scores, a non-finite threshold, or a skepticism
            outside 1..history.
    """
    _check_window(skepticism, history)
    _check_threshold(threshold)
    values = _score_vector(scores, "scores")
    return _first_warning(_window_counts(values >= threshold, history), skepticism)


def latencies(
    conversation_scores: Sequence[npt.ArrayLike],
    threshold: float,
    skepticism: int = DEFAULT_SKEPTICISM,
    history: int = ESPD_HISTORY,
) -> list[int | None]:
    """`warning_latency` for every conversation, in order.

    Args:
        conversation_scores: one score sequence per conversation (lengths may differ).
        threshold: a score is positive when ``score >= threshold``.
        skepticism: how many of the last ``history`` scores must be positive (1..history).
        history: the window length.

    Returns:
        One latency (or None for no warning) per conversation.

    Raises:
        ValueError: as `warning_latency`, naming the conversation's index; also when there are
            no conversations.
    """
    _check_window(skepticism, history)
    _check_threshold(threshold)
    counts = _conversation_window_counts(conversation_scores, threshold, history)
    return [_first_warning(window, skepticism) for window in counts]


def early_detection_metrics(
    latencies: Sequence[int | None], labels: npt.ArrayLike
) -> dict[str, float]:
    """eSPD and ERDE metrics from per-conversation warning latencies.

    Args:
        latencies: per conversation, the latency of its warning (messages read, 1-based) or
            None when no warning was raised, e.g. from `latencies`.
        labels: per conversation, its 0/1 risk label, shape ``[n]``.

    Returns:
        - ``precision``, ``recall``, ``f1``: conversation-level, a raised warning being the
          positive prediction; a zero denominator counts as 0 (scikit-learn's
          ``zero_division=0``, as in `cesagram.evaluation.metrics`).
        - ``speed``: ``1 - median penalty(k)`` over true-positive warnings. With no true
          positive there is no early detection to measure; speed is then defined as **0**
          rather than NaN, so ``f_latency`` stays a number (it would be 0 anyway: F1 is 0
          without true positives).
        - ``f_latency``: ``f1 * speed``.
        - ``erde_5``, ``erde_50``: ERDE with deadlines ``o = 5`` and ``o = 50`` (lower is
          better).
        - ``median_latency``: the median ``k`` over true-positive warnings; NaN when there is
          none (no latency to report; NaN cannot pass for a real latency).
        - ``warnings``: conversations with a warning; ``true_positives``: those that are risky;
          ``n``: conversations.

    Raises:
        ValueError: on no conversations, a length mismatch, labels other than 0/1, or a
            latency that is not a whole number >= 1.
    """
    truth = _label_vector(labels, "labels")
    if len(latencies) != truth.size:
        raise ValueError(
            f"latencies has {len(latencies)} entries but labels has {truth.size}: "
            "expected one latency per conversation"
        )
    warned = np.array([latency is not None for latency in latencies], dtype=bool)
    # Conversations without a warning get latency 0 as a placeholder; `warned` masks them out.
    k = np.array(
        [
            0 if latency is None else _check_latency(latency, i)
            for i, latency in enumerate(latencies)
        ],
        dtype=np.int64,
    )

    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, warned.astype(np.int8), average="binary", pos_label=1, zero_division=0
    )
    true_positive = warned & (truth == 1)
    tp_latencies = k[true_positive]
    if tp_latencies.size:
        speed = 1.0 - float(np.median(penalty(tp_latencies)))
        median_latency = float(np.median(tp_latencies))
    else:
        speed = 0.0
        median_latency = float("nan")

    result: dict[str, float] = {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "speed": speed,
        "f_latency": float(f1) * speed,
    }
    for deadline in ERDE_DEADLINES:
        result[f"erde_{deadline}"] = _erde(warned, k, truth, deadline)
    result["median_latency"] = median_latency
    result["warnings"] = float(np.count_nonzero(warned))
    result["true_positives"] = float(np.count_nonzero(true_positive))
    result["n"] = float(truth.size)
    return result


def early_detection_by_skepticism(
    conversation_scores: Sequence[npt.ArrayLike],
    labels: npt.ArrayLike,
    threshold: float,
    skepticisms: Sequence[int] = range(1, ESPD_HISTORY + 1),
) -> dict[int, dict[str, float]]:
    """`early_detection_metrics` for each skepticism, the curve Vogt et al. report.

    Low skepticism warns early but on a single stray positive score; high skepticism waits for
    sustained evidence. Scores are validated and windowed once and reused for every value.

    Args:
        conversation_scores: one score sequence per conversation, in message order.
        labels: per conversation, its 0/1 risk label, shape ``[n]``.
        threshold: a score is positive when ``score >= threshold``.
        skepticisms: the skepticism values to evaluate, each in 1..`ESPD_HISTORY`.

    Returns:
        ``{skepticism: metrics}``, in the order given; see `early_detection_metrics` for keys.

    Raises:
        ValueError: on an empty ``skepticisms``, a skepticism outside 1..10, and as
            `latencies` and `early_detection_metrics`.
    """
    values = list(skepticisms)
    if not values:
        raise ValueError("skepticisms is empty: expected at least one value in 1..10")
    for skepticism in values:
        _check_window(skepticism, ESPD_HISTORY)
    _check_threshold(threshold)
    truth = _label_vector(labels, "labels")
    if len(conversation_scores) != truth.size:
        raise ValueError(
            f"conversation_scores has {len(conversation_scores)} conversations but labels has "
            f"{truth.size}: expected one label per conversation"
        )
    counts = _conversation_window_counts(conversation_scores, threshold, ESPD_HISTORY)
    return {
        skepticism: early_detection_metrics(
            [_first_warning(window, skepticism) for window in counts], truth
        )
        for skepticism in values
    }


def _erde(
    warned: npt.NDArray[np.bool_], k: npt.NDArray[np.int64], truth: npt.NDArray[np.int8], o: int
) -> float:
    """Mean ERDE_o cost over conversations (see the module docstring for the costs)."""
    positive = truth == 1
    false_positive_cost = np.count_nonzero(positive) / truth.size
    costs = np.zeros(truth.size, dtype=np.float64)
    costs[warned & ~positive] = false_positive_cost
    costs[~warned & positive] = 1.0
    hit = warned & positive
    # 1 - 1/(1 + e^(k-o)) rewritten as 1/(1 + e^(o-k)): with k >= 1 the exponent stays below o,
    # so it cannot overflow for large k the way e^(k-o) would.
    costs[hit] = 1.0 / (1.0 + np.exp(o - k[hit].astype(np.float64)))
    return float(costs.mean())


def _window_counts(positive: npt.NDArray[np.bool_], history: int) -> npt.NDArray[np.int64]:
    """Positives among the last ``history`` scores after each message (fewer at the start)."""
    cumulative = np.concatenate(([0], np.cumsum(positive, dtype=np.int64)))
    # Window after message i (0-based) covers messages max(0, i - history + 1) .. i.
    ends = np.arange(1, positive.size + 1)
    starts = np.maximum(ends - history, 0)
    return cumulative[ends] - cumulative[starts]


def _first_warning(counts: npt.NDArray[np.int64], skepticism: int) -> int | None:
    fired = np.flatnonzero(counts >= skepticism)
    return int(fired[0]) + 1 if fired.size else None


def _conversation_window_counts(
    conversation_scores: Sequence[npt.ArrayLike], threshold: float, history: int
) -> list[npt.NDArray[np.int64]]:
    if len(conversation_scores) == 0:
        raise ValueError("conversation_scores is empty: expected at least one conversation")
    return [
        _window_counts(_score_vector(scores, f"conversation_scores[{i}]") >= threshold, history)
        for i, scores in enumerate(conversation_scores)
    ]


def _check_window(skepticism: int, history: int) -> None:
    if isinstance(history, bool) or not isinstance(history, int | np.integer) or history < 1:
        raise ValueError(f"history must be a whole number >= 1; got {history!r}")
    if (
        isinstance(skepticism, bool)
        or not isinstance(skepticism, int | np.integer)
        or not 1 <= skepticism <= history
    ):
        raise ValueError(
            f"skepticism must be a whole number in 1..{history} (positives needed among the "
            f"last {history} scores); got {skepticism!r}"
        )


def _check_threshold(threshold: float) -> None:
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite; got {threshold}")


def _check_latency(latency: object, index: int) -> int:
    if isinstance(latency, bool) or not isinstance(latency, int | np.integer) or latency < 1:
        raise ValueError(
            f"latencies[{index}] must be None or a whole number of messages >= 1; got {latency!r}"
        )
    return int(latency)


def _score_vector(values: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one score per message (1-D); got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: expected at least one message score")
    if not np.isfinite(array).all():
        raise ValueError(
            f"{name} holds {np.count_nonzero(~np.isfinite(array))} NaN or infinite score(s)"
        )
    return array


def _label_vector(values: npt.ArrayLike, name: str) -> npt.NDArray[np.int8]:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be one label per conversation (1-D); got shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty: expected at least one conversation")
    if array.dtype != np.bool_ and not np.isin(array, (0, 1)).all():
        found = np.unique(array[~np.isin(array, (0, 1))])[:5]
        raise ValueError(f"{name} must hold only 0 and 1; found {found.tolist()}")
    return array.astype(np.int8)
