"""The serving runtime without a server: rendering, decisions, evidence, integrity, settings,
and per-language calibration (crafted settings over a scorer whose raw scores the test fixes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError
from scipy import special  # type: ignore[import-untyped]

from cesagram.evaluation.early import warning_latency
from cesagram.evaluation.scorers import TransformerScorer
from cesagram.export import ExportIntegrityError, folder_sha256
from cesagram.export.bento import language_calibration, threshold_values
from cesagram.serving.middleware import ApiKeyMiddleware
from cesagram.serving.runtime import ServedModel, ServingRuntime, load_served_model
from cesagram.serving.schemas import Conversation, Message, MessageInput, use_limits
from cesagram.serving.settings import Auth, Limits, ServingSettings
from cesagram.training.examples import render_messages, windows_after_each_message
from tests.serving.conftest import ExportedPair


def _runtime(pair: ExportedPair, **settings: object) -> ServingRuntime:
    serving = ServingSettings.model_validate(settings)
    served = {
        task: load_served_model(
            result.path, tag=result.tag, expected_sha256=result.sha256, serving=serving
        )
        for task, result in pair.exports.items()
    }
    return ServingRuntime(served["indicators"], served["risk"], serving.limits)


@pytest.fixture(scope="module")
def pytorch_runtime(exported_pair: ExportedPair) -> ServingRuntime:
    return _runtime(exported_pair, use_onnx=False)


CONVERSATION = [
    Message(text="hey, how was school today?", author="u1"),
    Message(text="fine, we had a maths test", author="u2"),
    Message(text="you are so mature for your age", author="u1"),
    Message(text="haha thanks", author="u2"),
    Message(text="are your parents home right now?", author="u1"),
    Message(text="no they are at work", author="u2"),
    Message(text="don't tell anyone we talk ok", author="u1"),
]


def test_a_message_is_rendered_as_training_renders_it(pytorch_runtime: ServingRuntime) -> None:
    context = pytorch_runtime.context_messages
    item = MessageInput(text="where do you live?", author="u1", context=CONVERSATION)
    kept = CONVERSATION[-context:]
    expected = render_messages(
        [*(m.author for m in kept), "u1"],
        [*(m.text for m in kept), "where do you live?"],
        prefix=pytorch_runtime.indicators.settings["text_prefix"],
    )
    assert pytorch_runtime.indicator_input(item) == expected
    assert expected.splitlines()[0].endswith("A: where do you live?")


def test_decisions_use_the_evaluated_thresholds_on_raw_scores(
    pytorch_runtime: ServingRuntime, exported_pair: ExportedPair
) -> None:
    items = [MessageInput(text=m.text, author=m.author) for m in CONVERSATION]
    results = pytorch_runtime.classify_messages(items)
    scorer = TransformerScorer(exported_pair.exports["indicators"].path / "model")
    raw = scorer.scores([pytorch_runtime.indicator_input(item) for item in items])
    names = scorer.label_names
    # No language given: the fallback's thresholds (the global ones without a language table).
    thresholds, _, used = pytorch_runtime.indicators.calibration_for(None)
    assert used == "fallback"
    for result, row in zip(results, raw, strict=True):
        assert result.calibration == "fallback"
        assert result.indicators == [
            n for n, s, t in zip(names, row, thresholds, strict=True) if s >= t
        ]
        calibrated = np.asarray([result.probabilities[n] for n in names])
        # Temperature scaling is monotone: calibrated order equals the raw order.
        assert np.array_equal(np.argsort(calibrated, kind="stable"), np.argsort(row, kind="stable"))


def test_a_conversation_gets_risk_per_message_the_espd_warning_and_evidence(
    pytorch_runtime: ServingRuntime, exported_pair: ExportedPair
) -> None:
    result = pytorch_runtime.score_conversation(Conversation(messages=CONVERSATION))
    assert len(result.risk) == len(CONVERSATION)
    scorer = TransformerScorer(exported_pair.exports["risk"].path / "model")
    windows = windows_after_each_message(
        [m.author for m in CONVERSATION],
        [m.text for m in CONVERSATION],
        window=pytorch_runtime.window,
        prefix=scorer.text_prefix,
    )
    raw = scorer.scores(windows)[:, 0]
    thresholds, _, _ = pytorch_runtime.risk.calibration_for(None)
    latency = warning_latency(raw, float(thresholds[0]), 5)
    assert result.calibration == "fallback"
    assert result.warning.messages_read == latency
    assert result.warning.raised == (latency is not None)
    focus = result.peak_index if latency is None else latency - 1
    indices = [evidence.message_index for evidence in result.evidence]
    assert indices == sorted(indices) and len(indices) == len(set(indices))
    assert 1 <= len(indices) <= pytorch_runtime.limits.evidence_messages
    assert all(0 <= index <= focus for index in indices)
    for evidence in result.evidence:
        assert evidence.risk_after == pytest.approx(result.risk[evidence.message_index])


def test_an_altered_onnx_variant_is_refused(exported_pair: ExportedPair, tmp_path: Path) -> None:
    result = exported_pair.exports["indicators"]
    if not (result.onnx and result.onnx["shipped"]):
        pytest.skip("no ONNX variant passed parity for this tiny model")
    copy = tmp_path / "copy"
    shutil.copytree(result.path, copy)
    onnx = copy / "onnx" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    with pytest.raises(ExportIntegrityError, match="refusing to load an altered model"):
        load_served_model(copy, tag=result.tag, expected_sha256=None, serving=ServingSettings())


def test_the_onnx_variant_serves_when_it_passed_parity(exported_pair: ExportedPair) -> None:
    for task, result in exported_pair.exports.items():
        settings = json.loads((result.path / "serving.json").read_text())
        served = load_served_model(
            result.path, tag=result.tag, expected_sha256=result.sha256, serving=ServingSettings()
        )
        expected = "onnxruntime" if settings["onnx"]["shipped"] else "pytorch"
        assert served.backend.startswith(expected), task
        assert settings["onnx"]["report"]["candidates"], "parity was measured"


def test_the_service_refuses_to_start_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CESAGRAM_API_KEYS", raising=False)
    with pytest.raises(RuntimeError, match="CESAGRAM_API_KEYS"):
        ApiKeyMiddleware(object(), auth=Auth())
    monkeypatch.setenv("CESAGRAM_API_KEYS", " a-key , another ")
    middleware = ApiKeyMiddleware(object(), auth=Auth())
    scope = {"type": "http", "path": "/metadata", "headers": [(b"x-api-key", b"another")]}
    assert middleware.allowed(scope)
    assert not middleware.allowed({**scope, "headers": [(b"x-api-key", b"anothe")]})
    assert middleware.allowed({"type": "http", "path": "/readyz", "headers": []})


def test_half_precision_needs_a_gpu() -> None:
    with pytest.raises(ValidationError, match="needs device cuda"):
        ServingSettings(precision="fp16")
    assert ServingSettings(device="cuda", precision="fp16").precision == "fp16"


def test_limits_name_their_setting_and_never_echo_the_input() -> None:
    use_limits(Limits(max_chars_per_message=10))
    try:
        with pytest.raises(ValidationError) as raised:
            Message(text="a rather long message")
        assert "limits.max_chars_per_message is 10" in str(raised.value)
        assert "rather long" not in str(raised.value)
    finally:
        use_limits(Limits())


# ---------------------------------------------------------------------------------------------
# Per-language calibration, on crafted serving settings: every raw score is RAW_ACCESS for
# `access` and RAW_OTHER for the other labels, so the test knows which thresholds decide.

RAW_ACCESS, RAW_OTHER = 0.6, 0.1
INDICATORS = ["access", "meeting"]
# `access` at 0.6 is over German's threshold, under the fallback's and over the global one:
# only the language's own threshold flags it for "de".
LANGUAGE_TABLE = {
    "languages": {
        "de": {"thresholds": {"access": 0.55, "meeting": 0.5}, "temperature": 2.0},
        "en": {"thresholds": {"access": 0.65, "meeting": 0.5}, "temperature": 1.0},
    },
    "fallback": {
        "method": "language_balanced",
        "thresholds": {"access": 0.7, "meeting": 0.5},
        "temperature": 0.5,
    },
}
RISK_TABLE = {
    "languages": {"de": {"thresholds": 0.55, "temperature": 2.0}},
    "fallback": {"method": "pooled", "thresholds": 0.7, "temperature": 0.5},
}


class FixedScorer:
    """A `Scorer` whose raw scores are the same fixed row for every input."""

    text_prefix = ""
    max_length = None

    def __init__(self, label_names: list[str]) -> None:
        self.label_names = label_names
        self.row = np.asarray(
            [RAW_ACCESS if n in ("access", "risk") else RAW_OTHER for n in label_names]
        )

    def scores(self, texts: list[str], *, batch_size: int = 32) -> npt.NDArray[np.float64]:
        return np.tile(self.row, (len(texts), 1))


def _crafted_settings(task: str, table: dict[str, Any] | None) -> dict[str, Any]:
    names = INDICATORS if task == "indicators" else ["risk"]
    settings: dict[str, Any] = {
        "task": task,
        "label_names": names,
        "text_prefix": "",
        "max_length": 64,
        "context_messages": 2,
        "window": 4,
        "skepticism": 1,
        "thresholds": dict.fromkeys(names, 0.5),
        "temperature": 1.0,
    }
    if table is not None:
        settings["language_calibration"] = table
    return settings


def _crafted_model(task: str, table: dict[str, Any] | None) -> ServedModel:
    settings = _crafted_settings(task, table)
    return ServedModel(
        tag=f"crafted-{task}:1",
        settings=settings,
        scorer=FixedScorer(settings["label_names"]),
        backend="fixed scores",
        thresholds=np.asarray(threshold_values(settings)),
        card=None,
        by_language=language_calibration(settings),
    )


@pytest.fixture
def crafted_runtime() -> ServingRuntime:
    return ServingRuntime(
        _crafted_model("indicators", LANGUAGE_TABLE),
        _crafted_model("risk", RISK_TABLE),
        Limits(),
    )


def _calibrated(raw: float, temperature: float) -> float:
    return float(special.expit(special.logit(raw) / temperature))


def test_each_message_of_a_batch_is_decided_with_its_own_language(
    crafted_runtime: ServingRuntime,
) -> None:
    items = [
        MessageInput(text="one", language="de"),
        MessageInput(text="two", language="fr"),  # no table of its own: the fallback
        MessageInput(text="three"),  # no language: the fallback
        MessageInput(text="four", language="en"),
    ]
    results = crafted_runtime.classify_messages(items)
    assert [r.calibration for r in results] == ["de", "fallback", "fallback", "en"]
    assert [r.indicators for r in results] == [["access"], [], [], []]
    assert [r.any_indicator for r in results] == [True, False, False, False]
    for result, temperature in zip(results, (2.0, 0.5, 0.5, 1.0), strict=True):
        assert result.probabilities["access"] == pytest.approx(
            _calibrated(RAW_ACCESS, temperature), abs=1e-6
        )
        assert result.probabilities["meeting"] == pytest.approx(
            _calibrated(RAW_OTHER, temperature), abs=1e-6
        )


def test_a_conversation_is_decided_with_its_language_warning_and_evidence_included(
    crafted_runtime: ServingRuntime,
) -> None:
    messages = [Message(text=f"message {i}", author=f"u{i % 2}") for i in range(3)]
    german = crafted_runtime.score_conversation(Conversation(messages=messages, language="de"))
    assert german.calibration == "de"
    assert german.risk == pytest.approx([_calibrated(RAW_ACCESS, 2.0)] * 3, abs=1e-6)
    assert german.threshold == pytest.approx(_calibrated(0.55, 2.0), abs=1e-6)
    assert german.warning.raised and german.warning.messages_read == 1  # skepticism 1
    assert [e.indicators for e in german.evidence] == [["access"]]  # German's threshold
    for language in ("fr", None):
        other = crafted_runtime.score_conversation(
            Conversation(messages=messages, language=language)
        )
        assert other.calibration == "fallback"
        assert other.risk == pytest.approx([_calibrated(RAW_ACCESS, 0.5)] * 3, abs=1e-6)
        assert other.threshold == pytest.approx(_calibrated(0.7, 0.5), abs=1e-6)
        assert not other.warning.raised
        assert all(e.indicators == [] for e in other.evidence)


def test_metadata_lists_each_language_and_the_fallback(crafted_runtime: ServingRuntime) -> None:
    described = crafted_runtime.metadata()["models"]["indicators"]["language_calibration"]
    assert sorted(described["languages"]) == ["de", "en"]
    assert described["languages"]["de"]["thresholds"] == {"access": 0.55, "meeting": 0.5}
    assert described["languages"]["de"]["temperature"] == 2.0
    assert described["languages"]["de"]["calibrated_thresholds"]["access"] == pytest.approx(
        _calibrated(0.55, 2.0)
    )
    assert described["fallback"]["method"] == "language_balanced"
    assert described["fallback"]["thresholds"] == {"access": 0.7, "meeting": 0.5}
    risk = crafted_runtime.metadata()["models"]["risk"]["language_calibration"]
    assert risk["fallback"] == {
        "method": "pooled",
        "thresholds": {"risk": 0.7},
        "calibrated_thresholds": {"risk": pytest.approx(_calibrated(0.7, 0.5))},
        "temperature": 0.5,
    }


def test_without_a_language_table_every_language_falls_back_on_the_global_calibration() -> None:
    model = _crafted_model("indicators", None)
    for language in ("de", None):
        thresholds, temperature, used = model.calibration_for(language)
        assert used == "fallback"
        assert thresholds.tolist() == model.thresholds.tolist() == [0.5, 0.5]
        assert temperature == model.temperature == 1.0
    fallback = model.describe()["language_calibration"]
    assert fallback["languages"] == {} and fallback["fallback"]["method"] == "pooled"


def _crafted_export(folder: Path, settings: dict[str, Any]) -> Path:
    """A folder `load_served_model` accepts up to its settings: a hashed model, serving.json."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "classifier.json").write_text("{}")
    settings = {**settings, "model_sha256": folder_sha256(folder / "model"), "mlflow_run_id": "r"}
    (folder / "serving.json").write_text(json.dumps(settings))
    return folder


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            {
                **LANGUAGE_TABLE,
                "languages": {"de": {"thresholds": {"access": 0.5}, "temperature": 2}},
            },
            r"serving\.json: language_calibration, language 'de': no threshold for \['meeting'\]",
        ),
        (
            {
                **LANGUAGE_TABLE,
                "languages": {"de": {"thresholds": {"access": 0.5, "meeting": 0.5}}},
            },
            r"serving\.json: language_calibration, language 'de': temperature must be",
        ),
        (
            {**LANGUAGE_TABLE, "fallback": {"method": "pooled", "temperature": 1.0}},
            r"serving\.json: language_calibration, fallback: thresholds must be",
        ),
        ({"languages": {}}, r"serving\.json: language_calibration: expected a mapping"),
    ],
    ids=["missing-label", "missing-temperature", "fallback-without-thresholds", "no-fallback"],
)
def test_a_malformed_language_table_is_refused_naming_the_file_and_the_language(
    tmp_path: Path, table: dict[str, Any], expected: str
) -> None:
    folder = _crafted_export(tmp_path / "export", _crafted_settings("indicators", table))
    with pytest.raises(ExportIntegrityError, match=expected) as raised:
        load_served_model(folder, tag="crafted:1", expected_sha256=None, serving=ServingSettings())
    assert str(folder / "serving.json") in str(raised.value)


def test_a_language_must_be_a_lowercase_iso_code_and_is_never_echoed() -> None:
    assert MessageInput(text="hi", language="de").language == "de"
    assert Conversation(messages=[Message(text="hi")], language="gsw").language == "gsw"
    for invalid in ("DE", "german", "d", "de-AT", ""):
        with pytest.raises(ValidationError) as raised:
            MessageInput(text="a secret message", language=invalid)
        assert "should match pattern '^[a-z]{2,3}$'" in str(raised.value)
        assert "secret" not in str(raised.value)
        if len(invalid) > 2:
            assert invalid not in str(raised.value)
