from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from cesagram.evaluation.fairness import GROUP_METRICS, fairness_report, group_metrics

# Two languages x 6 rows, decisions already thresholded.
#   en: true [1,1,1,0,0,0] pred [1,1,0,1,0,0] -> TP 2, FN 1, FP 1, TN 2
#       TPR 2/3, FPR 1/3, F1 = 2*2 / (2*2 + 1 + 1) = 2/3, selection rate 3/6 = 1/2
#   nl: true [1,1,0,0,0,0] pred [1,0,1,1,1,0] -> TP 1, FN 1, FP 3, TN 1
#       TPR 1/2, FPR 3/4, F1 = 2*1 / (2*1 + 3 + 1) = 1/3, selection rate 4/6 = 2/3
#   TPR gap = 2/3 - 1/2 = 1/6; FPR gap = 3/4 - 1/3 = 5/12
#   equalized-odds difference = max(1/6, 5/12) = 5/12
#   demographic-parity difference = 2/3 - 1/2 = 1/6
#   lowest TPR: nl, 1/2
LANGUAGE = np.array(["en"] * 6 + ["nl"] * 6)
Y_TRUE = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0])
Y_PRED = np.array([1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 1, 0])
EXPECTED = {
    "en": {"tpr": 2 / 3, "fpr": 1 / 3, "f1": 2 / 3, "selection_rate": 1 / 2},
    "nl": {"tpr": 1 / 2, "fpr": 3 / 4, "f1": 1 / 3, "selection_rate": 2 / 3},
}

# Plus three French rows, all negative and all flagged:
#   fr: true [0,0,0] pred [1,1,1] -> TP 0, FP 3, TN 0: TPR undefined (NaN, no positives),
#       FPR 1, F1 = 0 / (0 + 3) = 0, selection rate 1
#   TPR gap over groups with positives (en, nl) = 1/6; FPR gap = 1 - 1/3 = 2/3
#   equalized-odds difference = max(1/6, 2/3) = 2/3
#   demographic-parity difference = 1 - 1/2 = 1/2
LANGUAGE_FR = np.concatenate([LANGUAGE, ["fr"] * 3])
Y_TRUE_FR = np.concatenate([Y_TRUE, [0, 0, 0]])
Y_PRED_FR = np.concatenate([Y_PRED, [1, 1, 1]])


def _report(**kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"n_resamples": 200, "seed": 0} | kwargs
    return fairness_report(Y_TRUE, Y_PRED, {"language": LANGUAGE}, **options)


def test_group_metrics_match_the_hand_computed_rates() -> None:
    table = group_metrics(Y_TRUE, Y_PRED, LANGUAGE)

    assert list(table.index) == ["en", "nl"]
    assert table.index.name == "group"
    for group, expected in EXPECTED.items():
        for metric, value in expected.items():
            assert table.loc[group, metric] == pytest.approx(value), (group, metric)
    assert table["count"].tolist() == [6, 6]
    assert table["positives"].tolist() == [3, 2]
    assert table["count"].dtype == np.int64
    assert table["tpr"].dtype == np.float64


def test_rates_without_their_class_are_nan_not_zero() -> None:
    # fr has no positives (TPR undefined), de no negatives (FPR undefined).
    table = group_metrics([0, 0, 1, 1], [1, 0, 1, 0], ["fr", "fr", "de", "de"])

    assert table["tpr"].isna()["fr"]
    assert table.loc["fr", "fpr"] == pytest.approx(0.5)
    assert table.loc["fr", "f1"] == 0.0  # no positives and one false alarm: F1 0, not NaN
    assert table["fpr"].isna()["de"]
    assert table.loc["de", "tpr"] == pytest.approx(0.5)


def test_null_sensitive_values_form_the_unknown_group() -> None:
    sensitive = np.array(["en", None, "en", float("nan"), pd.NA, "nl"], dtype=object)

    table = group_metrics([1, 0, 0, 1, 0, 0], [1, 1, 0, 0, 0, 0], sensitive)

    assert list(table.index) == ["en", "nl", "unknown"]
    assert table.loc["unknown", "count"] == 3
    assert table.loc["unknown", "positives"] == 1
    assert table.loc["unknown", "tpr"] == 0.0
    assert table.loc["unknown", "fpr"] == pytest.approx(0.5)


def test_report_gives_per_group_metrics_and_gaps() -> None:
    column = _report()["language"]

    groups = {entry["group"]: entry for entry in column["groups"]}
    assert list(groups) == ["en", "nl"]
    assert (groups["en"]["count"], groups["en"]["positives"]) == (6, 3)
    assert (groups["nl"]["count"], groups["nl"]["positives"]) == (6, 2)
    for group, expected in EXPECTED.items():
        assert groups[group]["in_gaps"] is True
        for metric in GROUP_METRICS:
            assert groups[group][metric]["estimate"] == pytest.approx(expected[metric])
    assert column["tpr_gap"] == pytest.approx(1 / 6)
    assert column["fpr_gap"] == pytest.approx(5 / 12)
    assert column["equalized_odds_difference"] == pytest.approx(5 / 12)
    assert column["demographic_parity_difference"] == pytest.approx(1 / 6)
    assert column["min_tpr"] == pytest.approx(1 / 2)
    assert column["min_tpr_group"] == "nl"


