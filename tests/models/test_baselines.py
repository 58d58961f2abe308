from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import skops.io  # type: ignore[import-untyped,unused-ignore]

from cesagram.models.baselines import (
    METADATA_FILE,
    MODEL_FILE,
    TfidfIndicatorBaseline,
    TfidfRiskBaseline,
)
from cesagram.taxonomy import INDICATOR_IDS

ACCESS = INDICATOR_IDS.index("access")
MEETING = INDICATOR_IDS.index("meeting")

# Bland toy data: "pizza" marks access, "bus" marks meeting, the rest carry no label.
TEXTS = [
    "I would like pizza tonight",
    "pizza with extra cheese please",
    "we ordered pizza again",
    "is the pizza place open",
    "the bus was late today",
    "which bus goes to the library",
    "I missed the bus this morning",
    "the bus stop is near the park",
    "the weather is nice today",
    "did you finish the homework",
    "my cat sleeps all day",
    "the football match was fun",
    "I am reading a long book",
    "see you at school tomorrow",
    "the garden needs water",
    "my brother plays the piano",
] * 2


def toy_labels() -> np.ndarray:
    labels = np.zeros((len(TEXTS), len(INDICATOR_IDS)), dtype=int)
    labels[:, ACCESS] = ["pizza" in text for text in TEXTS]
    labels[:, MEETING] = ["bus" in text for text in TEXTS]
    return labels


@pytest.fixture(scope="module")
def indicator_model() -> TfidfIndicatorBaseline:
    return TfidfIndicatorBaseline().fit(TEXTS, toy_labels())


@pytest.fixture(scope="module")
def risk_model() -> TfidfRiskBaseline:
    return TfidfRiskBaseline().fit(TEXTS, toy_labels()[:, ACCESS])


def test_indicator_baseline_learns_a_separable_toy_set(
    indicator_model: TfidfIndicatorBaseline,
) -> None:
    probabilities = indicator_model.predict_proba(
        ["pizza for lunch", "take the bus home", "the weather is cold"]
    )
    assert probabilities.shape == (3, len(INDICATOR_IDS))
    assert probabilities.dtype == np.float64
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    # Unseen sentences sharing one word with the training set rank by that word...
    assert probabilities[0, ACCESS] > probabilities[2, ACCESS] + 0.2
    assert probabilities[1, MEETING] > probabilities[2, MEETING] + 0.2
    assert probabilities[0, ACCESS] > probabilities[0, MEETING]
    # ...and the training set itself is separated at 0.5.
    fitted = indicator_model.predict_proba(TEXTS)
    assert ((fitted[:, [ACCESS, MEETING]] > 0.5) == toy_labels()[:, [ACCESS, MEETING]]).all()


def test_indicator_without_positives_scores_zero_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="cesagram.models.baselines"):
        model = TfidfIndicatorBaseline().fit(TEXTS, toy_labels())
    assert "no positive training examples for risk_assessment" in caplog.text
    assert "for access" not in caplog.text
    probabilities = model.predict_proba(["pizza for lunch"])
    unlabelled = [i for i in range(len(INDICATOR_IDS)) if i not in (ACCESS, MEETING)]
    assert (probabilities[:, unlabelled] == 0.0).all()


def test_indicator_positive_everywhere_scores_one() -> None:
    labels = toy_labels()
    labels[:, 0] = 1
    assert (TfidfIndicatorBaseline().fit(TEXTS, labels).predict_proba(["hello"])[:, 0] == 1).all()


def test_risk_baseline_learns_and_predicts_one_score_per_text(
    risk_model: TfidfRiskBaseline,
) -> None:
    probabilities = risk_model.predict_proba(["more pizza", "a quiet afternoon"])
    assert probabilities.shape == (2,)
    assert probabilities[0] > 0.5 > probabilities[1]


