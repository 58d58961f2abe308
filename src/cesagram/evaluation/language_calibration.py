"""Decision thresholds and temperatures per language, and a measured fallback for the rest.

A model's ranking often survives a change of language while its score scale does not: a
threshold chosen on pooled validation data can flag half of one language's messages and miss
most of another's. Where a language has enough validation labels, its own threshold (per
label) and temperature are fitted on its rows. Where it has none, a fallback is used, chosen
by measurement rather than assumed:

- ``pooled``: the threshold that maximises F-beta on all validation rows together (what the
  evaluation's global threshold is);
- ``language_balanced``: the threshold that maximises the **mean of the per-language F-beta**,
  so a language with many rows cannot pull it to its own scale.

The measurement is leave-one-language-out on validation data: for every language with labels,
both candidates are fitted on the other languages and scored on the held-out one, exactly the
situation of a language the model will meet without labels. The candidate with the higher mean
F-beta wins (a tie keeps ``pooled``, the simpler). The fallback temperature is measured the same
way (a temperature fitted on the other languages against none, by the held-out language's ECE).

All thresholds are on the model's raw score scale, like the evaluation's global ones.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cesagram.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    logits_from_probabilities,
)
from cesagram.evaluation.metrics import best_threshold

logger = logging.getLogger(__name__)

POOLED = "pooled"
LANGUAGE_BALANCED = "language_balanced"
NO_TEMPERATURE = "none"
# Candidate thresholds per label for the language-balanced fit: the distinct scores, thinned
# to this many quantiles when there are more (the F-beta curve is flat between neighbours).
MAX_CANDIDATES = 512

Floats = npt.NDArray[np.float64]
Labels = npt.NDArray[np.int8]


@dataclass(frozen=True)
class ValidationRows:
    """Validation labels and raw scores, ``[n, labels]`` each, and each row's language."""

    labels: Labels
    scores: Floats
    languages: npt.NDArray[np.str_]

    @classmethod
    def of(
        cls, labels: npt.ArrayLike, scores: npt.ArrayLike, languages: Sequence[str]
    ) -> ValidationRows:
        """Checked, two-dimensional copies (a 1-D risk column becomes ``[n, 1]``)."""
        label_array = np.asarray(labels, dtype=np.int8)
        score_array = np.asarray(scores, dtype=np.float64)
        if label_array.ndim == 1:
            label_array, score_array = label_array[:, None], score_array.reshape(-1, 1)
        language_array = np.asarray(list(languages), dtype=np.str_)
        if label_array.shape != score_array.shape or len(language_array) != len(label_array):
            raise ValueError(
                f"labels {label_array.shape}, scores {score_array.shape} and "
                f"{len(language_array)} languages do not describe the same rows"
            )
        return cls(label_array, score_array, language_array)

    def rows(self, mask: npt.NDArray[np.bool_]) -> ValidationRows:
        """The rows where ``mask`` holds."""
        return ValidationRows(self.labels[mask], self.scores[mask], self.languages[mask])

    def positives(self, language: str) -> npt.NDArray[np.int64]:
        """Positive count per label within one language."""
        return np.asarray(self.labels[self.languages == language].sum(axis=0), dtype=np.int64)


def f_beta(tp: Floats, fp: Floats, fn: Floats, beta: float) -> Floats:
    """F-beta from counts (arrays broadcast); 0 where it is undefined (no positives flagged
    nor present), as scikit-learn's ``zero_division=0``."""
    weight = beta * beta
    numerator = (1 + weight) * tp
    denominator = numerator + weight * fn + fp
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def pooled_thresholds(rows: ValidationRows, beta: float) -> Floats:
    """Per label, the threshold maximising F-beta on all rows together."""
    return np.asarray(
        [
            best_threshold(rows.labels[:, j], rows.scores[:, j], beta=beta)
            for j in range(rows.labels.shape[1])
        ],
        dtype=np.float64,
    )


def language_balanced_thresholds(rows: ValidationRows, beta: float) -> Floats:
    """Per label, the threshold maximising the mean F-beta over languages with positives.

    A label without positives in any language keeps the pooled fit's default.
    Among equally good thresholds the highest wins, as in `best_threshold`.
    """
    chosen = pooled_thresholds(rows, beta)
    for j in range(rows.labels.shape[1]):
        languages = [
            language
            for language in np.unique(rows.languages)
            if rows.labels[rows.languages == language, j].any()
        ]
        if not languages:
            continue
        candidates = np.unique(rows.scores[:, j])
        if candidates.size > MAX_CANDIDATES:
            candidates = np.unique(
                np.quantile(rows.scores[:, j], np.linspace(0.0, 1.0, MAX_CANDIDATES))
            )
        per_language = []
        for language in languages:
            mask = rows.languages == language
            truth = rows.labels[mask, j].astype(bool)
            flagged = rows.scores[mask, j][:, None] >= candidates[None, :]
            tp = (flagged & truth[:, None]).sum(axis=0).astype(np.float64)
            fp = flagged.sum(axis=0) - tp
            fn = truth.sum() - tp
            per_language.append(f_beta(tp, fp, fn, beta))
        mean = np.mean(per_language, axis=0)
        best = np.flatnonzero(mean == mean.max())
        chosen[j] = float(candidates[best[-1]])
    return chosen


