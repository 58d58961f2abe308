"""What the service does, without BentoML: load the exported models and answer the APIs.

The BentoML service (``serving/service.py``) is a thin shell over `ServingRuntime`, so the
same code answers HTTP requests, tests and benchmarks. Inputs are rendered exactly as training
and evaluation render them (`cesagram.training.examples.render_messages`); raw scores are
compared with the thresholds the evaluation chose, and reported as calibrated probabilities
(the evaluation's temperature). Both are per language when the evaluation fitted a language's
own (``language_calibration`` in ``serving.json``); an input in any other language, or without
one, gets the fallback the evaluation measured. Each result names what it was decided with.

Nothing here logs message text: only counts, indices, scores and hashes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cesagram.evaluation.calibration import apply_temperature, logits_from_probabilities
from cesagram.evaluation.early import warning_latency
from cesagram.evaluation.scorers import Scorer, TransformerScorer
from cesagram.export.bento import (
    CARD_FILE,
    FALLBACK,
    MODEL_FOLDER,
    SERVING_FILE,
    Calibration,
    LanguageCalibration,
    language_calibration,
    threshold_values,
    verify_exported,
    verify_onnx_variant,
)
from cesagram.serving.schemas import (
    Conversation,
    ConversationResult,
    EarlyWarning,
    Evidence,
    IndicatorResult,
    Message,
    MessageInput,
)
from cesagram.serving.settings import Limits, ServingSettings
from cesagram.training.examples import render_messages, windows_after_each_message

logger = logging.getLogger(__name__)

SCORING_BATCH_SIZE = 32


@dataclass(frozen=True)
class ServedModel:
    """An exported model, checked against its hash and ready to score rendered inputs."""

    tag: str
    settings: dict[str, Any]
    scorer: Scorer
    backend: str
    thresholds: npt.NDArray[np.float64]
    card: str | None
    by_language: LanguageCalibration

    @property
    def temperature(self) -> float:
        """The evaluation's global temperature; probabilities are ``sigmoid(logit / T)``."""
        return float(self.settings["temperature"])

    def calibration_for(self, language: str | None) -> tuple[npt.NDArray[np.float64], float, str]:
        """Raw-score thresholds (label order), temperature, and what they are for a language.

        The language's own entry when the evaluation fitted one (named by its code); for any
        other language, or none, the fallback (named ``"fallback"``).
        """
        if language is not None and language in self.by_language.languages:
            own = self.by_language.languages[language]
            return np.asarray(own.thresholds, dtype=np.float64), own.temperature, language
        fallback = self.by_language.fallback
        return np.asarray(fallback.thresholds, dtype=np.float64), fallback.temperature, FALLBACK

    def decide(
        self, raw: npt.NDArray[np.float64], languages: Sequence[str | None]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64], list[str]]:
        """Decisions and calibrated probabilities for raw scores ``[n, labels]``, each row with
        its own language's thresholds and temperature; and what each row was decided with."""
        decided = np.zeros(raw.shape, dtype=bool)
        probabilities = np.zeros(raw.shape, dtype=np.float64)
        used = [FALLBACK] * len(raw)
        for language in dict.fromkeys(languages):
            rows = [row for row, code in enumerate(languages) if code == language]
            thresholds, temperature, name = self.calibration_for(language)
            decided[rows] = raw[rows] >= thresholds
            probabilities[rows] = self.calibrated(raw[rows], temperature)
            for row in rows:
                used[row] = name
        return decided, probabilities, used

    def raw_scores(self, texts: list[str]) -> npt.NDArray[np.float64]:
        """Uncalibrated probabilities ``[n, labels]``, the scale the thresholds are on."""
        if not texts:
            return np.zeros((0, len(self.thresholds)), dtype=np.float64)
        return self.scorer.scores(texts, batch_size=SCORING_BATCH_SIZE)

    def calibrated(
        self, raw: npt.NDArray[np.float64], temperature: float | None = None
    ) -> npt.NDArray[np.float64]:
        """Raw scores as calibrated probabilities (monotone: decisions are unchanged), with
        ``temperature`` or the global one."""
        if raw.size == 0:
            return raw
        chosen = self.temperature if temperature is None else temperature
        return apply_temperature(logits_from_probabilities(raw), chosen)

    def _calibration_view(self, calibration: Calibration) -> dict[str, Any]:
        names = self.settings["label_names"]
        thresholds = np.asarray(calibration.thresholds, dtype=np.float64)
        calibrated = self.calibrated(thresholds.reshape(1, -1), calibration.temperature)[0]
        return {
            "thresholds": dict(zip(names, thresholds.tolist(), strict=True)),
            "calibrated_thresholds": dict(zip(names, calibrated.tolist(), strict=True)),
            "temperature": calibration.temperature,
        }

    def describe(self) -> dict[str, Any]:
        """What a reviewer or operator needs to identify and trust this model."""
        keys = (
            "registered_model",
            "registered_version",
            "mlflow_run_id",
            "model_sha256",
            "label_names",
            "temperature",
            "thresholds_chosen_on",
            "context_messages",
            "window",
            "skepticism",
            "max_length",
        )
        names = self.settings["label_names"]
        calibrated = self.calibrated(self.thresholds.reshape(1, -1))[0]
        return {
            "tag": self.tag,
            "backend": self.backend,
            **{key: self.settings.get(key) for key in keys},
            "thresholds": dict(zip(names, self.thresholds.tolist(), strict=True)),
            "calibrated_thresholds": dict(zip(names, calibrated.tolist(), strict=True)),
            "language_calibration": {
                "languages": {
                    language: self._calibration_view(calibration)
                    for language, calibration in sorted(self.by_language.languages.items())
                },
                "fallback": {
                    "method": self.by_language.fallback_method,
                    **self._calibration_view(self.by_language.fallback),
                },
            },
            "onnx": self.settings.get("onnx"),
        }


