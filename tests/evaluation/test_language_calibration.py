"""Per-language thresholds and temperatures, and the measured fallback, on crafted scores."""

from __future__ import annotations

import numpy as np
import pytest

from cesagram.evaluation.language_calibration import (
    LANGUAGE_BALANCED,
    POOLED,
    ValidationRows,
    compare_on_test,
    fit_language_calibration,
    language_balanced_thresholds,
    measure_fallbacks,
    pooled_thresholds,
)

NAMES = ["grooming", "rare"]


def crafted() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A large language scored high (en) and two small ones scored low (de, fr).

    Label ``grooming``: en negatives 0.5, positives 0.9 (150 + 50 rows); de and fr negatives
    0.1, positives 0.4 (15 + 5 rows each). Label ``rare`` has positives in en only.
    """
    labels, scores, languages = [], [], []

    def add(language: str, negatives: int, positives: int, low: float, high: float) -> None:
        for index in range(negatives + positives):
            positive = index >= negatives
            rare = language == "en" and index % 4 == 0
            labels.append([int(positive), int(rare)])
            scores.append([high if positive else low, 0.8 if rare else 0.2])
            languages.append(language)

    add("en", 150, 50, 0.5, 0.9)
    add("de", 15, 5, 0.1, 0.4)
    add("fr", 15, 5, 0.1, 0.4)
    return np.asarray(labels), np.asarray(scores), languages


def test_pooled_threshold_follows_the_large_language_balanced_one_serves_all() -> None:
    labels, scores, languages = crafted()
    rows = ValidationRows.of(labels, scores, languages).rows(np.asarray(languages) != "de")
    # Pooled over en + fr: 0.9 flags en's 50 positives and misses fr's 5 (F1 100/105), better
    # than 0.4, which also flags en's 150 negatives.
    assert pooled_thresholds(rows, beta=1.0)[0] == pytest.approx(0.9)
    # Language-balanced: at 0.4 fr's F1 is 1 and en's 0.4 (mean 0.7) against 0.5 at 0.9.
    assert language_balanced_thresholds(rows, beta=1.0)[0] == pytest.approx(0.4)


def test_leave_one_language_out_picks_the_fallback_that_transfers() -> None:
    labels, scores, languages = crafted()
    measured = measure_fallbacks(
        ValidationRows.of(labels, scores, languages), beta=1.0, min_positives=5
    )
    assert measured["held_out_languages"] == ["de", "en", "fr"]
    # Held out, de and fr get F1 0 from the pooled threshold (0.9) and 1 from the balanced one.
    assert measured["per_language"]["de"][POOLED] == pytest.approx(0.0)
    assert measured["per_language"]["de"][LANGUAGE_BALANCED] == pytest.approx(1.0)
    assert measured["threshold_method"] == LANGUAGE_BALANCED
    assert "leave-one-language-out over 3 languages" in measured["reason"]


def test_each_language_gets_its_own_threshold_where_it_has_labels() -> None:
    labels, scores, languages = crafted()
    section = fit_language_calibration(
        labels,
        scores,
        languages,
        beta=1.0,
        label_names=NAMES,
        min_positives=5,
        min_examples=30,
    )
    en, de = section["languages"]["en"], section["languages"]["de"]
    # Separable within each language: the highest threshold keeping F1 = 1 is its lowest
    # positive score.
    assert en["thresholds"]["grooming"] == pytest.approx(0.9)
    assert de["thresholds"]["grooming"] == pytest.approx(0.4)
    assert en["fitted_thresholds"] == ["grooming", "rare"]
    # de has no "rare" positives: that label's threshold is the fallback's.
    assert de["fitted_thresholds"] == ["grooming"]
    assert de["thresholds"]["rare"] == section["fallback"]["thresholds"]["rare"]
    # 20 validation rows < min_examples: de's temperature is the fallback's.
    assert en["fitted_temperature"] and not de["fitted_temperature"]
    assert de["temperature"] == section["fallback"]["temperature"]
    assert de["val_examples"] == 20
    assert section["fallback"]["method"] == LANGUAGE_BALANCED


def test_too_few_labelled_languages_keep_the_pooled_fit() -> None:
    labels, scores, languages = crafted()
    only_en = np.asarray(languages) == "en"
    section = fit_language_calibration(
        labels[only_en],
        scores[only_en],
        [language for language in languages if language == "en"],
        beta=1.0,
        label_names=NAMES,
        min_positives=5,
        min_examples=30,
    )
    assert section["fallback"]["method"] == POOLED
    assert "too few to hold one out" in section["fallback"]["reason"]


def test_the_test_comparison_uses_own_entries_and_the_fallback_elsewhere() -> None:
    labels, scores, languages = crafted()
    section = fit_language_calibration(
        labels, scores, languages, beta=1.0, label_names=NAMES, min_positives=5, min_examples=30
    )
    # A language never seen in validation ("nl", scored like de) gets the fallback.
    test_languages = ["nl" if language == "fr" else language for language in languages]
    compared = compare_on_test(
        section,
        labels,
        scores,
        test_languages,
        label_names=NAMES,
        global_thresholds=[0.9, 0.8],
        global_temperature=1.0,
    )
    assert compared["de"]["calibration"] == "de"
    assert compared["nl"]["calibration"] == "fallback"
    # The global (en-dominated) 0.9 misses every de positive; de's own 0.4 finds them all.
    assert compared["de"]["f_global"] == pytest.approx(0.0)
    assert compared["de"]["f_language"] == pytest.approx(1.0)
    assert compared["nl"]["f_language"] == pytest.approx(1.0)
    assert compared["en"]["test_examples"] == 200


def test_rows_that_do_not_line_up_are_refused() -> None:
    with pytest.raises(ValueError, match="do not describe the same rows"):
        ValidationRows.of(np.zeros((3, 2)), np.zeros((3, 2)), ["en", "de"])