def test_gaps_agree_with_fairlearn_when_every_rate_is_defined() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, 400)
    y_pred = rng.integers(0, 2, 400)
    language = rng.choice(["nl", "fr", "el", "it", "lt"], 400)

    column = fairness_report(y_true, y_pred, {"language": language}, n_resamples=10)["language"]

    assert column["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(y_true, y_pred, sensitive_features=language)
    )
    assert column["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y_true, y_pred, sensitive_features=language)
    )
    assert column["equalized_odds_difference"] == max(column["tpr_gap"], column["fpr_gap"])


def test_crafted_gaps_agree_with_fairlearn() -> None:
    assert equalized_odds_difference(Y_TRUE, Y_PRED, sensitive_features=LANGUAGE) == (
        pytest.approx(5 / 12)
    )
    assert demographic_parity_difference(Y_TRUE, Y_PRED, sensitive_features=LANGUAGE) == (
        pytest.approx(1 / 6)
    )


def test_a_group_without_positives_is_left_out_of_the_tpr_gap() -> None:
    column = fairness_report(Y_TRUE_FR, Y_PRED_FR, {"language": LANGUAGE_FR}, n_resamples=50)[
        "language"
    ]

    fr = next(entry for entry in column["groups"] if entry["group"] == "fr")
    assert math.isnan(fr["tpr"]["estimate"])
    assert math.isnan(fr["tpr"]["low"]) and math.isnan(fr["tpr"]["high"])
    assert fr["fpr"]["estimate"] == 1.0
    assert fr["f1"]["estimate"] == 0.0
    assert fr["selection_rate"]["estimate"] == 1.0
    assert column["tpr_gap"] == pytest.approx(1 / 6)  # en vs nl only; fr's NaN is skipped
    assert column["fpr_gap"] == pytest.approx(2 / 3)
    assert column["equalized_odds_difference"] == pytest.approx(2 / 3)
    assert column["demographic_parity_difference"] == pytest.approx(1 / 2)
    assert (column["min_tpr"], column["min_tpr_group"]) == (pytest.approx(1 / 2), "nl")


def test_an_undefined_rate_is_skipped_where_fairlearn_would_count_it_as_zero() -> None:
    # Plus two German rows, both positive and flagged: de TPR 1, FPR undefined (no negatives).
    #   Ours: TPR gap 1 - 1/2 = 1/2, FPR gap (en, nl) 3/4 - 1/3 = 5/12 -> EOD 1/2.
    #   fairlearn's equalized_odds_difference scores de's FPR as 0: FPR gap 3/4 -> EOD 3/4.
    language = np.concatenate([LANGUAGE, ["de"] * 2])
    y_true = np.concatenate([Y_TRUE, [1, 1]])
    y_pred = np.concatenate([Y_PRED, [1, 1]])

    column = fairness_report(y_true, y_pred, {"language": language}, n_resamples=10)["language"]

    assert column["tpr_gap"] == pytest.approx(1 / 2)
    assert column["fpr_gap"] == pytest.approx(5 / 12)
    assert column["equalized_odds_difference"] == pytest.approx(1 / 2)
    assert equalized_odds_difference(y_true, y_pred, sensitive_features=language) == (
        pytest.approx(3 / 4)
    )


def test_small_groups_are_reported_but_left_out_of_the_gaps() -> None:
    column = fairness_report(
        Y_TRUE_FR, Y_PRED_FR, {"language": LANGUAGE_FR}, n_resamples=50, min_group_size=4
    )["language"]

    assert [entry["group"] for entry in column["groups"]] == ["en", "fr", "nl"]
    assert [entry["in_gaps"] for entry in column["groups"]] == [True, False, True]
    # Back to the en/nl numbers: fr (3 rows) no longer sets the FPR and selection-rate gaps.
    assert column["fpr_gap"] == pytest.approx(5 / 12)
    assert column["equalized_odds_difference"] == pytest.approx(5 / 12)
    assert column["demographic_parity_difference"] == pytest.approx(1 / 6)


def test_gaps_are_nan_when_every_group_is_too_small() -> None:
    column = _report(min_group_size=7)["language"]

    assert len(column["groups"]) == 2
    for key in ("tpr_gap", "fpr_gap", "equalized_odds_difference", "min_tpr"):
        assert math.isnan(column[key]), key
    assert math.isnan(column["demographic_parity_difference"])
    assert column["min_tpr_group"] is None