def held_out_f(rows: ValidationRows, thresholds: Floats, beta: float) -> float:
    """Mean F-beta over the labels with positives in ``rows`` (NaN when none has any)."""
    truth = rows.labels.astype(bool)
    flagged = rows.scores >= thresholds[None, :]
    tp = (flagged & truth).sum(axis=0).astype(np.float64)
    fp = flagged.sum(axis=0) - tp
    fn = truth.sum(axis=0) - tp
    present = truth.any(axis=0)
    if not present.any():
        return float("nan")
    return float(np.mean(f_beta(tp, fp, fn, beta)[present]))


def _temperature(rows: ValidationRows) -> float:
    return fit_temperature(logits_from_probabilities(rows.scores), rows.labels)


def ece_at(rows: ValidationRows, temperature: float) -> float:
    """ECE of the rows' scores after temperature scaling."""
    calibrated = apply_temperature(logits_from_probabilities(rows.scores), temperature)
    return expected_calibration_error(rows.labels, calibrated)


def measure_fallbacks(rows: ValidationRows, *, beta: float, min_positives: int) -> dict[str, Any]:
    """Leave-one-language-out: each fallback candidate fitted without a language, scored on it.

    Returns ``per_language`` (held-out F-beta per threshold method and ECE per temperature
    method), their means, the held-out languages and the chosen methods with the reason.
    """
    held_out = [
        str(language)
        for language in np.unique(rows.languages)
        if rows.positives(language).max(initial=0) >= min_positives
        and (rows.languages != language).any()
    ]
    if len(held_out) < 2:
        return {
            "held_out_languages": held_out,
            "per_language": {},
            "threshold_method": POOLED,
            "temperature_method": POOLED,
            "reason": (
                f"{len(held_out)} language(s) with >= {min_positives} validation positives: "
                "too few to hold one out, so the pooled fit is used"
            ),
        }
    per_language: dict[str, dict[str, float]] = {}
    for language in held_out:
        target = rows.rows(rows.languages == language)
        rest = rows.rows(rows.languages != language)
        per_language[language] = {
            POOLED: held_out_f(target, pooled_thresholds(rest, beta), beta),
            LANGUAGE_BALANCED: held_out_f(target, language_balanced_thresholds(rest, beta), beta),
            f"ece_{POOLED}": ece_at(target, _temperature(rest)),
            f"ece_{NO_TEMPERATURE}": ece_at(target, 1.0),
        }
    means = {
        name: float(np.mean([scores[name] for scores in per_language.values()]))
        for name in next(iter(per_language.values()))
    }
    threshold_method = LANGUAGE_BALANCED if means[LANGUAGE_BALANCED] > means[POOLED] else POOLED
    temperature_method = (
        NO_TEMPERATURE if means[f"ece_{NO_TEMPERATURE}"] < means[f"ece_{POOLED}"] else POOLED
    )
    return {
        "held_out_languages": held_out,
        "per_language": per_language,
        "mean": means,
        "threshold_method": threshold_method,
        "temperature_method": temperature_method,
        "reason": (
            f"leave-one-language-out over {len(held_out)} languages: mean held-out F{beta:g} "
            f"{means[POOLED]:.4f} pooled vs {means[LANGUAGE_BALANCED]:.4f} language-balanced; "
            f"mean held-out ECE {means[f'ece_{POOLED}']:.4f} with a pooled temperature vs "
            f"{means[f'ece_{NO_TEMPERATURE}']:.4f} without"
        ),
    }