def test_risk_baseline_with_one_class_does_not_crash(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cesagram.models.baselines"):
        model = TfidfRiskBaseline().fit(TEXTS, np.zeros(len(TEXTS), dtype=int))
    assert "no positive training examples for risk" in caplog.text
    assert (model.predict_proba(["pizza"]) == 0.0).all()


def test_missing_accents_and_case_give_the_same_features(
    indicator_model: TfidfIndicatorBaseline,
) -> None:
    np.testing.assert_array_equal(
        indicator_model.predict_proba(["Café à côté"]),
        indicator_model.predict_proba(["cafe a cote"]),
    )


def test_word_ngrams_only() -> None:
    model = TfidfIndicatorBaseline(char_ngrams=False, ngram_range=(1, 1)).fit(TEXTS, toy_labels())
    assert model.predict_proba(["pizza"])[0, ACCESS] > 0.5


def test_empty_input_predicts_an_empty_matrix(indicator_model: TfidfIndicatorBaseline) -> None:
    assert indicator_model.predict_proba([]).shape == (0, len(INDICATOR_IDS))


@pytest.mark.parametrize("model_class", [TfidfIndicatorBaseline, TfidfRiskBaseline])
def test_save_load_round_trip_gives_identical_probabilities(
    model_class: type[TfidfIndicatorBaseline | TfidfRiskBaseline],
    indicator_model: TfidfIndicatorBaseline,
    risk_model: TfidfRiskBaseline,
    tmp_path: Path,
) -> None:
    model = indicator_model if model_class is TfidfIndicatorBaseline else risk_model
    model.save(tmp_path / "baseline")
    loaded = model_class.load(tmp_path / "baseline")
    probe = [*TEXTS, "something new entirely", "pizza bus"]
    np.testing.assert_array_equal(loaded.predict_proba(probe), model.predict_proba(probe))
    assert loaded.params() == model.params()
    metadata = json.loads((tmp_path / "baseline" / METADATA_FILE).read_text(encoding="utf-8"))
    assert metadata["class"] == model_class.__name__
    assert metadata["label_names"] == list(model_class.label_names)
    assert {"sklearn_version", "skops_version", "params", "format_version"} <= set(metadata)


def test_load_refuses_other_label_names(
    indicator_model: TfidfIndicatorBaseline, tmp_path: Path
) -> None:
    indicator_model.save(tmp_path)
    metadata_path = tmp_path / METADATA_FILE
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    metadata["label_names"] = [*INDICATOR_IDS[:-1], "something_else"]
    metadata_path.write_text(json.dumps(metadata), encoding="utf-8")
    with pytest.raises(ValueError, match=r"baseline\.json: label names .* differ"):
        TfidfIndicatorBaseline.load(tmp_path)


def test_load_refuses_another_baseline_class(risk_model: TfidfRiskBaseline, tmp_path: Path) -> None:
    risk_model.save(tmp_path)
    with pytest.raises(
        ValueError, match="holds a 'TfidfRiskBaseline', not a TfidfIndicatorBaseline"
    ):
        TfidfIndicatorBaseline.load(tmp_path)


class _NotABaselinePart:
    """A type no genuine baseline file holds."""


def test_load_refuses_unexpected_types(risk_model: TfidfRiskBaseline, tmp_path: Path) -> None:
    risk_model.save(tmp_path)
    skops.io.dump({"features": _NotABaselinePart()}, tmp_path / MODEL_FILE)
    with pytest.raises(ValueError, match=r"model\.skops: holds types .*_NotABaselinePart"):
        TfidfRiskBaseline.load(tmp_path)


def test_unfitted_model_refuses_to_predict_or_save(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        TfidfIndicatorBaseline().predict_proba(["hello"])
    with pytest.raises(RuntimeError, match="not fitted"):
        TfidfRiskBaseline().save(tmp_path)


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"shape \[n, 10\]"):
        TfidfIndicatorBaseline().fit(TEXTS, np.zeros((len(TEXTS), 3)))
    with pytest.raises(ValueError, match=r"shape \[n\]"):
        TfidfRiskBaseline().fit(TEXTS, toy_labels())
    with pytest.raises(ValueError, match="2 texts but 32 label rows"):
        TfidfIndicatorBaseline().fit(TEXTS[:2], toy_labels())
    with pytest.raises(ValueError, match=r"only 0 and 1; found \[3\]"):
        TfidfRiskBaseline().fit(TEXTS, np.full(len(TEXTS), 3))
    with pytest.raises(TypeError, match=r"texts\[1\] must be a string; found NoneType"):
        TfidfRiskBaseline().fit(["hello", None], np.array([0, 1]))  # type: ignore[list-item]
