"""TF-IDF + logistic-regression baselines that every transformer run is compared against.

Both baselines take the same rendered texts as the transformers (one string per sample) and are
scored by the same functions (`cesagram.evaluation.metrics`):

- `TfidfIndicatorBaseline`: multi-label, one logistic regression per taxonomy indicator.
- `TfidfRiskBaseline`: binary conversation risk.

Features are word n-grams plus, by default, character n-grams within word boundaries
(``char_wb``, 2 to 5 characters), lower-cased with accents stripped: the corpus spans eight
languages, with typos, slang and missing accents, and character n-grams still match a word that
is misspelt or written without its accents.

Persistence uses skops (``model.skops``), which rebuilds objects from an allowlist of types
instead of running arbitrary pickled code, plus ``baseline.json`` beside it: the class, its
parameters, the label names and the library versions. `load` refuses a folder whose label names
differ from the taxonomy, and a model file holding any type outside skops's default allowlist
(scikit-learn estimators, numpy arrays, builtins), which a genuine baseline never does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import sklearn
import skops.io
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, make_pipeline
from threadpoolctl import threadpool_limits

from cesagram.taxonomy import INDICATOR_IDS

logger = logging.getLogger(__name__)

MODEL_FILE = "model.skops"
METADATA_FILE = "baseline.json"
FORMAT_VERSION = 2  # 2: hashed n-grams instead of a fitted vocabulary
RISK_LABEL_NAMES: tuple[str, ...] = ("risk",)
# Character n-grams inside word boundaries: long enough for stems, short enough for typos.
CHAR_NGRAM_RANGE = (2, 5)
# lbfgs converges on these features in 15-25 iterations; this is a safety margin.
MAX_ITER = 1000


class _TfidfBaseline:
    """Shared fitting, prediction and persistence; subclasses fix the label names."""

    label_names: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        *,
        n_features: int = 2**18,
        ngram_range: tuple[int, int] = (1, 2),
        char_ngrams: bool = True,
        C: float = 4.0,  # noqa: N803 (scikit-learn's name for the inverse regularisation)
        class_weight: str | None = "balanced",
        seed: int = 0,
    ) -> None:
        """Configure the baseline; nothing is fitted yet.

        Args:
            n_features: hash buckets of each vectorizer (word, and char when ``char_ngrams``).
                Hashing keeps no vocabulary, so the model stays small and saves in a second;
                a vocabulary of ~90k n-grams took skops minutes to serialise.
            ngram_range: word n-gram lengths, inclusive.
            char_ngrams: add character 2-5-grams within word boundaries to the word n-grams.
            C: inverse L2 regularisation strength of every logistic regression.
            class_weight: ``"balanced"`` reweights each label's rare positives; None does not.
            seed: the solver's random state. The lbfgs solver is deterministic, so refits on the
                same data are identical whatever the seed; it is kept, and saved, so every
                model in the project takes one.
        """
        self.n_features = n_features
        self.ngram_range = (int(ngram_range[0]), int(ngram_range[1]))
        self.char_ngrams = char_ngrams
        self.C = C
        self.class_weight = class_weight
        self.seed = seed
        self._features: FeatureUnion | None = None
        # One regression per label; None where training had a single class for that label.
        self._classifiers: list[LogisticRegression | None] = []
        # The probability a single-class label always gets (0 or 1); NaN for fitted labels.
        self._constant_probabilities: npt.NDArray[np.float64] = np.empty(0)

    def params(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable (they go into ``baseline.json``)."""
        return {
            "n_features": self.n_features,
            "ngram_range": list(self.ngram_range),
            "char_ngrams": self.char_ngrams,
            "C": self.C,
            "class_weight": self.class_weight,
            "seed": self.seed,
        }

    def save(self, directory: Path) -> None:
        """Write ``model.skops`` and ``baseline.json`` into ``directory`` (created if needed)."""
        if self._features is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() before save()")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "features": self._features,
            "classifiers": self._classifiers,
            "constant_probabilities": self._constant_probabilities,
        }
        skops.io.dump(state, directory / MODEL_FILE)
        metadata = {
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "params": self.params(),
            "label_names": list(self.label_names),
            "sklearn_version": sklearn.__version__,
            "skops_version": version("skops"),
        }
        (directory / METADATA_FILE).write_text(
            json.dumps(metadata, indent=2) + "\n", encoding="utf-8"
        )

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Load a baseline written by `save`, refusing one with other label names.

        Raises:
            FileNotFoundError: ``baseline.json`` or ``model.skops`` is missing.
            ValueError: the metadata names another class, format version or label set, or the
                model file holds types outside skops's default allowlist.
        """
        directory = Path(directory)
        metadata_path = directory / METADATA_FILE
        model_path = directory / MODEL_FILE
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
        if metadata.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{metadata_path}: expected format_version {FORMAT_VERSION}, "
                f"found {metadata.get('format_version')!r}"
            )
        if metadata.get("class") != cls.__name__:
            raise ValueError(
                f"{metadata_path}: holds a {metadata.get('class')!r}, not a {cls.__name__}"
            )
        found_labels = tuple(metadata.get("label_names", ()))
        if found_labels != cls.label_names:
            raise ValueError(
                f"{metadata_path}: label names {list(found_labels)} differ from the expected "
                f"{list(cls.label_names)}; the model was trained on another taxonomy"
            )
        if metadata.get("sklearn_version") != sklearn.__version__:
            logger.warning(
                "%s was saved with scikit-learn %s; this is %s. Probabilities may differ",
                metadata_path,
                metadata.get("sklearn_version"),
                sklearn.__version__,
            )

        # A baseline holds only types skops trusts by default (scikit-learn estimators, numpy
        # arrays, builtins); anything else means the file is not what it claims to be.
        untrusted = skops.io.get_untrusted_types(file=model_path)
        if untrusted:
            raise ValueError(
                f"{model_path}: holds types a TF-IDF baseline never contains: {untrusted}; "
                "refusing to load it"
            )
        state = skops.io.load(model_path)

        params = dict(metadata["params"])
        params["ngram_range"] = tuple(params["ngram_range"])
        baseline = cls(**params)
        baseline._features = state["features"]
        baseline._classifiers = list(state["classifiers"])
        baseline._constant_probabilities = np.asarray(
            state["constant_probabilities"], dtype=np.float64
        )
        if len(baseline._classifiers) != len(cls.label_names):
            raise ValueError(
                f"{model_path}: holds {len(baseline._classifiers)} classifiers, expected one per "
                f"label ({len(cls.label_names)})"
            )
        return baseline

    def _build_features(self) -> FeatureUnion:
        hashing = {
            "lowercase": True,
            "strip_accents": "unicode",
            "n_features": self.n_features,
            "alternate_sign": False,  # counts, so TF-IDF weighting applies as usual
            "norm": None,
            "dtype": np.float32,  # half the memory of float64; probabilities agree to ~1e-5
        }
        analyzers = [("word", "word", self.ngram_range)]
        if self.char_ngrams:
            analyzers.append(("char", "char_wb", CHAR_NGRAM_RANGE))
        parts = [
            (
                name,
                make_pipeline(
                    HashingVectorizer(analyzer=analyzer, ngram_range=ngrams, **hashing),
                    # sublinear_tf: repeated words ("pls pls pls") should not dominate
                    TfidfTransformer(sublinear_tf=True),
                ),
            )
            for name, analyzer, ngrams in analyzers
        ]
        # One process: worker processes for the two vectorizers cost more in start-up and
        # copying than they save (measured 2.6 s serial against 3.5 s with two workers on 50k
        # messages, 2 cores).
        return FeatureUnion(parts)

    def _fit_columns(self, texts: Sequence[str], labels: npt.NDArray[np.int8]) -> None:
        """Fit the features once, then one regression per label column."""
        features = self._build_features()
        matrix = features.fit_transform(_checked_texts(texts, expected=labels.shape[0]))
        positives = labels.sum(axis=0)
        constants = np.full(labels.shape[1], np.nan)
        for column, name in enumerate(self.label_names):
            if positives[column] == 0:
                logger.warning(
                    "%s: no positive training examples for %s; it will always score 0",
                    type(self).__name__,
                    name,
                )
                constants[column] = 0.0
            elif positives[column] == labels.shape[0]:
                logger.warning(
                    "%s: every training example is positive for %s; it will always score 1",
                    type(self).__name__,
                    name,
                )
                constants[column] = 1.0
        # One thread, labels one after another. The sparse products that dominate lbfgs run
        # single-threaded anyway; what OpenMP/BLAS would parallelise are short vector operations
        # whose thread hand-offs cost more than they save, badly so when another process holds
        # a core (measured on 50k messages, 2 cores: 2.8 s for all ten labels on one thread,
        # 3-18 s on two). Label-parallel threads gained nothing (the GIL).
        with threadpool_limits(limits=1):
            classifiers: list[LogisticRegression | None] = [
                None if np.isfinite(constants[column]) else self._fit_one(matrix, labels[:, column])
                for column in range(labels.shape[1])
            ]
        self._features = features
        self._classifiers = classifiers
        self._constant_probabilities = constants

    def _fit_one(self, matrix: Any, target: npt.NDArray[np.int8]) -> LogisticRegression:
        classifier = LogisticRegression(
            C=self.C,
            class_weight=self.class_weight,
            solver="lbfgs",
            max_iter=MAX_ITER,
            random_state=self.seed,
        )
        return classifier.fit(matrix, target)

    def _predict_columns(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        if self._features is None:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted; call fit() before predict_proba()"
            )
        checked = _checked_texts(texts, expected=None)
        probabilities = np.empty((len(checked), len(self._classifiers)), dtype=np.float64)
        if not checked:
            return probabilities
        matrix = self._features.transform(checked)
        for column, classifier in enumerate(self._classifiers):
            if classifier is None:
                probabilities[:, column] = self._constant_probabilities[column]
            else:
                # Column 1 is the positive class: classes_ is sorted and always [0, 1] here.
                probabilities[:, column] = classifier.predict_proba(matrix)[:, 1]
        return probabilities


class TfidfIndicatorBaseline(_TfidfBaseline):
    """Multi-label indicator baseline: TF-IDF features, one logistic regression per indicator.

    Columns follow `cesagram.taxonomy.INDICATOR_IDS`. An indicator without positive training
    examples is not fitted; it always scores 0, and fitting logs a warning naming it.
    """

    label_names: ClassVar[tuple[str, ...]] = INDICATOR_IDS

    def fit(self, texts: Sequence[str], labels: npt.ArrayLike) -> Self:
        """Fit on ``texts`` and their 0/1 label matrix, shape ``[len(texts), 10]``."""
        self._fit_columns(texts, _checked_labels(labels, self.label_names, ndim=2))
        return self

    def predict_proba(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """Indicator probabilities, shape ``[len(texts), 10]``, in taxonomy order."""
        return self._predict_columns(texts)


class TfidfRiskBaseline(_TfidfBaseline):
    """Binary conversation-risk baseline: TF-IDF features and one logistic regression.

    Training data with a single class does not crash: the model then always scores that class
    (0 or 1) and fitting logs a warning.
    """

    label_names: ClassVar[tuple[str, ...]] = RISK_LABEL_NAMES

    def fit(self, texts: Sequence[str], labels: npt.ArrayLike) -> Self:
        """Fit on ``texts`` and their 0/1 risk labels, shape ``[len(texts)]``."""
        checked = _checked_labels(labels, self.label_names, ndim=1)
        self._fit_columns(texts, checked.reshape(-1, 1))
        return self

    def predict_proba(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """Risk probabilities, shape ``[len(texts)]``."""
        return self._predict_columns(texts)[:, 0]


def _checked_texts(texts: Sequence[str], *, expected: int | None) -> list[str]:
    checked = list(texts)
    for index, text in enumerate(checked):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] must be a string; found {type(text).__name__}")
    if expected is not None and len(checked) != expected:
        raise ValueError(f"got {len(checked)} texts but {expected} label rows")
    return checked


def _checked_labels(
    labels: npt.ArrayLike, names: tuple[str, ...], *, ndim: int
) -> npt.NDArray[np.int8]:
    array = np.asarray(labels)
    if array.ndim != ndim or (ndim == 2 and array.shape[1] != len(names)):
        expected = "[n]" if ndim == 1 else f"[n, {len(names)}] ({', '.join(names)})"
        raise ValueError(f"labels must have shape {expected}; got {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("labels are empty: there is nothing to fit")
    if not np.isin(array, (0, 1)).all():
        found = np.unique(array[~np.isin(array, (0, 1))])[:5]
        raise ValueError(f"labels must hold only 0 and 1; found {found.tolist()}")
    return array.astype(np.int8)
