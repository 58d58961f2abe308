"""The CESAGRAM service: the champion models behind four APIs, for human reviewers.

A thin BentoML shell over `cesagram.serving.runtime.ServingRuntime`. Which models it serves and
how (device, batching, limits, API keys) comes from ``serving/serving.yaml``, written by
``cesagram bento`` (or the file named by ``CESAGRAM_SERVING_FILE``).

    bentoml serve serving.service:Cesagram --port 3000    # from the project root
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml

from cesagram.serving.logs import redact_request_errors
from cesagram.serving.middleware import ApiKeyMiddleware, JsonBodiesOnly
from cesagram.serving.runtime import ServingRuntime, load_served_model
from cesagram.serving.schemas import (
    Conversation,
    ConversationMessages,
    ConversationResult,
    IndicatorResult,
    Language,
    MessageInputs,
    use_limits,
)
from cesagram.serving.settings import load_service_file

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SERVICE = load_service_file(Path(__file__).with_name("serving.yaml"))
SETTINGS = SERVICE.settings
use_limits(SETTINGS.limits)
redact_request_errors()


@bentoml.service(
    name="cesagram",
    workers=SETTINGS.workers,
    resources=SETTINGS.resources,
    traffic={"timeout": SETTINGS.timeout_s},
)
class Cesagram:
    """Indicator classification and conversation risk with early warning and evidence."""

    indicators_model = bentoml.models.BentoModel(SERVICE.models["indicators"])
    risk_model = bentoml.models.BentoModel(SERVICE.models["risk"])

    def __init__(self) -> None:
        served = {
            task: load_served_model(
                Path(stored.path),
                tag=str(stored.tag),
                expected_sha256=stored.info.metadata.get("model_sha256"),
                serving=SETTINGS,
            )
            for task, stored in (("indicators", self.indicators_model), ("risk", self.risk_model))
        }
        self.runtime = ServingRuntime(served["indicators"], served["risk"], SETTINGS.limits)

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.batching.max_batch_size,
        max_latency_ms=SETTINGS.batching.max_latency_ms,
    )
    def classify_messages(self, messages: MessageInputs) -> list[IndicatorResult]:
        """Grooming-indicator probabilities and decisions for each message (with context)."""
        return self.runtime.classify_messages(messages)

    @bentoml.api
    def score_conversation(
        self, messages: ConversationMessages, language: Language = None
    ) -> ConversationResult:
        """Risk after each message, the early warning, and the messages to read first."""
        conversation = Conversation.model_construct(messages=messages, language=language)
        return self.runtime.score_conversation(conversation)

    @bentoml.api
    def model_card(self) -> str:
        """The served models' cards (Markdown), as recorded at export."""
        return self.runtime.model_card()

    @bentoml.api
    def metadata(self) -> dict[str, Any]:
        """Versions, hashes, thresholds, backends and limits of what is served."""
        return self.runtime.metadata()


Cesagram.add_asgi_middleware(JsonBodiesOnly)
if SETTINGS.auth.required:
    Cesagram.add_asgi_middleware(ApiKeyMiddleware, auth=SETTINGS.auth)
