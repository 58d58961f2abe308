"""What evaluation measures for each model, on validation and test conversations.

Both tasks follow the same order: score validation data and choose the decision threshold(s)
and the temperature there; score the test split; compute headline metrics with bootstrap
intervals (resampling conversations), per-language metrics, the fairness report, calibration
and robustness. The risk model adds early detection over whole conversations (eSPD).
The result is one JSON-ready report section dict per task; `evaluate` adds latency and gates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from sklearn.metrics import multilabel_confusion_matrix

from cesagram.evaluation.bootstrap import bootstrap_intervals
from cesagram.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    logits_from_probabilities,
    reliability_curve,
)
from cesagram.evaluation.conversations import ConversationView, conversations_by_id, group_values
from cesagram.evaluation.early import (
    early_detection_by_skepticism,
    early_detection_metrics,
    latencies,
)
from cesagram.evaluation.fairness import fairness_report
from cesagram.evaluation.language_calibration import compare_on_test, fit_language_calibration
from cesagram.evaluation.metrics import (
    best_threshold,
    best_thresholds_per_indicator,
    indicator_metrics,
    risk_metrics,
)
from cesagram.evaluation.robustness import run_suite
from cesagram.evaluation.scorers import Scorer
from cesagram.evaluation.settings import EvaluationSettings
from cesagram.training.examples import (
    indicator_examples,
    render_messages,
    windows_after_each_message,
)

logger = logging.getLogger(__name__)

INDICATOR_HEADLINE = ("macro_f1", "micro_f1")
RISK_HEADLINE = ("auprc", "auroc", "f1", "f05")
EARLY_HEADLINE = ("f_latency", "erde_5", "erde_50", "speed")

# Separates messages while a perturbation runs over a whole window (messages are one line).
_MESSAGE_SEPARATOR = "\n"


def _intervals(
    metric_fn: Callable[[npt.NDArray[np.int64]], dict[str, float]],
    clusters: Sequence[str],
    settings: EvaluationSettings,
) -> dict[str, dict[str, float]]:
    found = bootstrap_intervals(
        metric_fn,
        np.asarray(clusters),
        n_resamples=settings.bootstrap.resamples,
        confidence=settings.bootstrap.confidence,
        seed=settings.seed,
    )
    return {name: interval.to_dict() for name, interval in found.items()}


def _per_language(
    languages: Sequence[str],
    clusters: Sequence[str],
    metric_fn: Callable[[npt.NDArray[np.int64]], dict[str, float]],
    settings: EvaluationSettings,
) -> dict[str, dict[str, dict[str, float]]]:
    """Headline metrics with intervals within each language (its rows only)."""
    language_array = np.asarray(languages)
    cluster_array = np.asarray(clusters)
    result = {}
    for language in sorted(set(languages)):
        rows = np.flatnonzero(language_array == language)

        def within(indices: npt.NDArray[np.int64], rows: npt.NDArray[np.int64] = rows) -> Any:
            return metric_fn(rows[indices])

        result[language] = _intervals(within, list(cluster_array[rows]), settings)
    return result


def _fairness(
    y_true: npt.NDArray[Any],
    y_pred: npt.NDArray[Any],
    views: dict[str, ConversationView],
    conversation_ids: list[str],
    settings: EvaluationSettings,
) -> dict[str, Any]:
    return fairness_report(
        y_true,
        y_pred,
        {
            name: np.asarray(values, dtype=object)
            for name, values in group_values(views, conversation_ids).items()
        },
        clusters=np.asarray(conversation_ids),
        n_resamples=settings.bootstrap.resamples,
        confidence=settings.bootstrap.confidence,
        seed=settings.seed,
        min_group_size=settings.min_group_size,
    )


def _calibration(
    val_labels: npt.NDArray[Any],
    val_scores: npt.NDArray[np.float64],
    test_labels: npt.NDArray[Any],
    test_scores: npt.NDArray[np.float64],
) -> tuple[dict[str, Any], npt.NDArray[np.float64]]:
    """Temperature fitted on validation; ECE and reliability on test before and after."""
    temperature = fit_temperature(logits_from_probabilities(val_scores), val_labels)
    calibrated = apply_temperature(logits_from_probabilities(test_scores), temperature)
    section = {
        "temperature": float(temperature),
        "bins": 15,
        "ece_before": expected_calibration_error(test_labels, test_scores),
        "ece_after": expected_calibration_error(test_labels, calibrated),
        "reliability_before": reliability_curve(test_labels, test_scores),
        "reliability_after": reliability_curve(test_labels, calibrated),
    }
    return section, calibrated


def _language_calibration(
    val: tuple[npt.NDArray[Any], npt.NDArray[np.float64], list[str]],
    test: tuple[npt.NDArray[Any], npt.NDArray[np.float64], list[str]],
    *,
    names: list[str],
    beta: float,
    global_thresholds: npt.ArrayLike,
    global_temperature: float,
    settings: EvaluationSettings,
) -> dict[str, Any] | None:
    """Thresholds and temperature per validation language, the measured fallback, and how
    each test language fares with them against the global fit."""
    options = settings.language_calibration
    if not options.enabled:
        return None
    section = fit_language_calibration(
        *val,
        beta=beta,
        label_names=names,
        min_positives=options.min_positives,
        min_examples=options.min_examples,
    )
    section["test"] = compare_on_test(
        section,
        *test,
        label_names=names,
        global_thresholds=global_thresholds,
        global_temperature=global_temperature,
    )
    return section


def _scalar_thresholds(section: dict[str, Any] | None) -> dict[str, Any] | None:
    """Risk has one label: its thresholds are numbers, like ``threshold.value``."""
    if section is None:
        return None
    for entry in (*section["languages"].values(), section["fallback"]):
        entry["thresholds"] = float(entry["thresholds"]["risk"])
    return section


def _calibrated_threshold(threshold: float, temperature: float) -> float:
    """The same decision in calibrated-probability space (temperature scaling is monotone)."""
    logit = float(logits_from_probabilities(np.asarray([threshold]))[0])
    return float(apply_temperature(np.asarray([logit]), temperature)[0])


def _robustness(
    texts: list[str],
    languages: list[str],
    decide: Callable[[npt.NDArray[np.int64], list[str]], npt.NDArray[Any]],
    settings: EvaluationSettings,
) -> dict[str, Any]:
    results = run_suite(texts, languages, decide, seed=settings.seed)
    return {kind: result.to_dict() for kind, result in results.items()}


def _sample(count: int, limit: int, seed: int) -> npt.NDArray[np.int64]:
    if count <= limit:
        return np.arange(count, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


# --------------------------------------------------------------------------------------------
# Indicators


def evaluate_indicators(
    scorer: Scorer,
    val_table: pa.Table,
    test_table: pa.Table,
    *,
    context_messages: int,
    settings: EvaluationSettings,
    baseline: Scorer | None = None,
) -> dict[str, Any]:
    """Evaluate a message-level indicator classifier on ``test_table``."""
    names = scorer.label_names

    def examples(table: pa.Table, prefix: str, limit: int | None) -> list[Any]:
        return indicator_examples(
            table,
            context_messages=context_messages,
            prefix=prefix,
            max_examples=limit,
            seed=settings.seed,
        )

    val = examples(val_table, scorer.text_prefix, settings.max_val_messages)
    test = examples(test_table, scorer.text_prefix, settings.max_messages)
    val_labels = np.asarray([example.labels for example in val], dtype=np.int8)
    test_labels = np.asarray([example.labels for example in test], dtype=np.int8)
    logger.info("scoring %d validation and %d test messages", len(val), len(test))
    val_scores = scorer.scores([example.text for example in val])
    test_scores = scorer.scores([example.text for example in test])

    thresholds = best_thresholds_per_indicator(
        val_labels, val_scores, beta=settings.indicator_threshold_beta, label_names=names
    )
    overall = indicator_metrics(test_labels, test_scores, thresholds, label_names=names)
    clusters = [example.conversation_id for example in test]

    def headline(indices: npt.NDArray[np.int64]) -> dict[str, float]:
        scored = indicator_metrics(
            test_labels[indices], test_scores[indices], thresholds, label_names=names
        )
        return {name: scored[name] for name in INDICATOR_HEADLINE}

    predicted = (test_scores >= thresholds).astype(np.int8)
    confusion = multilabel_confusion_matrix(test_labels, predicted)
    per_indicator = [
        {
            "indicator": name,
            "precision": overall[f"precision/{name}"],
            "recall": overall[f"recall/{name}"],
            "f1": overall[f"f1/{name}"],
            "support": int(overall[f"support/{name}"]),
            "threshold": float(thresholds[index]),
            "tn": int(confusion[index][0, 0]),
            "fp": int(confusion[index][0, 1]),
            "fn": int(confusion[index][1, 0]),
            "tp": int(confusion[index][1, 1]),
        }
        for index, name in enumerate(names)
    ]
    calibration, _ = _calibration(val_labels, val_scores, test_labels, test_scores)
    views = conversations_by_id(test_table)

    def decide(indices: npt.NDArray[np.int64], texts: list[str]) -> npt.NDArray[Any]:
        rendered = []
        for index, text in zip(indices.tolist(), texts, strict=True):
            example = test[robust_rows[index]]
            view = views[example.conversation_id]
            first = max(0, example.message_index - context_messages)
            authors = view.authors[first : example.message_index + 1]
            window = [*view.texts[first : example.message_index], text]
            rendered.append(render_messages(authors, window, prefix=scorer.text_prefix))
        return (scorer.scores(rendered) >= thresholds).astype(np.int8)

    robust_rows = _sample(len(test), settings.robustness_samples, settings.seed).tolist()
    targets = [
        views[test[row].conversation_id].texts[test[row].message_index] for row in robust_rows
    ]

    section: dict[str, Any] = {
        "threshold": {
            "value": dict(zip(names, (float(t) for t in thresholds), strict=True)),
            "chosen_on": "val",
            "objective": f"f{settings.indicator_threshold_beta:g}",
            "calibrated": {
                name: _calibrated_threshold(float(t), calibration["temperature"])
                for name, t in zip(names, thresholds, strict=True)
            },
        },
        "metrics": _intervals(headline, clusters, settings),
        "per_indicator": per_indicator,
        "per_language": _per_language(
            [example.language for example in test], clusters, headline, settings
        ),
        "calibration": calibration,
        "temperature": calibration["temperature"],
        "language_calibration": _language_calibration(
            (val_labels, val_scores, [example.language for example in val]),
            (test_labels, test_scores, [example.language for example in test]),
            names=names,
            beta=settings.indicator_threshold_beta,
            global_thresholds=thresholds,
            global_temperature=calibration["temperature"],
            settings=settings,
        ),
        # "Any indicator" is the message-level decision a reviewer acts on.
        "fairness": _fairness(
            np.asarray(test_labels.any(axis=1), dtype=np.int8),
            np.asarray(predicted.any(axis=1), dtype=np.int8),
            views,
            clusters,
            settings,
        ),
        "robustness": _robustness(
            targets, [test[row].language for row in robust_rows], decide, settings
        ),
        "examples": {"val": len(val), "test": len(test)},
        "latency_inputs": [example.text for example in test[:200]],
    }
    if baseline is not None:
        base_val = examples(val_table, baseline.text_prefix, settings.max_val_messages)
        base_test = examples(test_table, baseline.text_prefix, settings.max_messages)
        base_thresholds = best_thresholds_per_indicator(
            val_labels,
            baseline.scores([e.text for e in base_val]),
            beta=settings.indicator_threshold_beta,
            label_names=names,
        )
        scored = indicator_metrics(
            test_labels,
            baseline.scores([e.text for e in base_test]),
            base_thresholds,
            label_names=names,
        )
        section["baseline"] = {name: scored[name] for name in INDICATOR_HEADLINE}
    return section


# --------------------------------------------------------------------------------------------
# Risk


def _last_windows(views: dict[str, ConversationView], window: int, prefix: str) -> list[str]:
    return [
        render_messages(view.authors[-window:], view.texts[-window:], prefix=prefix)
        for view in views.values()
    ]


def _labelled(views: dict[str, ConversationView]) -> dict[str, ConversationView]:
    return {cid: view for cid, view in views.items() if view.risk is not None}


def _stratified_sample(labels: npt.NDArray[np.int64], limit: int | None, seed: int) -> list[int]:
    """Up to ``limit`` rows, both classes in their proportions (at least one of each)."""
    if limit is None or limit >= len(labels):
        return list(range(len(labels)))
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    positives = np.flatnonzero(labels == 1)
    negatives = np.flatnonzero(labels == 0)
    take_positive = min(len(positives), max(1, round(limit * len(positives) / len(labels))))
    chosen.extend(rng.choice(positives, size=take_positive, replace=False).tolist())
    take_negative = min(len(negatives), limit - take_positive)
    chosen.extend(rng.choice(negatives, size=take_negative, replace=False).tolist())
    return sorted(chosen)


def evaluate_risk(
    scorer: Scorer,
    val_table: pa.Table,
    test_table: pa.Table,
    *,
    window: int,
    settings: EvaluationSettings,
    baseline: Scorer | None = None,
) -> dict[str, Any]:
    """Evaluate a conversation risk model: whole conversations, and after every message."""
    val_views = _labelled(conversations_by_id(val_table))
    test_views = _labelled(conversations_by_id(test_table))
    if not val_views or not test_views:
        raise ValueError("validation and test splits need conversations with a risk label")
    val_labels = np.asarray([view.risk for view in val_views.values()], dtype=np.int64)
    test_labels = np.asarray([view.risk for view in test_views.values()], dtype=np.int64)
    conversation_ids = list(test_views)
    logger.info("scoring %d validation and %d test conversations", len(val_views), len(test_views))
    val_scores = scorer.scores(_last_windows(val_views, window, scorer.text_prefix))[:, 0]
    test_windows = _last_windows(test_views, window, scorer.text_prefix)
    test_scores = scorer.scores(test_windows)[:, 0]
    threshold = best_threshold(val_labels, val_scores, beta=settings.threshold_beta)

    def headline(indices: npt.NDArray[np.int64]) -> dict[str, float]:
        scored = risk_metrics(test_labels[indices], test_scores[indices], threshold)
        return {name: scored[name] for name in RISK_HEADLINE}

    calibration, _ = _calibration(val_labels, val_scores, test_labels, test_scores)
    decisions = (test_scores >= threshold).astype(np.int8)

    # Early detection: score chosen conversations after every message (the costly part).
    early_rows = _stratified_sample(test_labels, settings.early_conversations, settings.seed)
    early_ids = [conversation_ids[row] for row in early_rows]
    early_labels = test_labels[early_rows]
    per_message: list[npt.NDArray[np.float64]] = []
    for cid in early_ids:
        view = test_views[cid]
        windows = windows_after_each_message(
            view.authors, view.texts, window=window, prefix=scorer.text_prefix
        )
        per_message.append(scorer.scores(windows)[:, 0])
    warned = latencies(per_message, threshold, settings.skepticism)

    def early(indices: npt.NDArray[np.int64]) -> dict[str, float]:
        scored = early_detection_metrics([warned[i] for i in indices], early_labels[indices])
        return {name: scored[name] for name in EARLY_HEADLINE}

    at_skepticism = early_detection_metrics(warned, early_labels)
    curve_rows = _stratified_sample(early_labels, settings.curve_conversations, settings.seed)
    curves = [
        {
            "conversation": f"c{position + 1}",
            "language": test_views[early_ids[row]].language,
            "risk": int(early_labels[row]),
            "scores": [float(score) for score in per_message[row]],
            "latency": warned[row],
        }
        for position, row in enumerate(curve_rows)
    ]

    robust_rows = _sample(
        len(conversation_ids), settings.risk_robustness_samples, settings.seed
    ).tolist()

    def decide(indices: npt.NDArray[np.int64], texts: list[str]) -> npt.NDArray[Any]:
        rendered = []
        for index, joined in zip(indices.tolist(), texts, strict=True):
            view = test_views[conversation_ids[robust_rows[index]]]
            messages = joined.split(_MESSAGE_SEPARATOR)
            authors = view.authors[-window:]
            if len(messages) != len(authors):  # a perturbation must not merge or split messages
                messages = view.texts[-window:]
            rendered.append(render_messages(authors, messages, prefix=scorer.text_prefix))
        return (scorer.scores(rendered)[:, 0] >= threshold).astype(np.int8)

    robust_texts = [
        _MESSAGE_SEPARATOR.join(test_views[conversation_ids[row]].texts[-window:])
        for row in robust_rows
    ]
    section: dict[str, Any] = {
        "threshold": {
            "value": float(threshold),
            "chosen_on": "val",
            "objective": f"f{settings.threshold_beta:g}",
            "calibrated": _calibrated_threshold(threshold, calibration["temperature"]),
        },
        "metrics": {
            **_intervals(headline, conversation_ids, settings),
            **_intervals(early, early_ids, settings),
        },
        "per_language": _per_language(
            [view.language for view in test_views.values()], conversation_ids, headline, settings
        ),
        "early_detection": {
            "skepticism": settings.skepticism,
            "conversations": len(early_ids),
            "messages_scored": int(sum(len(scores) for scores in per_message)),
            "by_skepticism": {
                str(s): metrics
                for s, metrics in early_detection_by_skepticism(
                    per_message, early_labels, threshold
                ).items()
            },
            **{
                name: at_skepticism[name]
                for name in ("f_latency", "erde_5", "erde_50", "speed", "median_latency", "f1")
            },
            "curves": curves,
        },
        "calibration": calibration,
        "temperature": calibration["temperature"],
        "language_calibration": _scalar_thresholds(
            _language_calibration(
                (val_labels, val_scores, [view.language for view in val_views.values()]),
                (test_labels, test_scores, [view.language for view in test_views.values()]),
                names=["risk"],
                beta=settings.threshold_beta,
                global_thresholds=[threshold],
                global_temperature=calibration["temperature"],
                settings=settings,
            )
        ),
        "fairness": _fairness(test_labels, decisions, test_views, conversation_ids, settings),
        "robustness": _robustness(
            robust_texts,
            [test_views[conversation_ids[r]].language for r in robust_rows],
            decide,
            settings,
        ),
        "examples": {"val": len(val_views), "test": len(test_views)},
        "latency_inputs": test_windows[:200],
    }
    if baseline is not None:
        base_threshold = best_threshold(
            val_labels,
            baseline.scores(_last_windows(val_views, window, baseline.text_prefix))[:, 0],
            beta=settings.threshold_beta,
        )
        scored = risk_metrics(
            test_labels,
            baseline.scores(_last_windows(test_views, window, baseline.text_prefix))[:, 0],
            base_threshold,
        )
        section["baseline"] = {name: scored[name] for name in RISK_HEADLINE}
    return section
