"""The serving runtime without a server: rendering, decisions, evidence, integrity, settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from cesagram.evaluation.early import warning_latency
from cesagram.evaluation.scorers import TransformerScorer
from cesagram.export import ExportIntegrityError
from cesagram.serving.middleware import ApiKeyMiddleware
from cesagram.serving.runtime import ServingRuntime, load_served_model
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
    thresholds = pytorch_runtime.indicators.thresholds
    for result, row in zip(results, raw, strict=True):
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
    latency = warning_latency(raw, float(pytorch_runtime.risk.thresholds[0]), 5)
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