def load_served_model(
    path: Path, *, tag: str, expected_sha256: str | None, serving: ServingSettings
) -> ServedModel:
    """Load an exported model folder for serving, refusing it if its files were altered.

    On CPU with ``use_onnx`` the ONNX int8 variant is served when it passed parity at export;
    otherwise PyTorch on ``serving.device`` in ``serving.precision``.
    """
    settings = verify_exported(path, expected_sha256)
    # Checked before loading weights: a malformed table fails fast, naming the file.
    source = str(path / SERVING_FILE)
    thresholds = np.asarray(threshold_values(settings, source=source), dtype=np.float64)
    by_language = language_calibration(settings, source=source)
    onnx = settings.get("onnx") or {}
    scorer: Scorer
    if serving.device == "cpu" and serving.use_onnx and onnx.get("shipped"):
        from cesagram.export.onnx import OnnxScorer

        onnx_path = verify_onnx_variant(path, settings)
        scorer = OnnxScorer(
            onnx_path,
            path / MODEL_FOLDER / "encoder",
            max_length=int(settings["max_length"]),
            threads=serving.threads,
            label_names=list(settings["label_names"]),
            text_prefix=settings.get("text_prefix", ""),
        )
        backend = f"onnxruntime ({onnx.get('chosen')})"
    else:
        if serving.threads is not None:
            import torch

            torch.set_num_threads(serving.threads)
        scorer = TransformerScorer(
            path / MODEL_FOLDER, device=serving.device, precision=serving.precision
        )
        backend = f"pytorch ({serving.device}, {serving.precision})"
    card_path = path / CARD_FILE
    logger.info("serving %s with %s", tag, backend)
    return ServedModel(
        tag=tag,
        settings=settings,
        scorer=scorer,
        backend=backend,
        thresholds=thresholds,
        card=card_path.read_text(encoding="utf-8") if card_path.exists() else None,
        by_language=by_language,
    )


def _authors_and_texts(messages: Sequence[Message]) -> tuple[list[str], list[str]]:
    return [message.author for message in messages], [message.text for message in messages]