def test_a_single_group_has_zero_gaps_and_unknown_collects_nulls() -> None:
    report = fairness_report(
        Y_TRUE, Y_PRED, {"gender": np.full(12, None), "platform": ["chat"] * 12}, n_resamples=20
    )

    assert [entry["group"] for entry in report["gender"]["groups"]] == ["unknown"]
    assert [entry["group"] for entry in report["platform"]["groups"]] == ["chat"]
    for column in report.values():
        assert column["tpr_gap"] == 0.0
        assert column["equalized_odds_difference"] == 0.0
        assert column["demographic_parity_difference"] == 0.0
        assert column["min_tpr"] == pytest.approx(3 / 5)  # TP 3 of 5 positives overall


def test_intervals_bracket_the_estimates() -> None:
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, 600)
    y_pred = np.where(rng.random(600) < 0.8, y_true, 1 - y_true)
    conversations = np.repeat(np.arange(60), 10)
    language = np.repeat(rng.choice(["en", "de", "es"], 60), 10)

    report = fairness_report(
        y_true, y_pred, {"language": language}, clusters=conversations, n_resamples=200
    )

    for entry in report["language"]["groups"]:
        for metric in GROUP_METRICS:
            interval = entry[metric]
            assert interval["low"] <= interval["estimate"] <= interval["high"], (entry, metric)
            assert interval["low"] < interval["high"]


def test_one_conversation_per_group_gives_the_metric_frame_values_exactly() -> None:
    # Each group is one conversation, so every resample is the whole group: the bootstrap's own
    # counting must reproduce the MetricFrame values, and the interval collapses onto them.
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 2, 300)
    y_pred = rng.integers(0, 2, 300)
    language = rng.choice(["en", "de", "es", "it"], 300)

    report = fairness_report(
        y_true, y_pred, {"language": language}, clusters=language, n_resamples=20
    )

    for entry in report["language"]["groups"]:
        for metric in GROUP_METRICS:
            interval = entry[metric]
            assert interval["low"] == pytest.approx(interval["estimate"], abs=1e-12)
            assert interval["high"] == pytest.approx(interval["estimate"], abs=1e-12)


def test_clusters_are_resampled_within_each_group() -> None:
    # en: two conversations, one all-correct and one all-wrong; resampling conversations gives
    # TPR 0, 1/2 or 1, whereas resampling rows would give many values in between.
    y_true = np.ones(8, dtype=int)
    y_pred = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    conversations = np.array([0, 0, 0, 0, 1, 1, 1, 1])

    report = fairness_report(
        y_true, y_pred, {"language": ["en"] * 8}, clusters=conversations, n_resamples=200
    )

    tpr = report["language"]["groups"][0]["tpr"]
    assert tpr == {"estimate": 0.5, "low": 0.0, "high": 1.0}


def test_report_is_deterministic_and_json_ready() -> None:
    first = _report(clusters=np.arange(12) // 2)
    again = _report(clusters=np.arange(12) // 2)

    assert json.dumps(first) == json.dumps(again)
    assert json.loads(json.dumps(first))["language"]["groups"][0]["group"] == "en"
    entry = first["language"]["groups"][0]
    assert set(entry) == {"group", "count", "positives", "in_gaps", *GROUP_METRICS}
    assert set(entry["tpr"]) == {"estimate", "low", "high"}
    assert type(entry["count"]) is int and type(entry["tpr"]["low"]) is float


@pytest.mark.parametrize(
    ("y_true", "y_pred", "features", "kwargs", "message"),
    [
        ([], [], {"language": []}, {}, "empty"),
        ([0, 2], [0, 1], {"language": ["en", "nl"]}, {}, "only 0 and 1"),
        ([0, 1], [0.5, 1], {"language": ["en", "nl"]}, {}, "only 0 and 1"),
        ([0, 1], [0, 1, 1], {"language": ["en", "nl"]}, {}, "y_pred must have shape"),
        ([0, 1], [0, 1], {"language": ["en"]}, {}, r"sensitive_features\['language'\]"),
        ([0, 1], [0, 1], {"language": ["en", "nl"]}, {"clusters": [1]}, "clusters must"),
        ([0, 1], [0, 1], {"language": ["en", "nl"]}, {"clusters": [1, None]}, "missing"),
        ([0, 1], [0, 1], {"language": ["en", "nl"]}, {"min_group_size": 0}, "at least 1"),
        ([0, 1], [0, 1], {"language": ["en", "nl"]}, {"n_resamples": 0}, "at least 1"),
        ([0, 1], [0, 1], {"language": ["en", "nl"]}, {"confidence": 2}, "between 0 and 1"),
    ],
)
def test_invalid_input_raises(
    y_true: list[float],
    y_pred: list[float],
    features: dict[str, list[str]],
    kwargs: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        fairness_report(y_true, y_pred, features, **kwargs)