def fit_language_calibration(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    languages: Sequence[str],
    *,
    beta: float,
    label_names: Sequence[str],
    min_positives: int,
    min_examples: int,
) -> dict[str, Any]:
    """Thresholds and a temperature per validation language, and the measured fallback.

    A label's threshold is fitted on a language's rows when that language has at least
    ``min_positives`` positives (and one negative) for it; otherwise the fallback's threshold
    is used for that label. A language's temperature is fitted when it has at least
    ``min_examples`` rows holding both classes; otherwise the fallback's temperature.

    Args:
        labels: validation 0/1 labels, ``[n, labels]`` (or ``[n]`` for one label).
        scores: raw validation scores of the same shape.
        languages: each row's language code.
        beta: F-beta's recall weight, as for the global threshold.
        label_names: the label columns' names (thresholds are reported by name).
        min_positives: validation positives a language needs for its own threshold.
        min_examples: validation rows a language needs for its own temperature.

    Returns:
        A JSON-ready section: ``languages`` (per language: ``thresholds`` by label name,
        ``temperature``, ``fitted_thresholds``, ``fitted_temperature``, ``val_examples``) and
        ``fallback`` (``method``, ``thresholds``, ``temperature``, ``temperature_method``,
        ``reason`` and the leave-one-language-out ``measured`` figures).
    """
    rows = ValidationRows.of(labels, scores, languages)
    names = list(label_names)
    if rows.labels.shape[1] != len(names):
        raise ValueError(f"{rows.labels.shape[1]} label columns for {len(names)} names {names}")
    measured = measure_fallbacks(rows, beta=beta, min_positives=min_positives)
    fallback_thresholds = (
        language_balanced_thresholds(rows, beta)
        if measured["threshold_method"] == LANGUAGE_BALANCED
        else pooled_thresholds(rows, beta)
    )
    fallback_temperature = (
        1.0 if measured["temperature_method"] == NO_TEMPERATURE else _temperature(rows)
    )
    per_language: dict[str, Any] = {}
    for language in (str(value) for value in np.unique(rows.languages)):
        own = rows.rows(rows.languages == language)
        positives = own.labels.sum(axis=0)
        negatives = len(own.labels) - positives
        thresholds = fallback_thresholds.copy()
        fitted = []
        for j, name in enumerate(names):
            if positives[j] >= min_positives and negatives[j] > 0:
                thresholds[j] = best_threshold(own.labels[:, j], own.scores[:, j], beta=beta)
                fitted.append(name)
        both_classes = bool(0 < own.labels.sum() < own.labels.size)
        fit_own_temperature = len(own.labels) >= min_examples and both_classes
        per_language[language] = {
            "thresholds": dict(zip(names, thresholds.tolist(), strict=True)),
            "temperature": _temperature(own) if fit_own_temperature else fallback_temperature,
            "fitted_thresholds": fitted,
            "fitted_temperature": fit_own_temperature,
            "val_examples": len(own.labels),
        }
    logger.info(
        "language calibration: %d languages, fallback %s (%s)",
        len(per_language),
        measured["threshold_method"],
        measured["reason"],
    )
    return {
        "beta": beta,
        "min_positives": min_positives,
        "min_examples": min_examples,
        "languages": per_language,
        "fallback": {
            "method": measured["threshold_method"],
            "thresholds": dict(zip(names, fallback_thresholds.tolist(), strict=True)),
            "temperature": fallback_temperature,
            "temperature_method": measured["temperature_method"],
            "reason": measured["reason"],
            "measured": {key: measured[key] for key in ("held_out_languages", "per_language")}
            | ({"mean": measured["mean"]} if "mean" in measured else {}),
        },
    }


def thresholds_for(section: dict[str, Any], language: str, names: Sequence[str]) -> Floats:
    """A language's thresholds in label order: its own entry, else the fallback's."""
    entry = section["languages"].get(language, section["fallback"])
    return np.asarray([entry["thresholds"][name] for name in names], dtype=np.float64)


def temperature_for(section: dict[str, Any], language: str) -> float:
    """A language's temperature: its own entry's, else the fallback's."""
    return float(section["languages"].get(language, section["fallback"])["temperature"])


def compare_on_test(
    section: dict[str, Any],
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    languages: Sequence[str],
    *,
    label_names: Sequence[str],
    global_thresholds: npt.ArrayLike,
    global_temperature: float,
) -> dict[str, dict[str, Any]]:
    """Per test language: F-beta and ECE with the global fit against the language's own.

    F-beta is the mean over labels with positives in that language's test rows (the
    section's ``beta``); ``calibration`` says whether the language's own entry or the fallback
    was used, as the service would.
    """
    rows = ValidationRows.of(labels, scores, languages)
    names = list(label_names)
    beta = float(section["beta"])
    pooled = np.asarray(global_thresholds, dtype=np.float64).reshape(-1)
    result = {}
    for language in (str(value) for value in np.unique(rows.languages)):
        own = rows.rows(rows.languages == language)
        result[language] = {
            "calibration": language if language in section["languages"] else "fallback",
            "test_examples": len(own.labels),
            "f_global": held_out_f(own, pooled, beta),
            "f_language": held_out_f(own, thresholds_for(section, language, names), beta),
            "ece_global": ece_at(own, global_temperature),
            "ece_language": ece_at(own, temperature_for(section, language)),
        }
    return result