class ServingRuntime:
    """Both champion models behind the service's APIs."""

    def __init__(self, indicators: ServedModel, risk: ServedModel, limits: Limits) -> None:
        for model, task in ((indicators, "indicators"), (risk, "risk")):
            if model.settings["task"] != task:
                raise ValueError(f"{model.tag} is a {model.settings['task']} model, not {task}")
        self.indicators = indicators
        self.risk = risk
        self.limits = limits
        self.context_messages = int(indicators.settings.get("context_messages") or 0)
        self.window = int(risk.settings["window"])
        self.skepticism = int(risk.settings.get("skepticism") or 5)

    # ----------------------------------------------------------------------------------------
    # classify_messages

    def indicator_input(self, item: MessageInput) -> str:
        """The rendered model input for one message and its context (training's rendering)."""
        context = item.context[-self.context_messages :] if self.context_messages else []
        authors, texts = _authors_and_texts(context)
        return render_messages(
            [*authors, item.author],
            [*texts, item.text],
            prefix=self.indicators.settings.get("text_prefix", ""),
        )

    def classify_messages(self, items: Sequence[MessageInput]) -> list[IndicatorResult]:
        """Indicator probabilities and decisions for each message, in order.

        A batch may mix languages: each message is decided and calibrated with its own
        language's thresholds and temperature (or the fallback's).
        """
        raw = self.indicators.raw_scores([self.indicator_input(item) for item in items])
        decided, probabilities, used = self.indicators.decide(
            raw, [item.language for item in items]
        )
        names: list[str] = self.indicators.settings["label_names"]
        return [
            IndicatorResult(
                probabilities=dict(zip(names, (round(float(p), 6) for p in row), strict=True)),
                indicators=[name for name, flag in zip(names, flags, strict=True) if flag],
                any_indicator=bool(flags.any()),
                calibration=calibration,
            )
            for row, flags, calibration in zip(probabilities, decided, used, strict=True)
        ]

    # ----------------------------------------------------------------------------------------
    # score_conversation

    def score_conversation(self, conversation: Conversation) -> ConversationResult:
        """Risk after every message, the eSPD warning, and the evidence for a reviewer.

        The conversation's language chooses the risk threshold and temperature (hence the
        warning) and the indicator decisions of the evidence; the fallback's when it has none.
        """
        messages = conversation.messages
        authors, texts = _authors_and_texts(messages)
        windows = windows_after_each_message(
            authors,
            texts,
            window=self.window,
            prefix=self.risk.settings.get("text_prefix", ""),
        )
        thresholds, temperature, used = self.risk.calibration_for(conversation.language)
        raw = self.risk.raw_scores(windows)[:, 0]
        risk = self.risk.calibrated(raw, temperature)
        threshold = float(thresholds[0])
        latency = warning_latency(raw, threshold, self.skepticism)
        peak = int(np.argmax(risk))
        focus = peak if latency is None else latency - 1
        return ConversationResult(
            risk=[round(float(value), 6) for value in risk],
            threshold=round(
                float(self.risk.calibrated(np.asarray([threshold]), temperature)[0]), 6
            ),
            warning=EarlyWarning(
                raised=latency is not None,
                message_index=None if latency is None else latency - 1,
                messages_read=latency,
                skepticism=self.skepticism,
            ),
            peak_index=peak,
            evidence=self._evidence(messages, risk, focus, conversation.language),
            calibration=used,
        )

    def _evidence(
        self,
        messages: Sequence[Message],
        risk: npt.NDArray[np.float64],
        focus: int,
        language: str | None,
    ) -> list[Evidence]:
        """The messages of the window the risk model read at ``focus`` that a reviewer should
        read first: those carrying indicators, then those after which risk rose most."""
        first = max(0, focus - self.window + 1)
        indices = list(range(first, focus + 1))
        items = [
            MessageInput.model_construct(
                text=messages[index].text,
                author=messages[index].author,
                context=list(messages[max(0, index - self.context_messages) : index]),
                language=language,
            )
            for index in indices
        ]
        found = self.classify_messages(items)
        before = [float(risk[index - 1]) if index > 0 else 0.0 for index in indices]
        rises = [
            float(risk[index]) - previous for index, previous in zip(indices, before, strict=True)
        ]
        ranked = sorted(
            range(len(indices)),
            key=lambda row: (not found[row].any_indicator, -rises[row], indices[row]),
        )[: self.limits.evidence_messages]
        return [
            Evidence(
                message_index=indices[row],
                risk_before=round(before[row], 6),
                risk_after=round(float(risk[indices[row]]), 6),
                indicators=found[row].indicators,
            )
            for row in sorted(ranked)
        ]

    # ----------------------------------------------------------------------------------------
    # model_card, metadata

    def model_card(self) -> str:
        """The served models' cards, as recorded at export (Markdown)."""
        parts = []
        for model in (self.indicators, self.risk):
            parts.append(model.card or f"# {model.tag}\n\nNo model card was recorded at export.\n")
        return "\n\n---\n\n".join(parts)

    def metadata(self) -> dict[str, Any]:
        """Versions, hashes, thresholds and backends of the served models, and the limits."""
        import cesagram

        return {
            "cesagram_version": cesagram.__version__,
            "models": {"indicators": self.indicators.describe(), "risk": self.risk.describe()},
            "limits": self.limits.model_dump(),
        }
