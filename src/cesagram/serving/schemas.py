"""The service's request and response bodies.

Inputs are checked against the serving limits (``configs/serving/``, section ``limits``) when
they are parsed, so a request over a limit is refused before it reaches a model or a batch, and
the error names the setting. Errors never repeat the input (``hide_input_in_errors``): message
text must not travel into logs or error traces.

An input may name its language (``language``); results say which calibration decided them
(``calibration``): the language's own thresholds and temperature, or the fallback's.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from cesagram.data.schema import LANGUAGE_PATTERN
from cesagram.export.bento import FALLBACK
from cesagram.serving.settings import Limits

_limits = Limits()


def use_limits(limits: Limits) -> None:
    """Make ``limits`` the ones every request body is checked against (the service's)."""
    global _limits
    _limits = limits


def active_limits() -> Limits:
    """The limits request bodies are checked against now."""
    return _limits


def _text_within_limit(text: str) -> str:
    if len(text) > _limits.max_chars_per_message:
        raise ValueError(
            f"a message has {len(text)} characters; limits.max_chars_per_message is "
            f"{_limits.max_chars_per_message}"
        )
    return text


def _author_within_limit(author: str) -> str:
    if len(author) > _limits.max_author_chars:
        raise ValueError(
            f"an author id has {len(author)} characters; limits.max_author_chars is "
            f"{_limits.max_author_chars}"
        )
    return author


def _context_within_limit(context: list[Message]) -> list[Message]:
    if len(context) > _limits.max_context_messages:
        raise ValueError(
            f"{len(context)} context messages; limits.max_context_messages is "
            f"{_limits.max_context_messages}"
        )
    return context


def _conversation_within_limit(messages: list[Message]) -> list[Message]:
    if not messages:
        raise ValueError("a conversation needs at least one message")
    if len(messages) > _limits.max_conversation_messages:
        raise ValueError(
            f"{len(messages)} messages; limits.max_conversation_messages is "
            f"{_limits.max_conversation_messages}"
        )
    return messages


def check_request_size(count: int) -> None:
    """Refuse a classify_messages request holding more messages than the limit allows."""
    if count > _limits.max_messages_per_request:
        raise ValueError(
            f"{count} messages in one request; limits.max_messages_per_request is "
            f"{_limits.max_messages_per_request}"
        )


_STRICT = ConfigDict(extra="forbid", hide_input_in_errors=True, str_max_length=None)

Text = Annotated[
    str,
    AfterValidator(_text_within_limit),
    Field(description="the message as written (at most limits.max_chars_per_message characters)"),
]
Author = Annotated[
    str,
    AfterValidator(_author_within_limit),
    Field(
        description="a pseudonymous speaker id; only 'same or different speaker' matters",
        min_length=1,
    ),
]

Language = Annotated[
    Annotated[str, Field(pattern=LANGUAGE_PATTERN)] | None,
    Field(
        description=(
            "the language of the text: a lowercase ISO 639-1 code ('de'), or ISO 639-3 "
            f"('deu') where there is none; pattern {LANGUAGE_PATTERN}. It chooses the decision "
            "thresholds and temperature the evaluation fitted for that language; absent, or a "
            "language without its own, uses the fallback (see /metadata)"
        )
    ),
]
CalibrationUsed = Annotated[
    str,
    Field(
        description=(
            "what decided this result: the language code whose own thresholds and temperature "
            f"were used, or '{FALLBACK}' (the input's language was absent or has no calibration "
            "of its own; the fallback the evaluation measured best, see /metadata)"
        )
    ),
]


class Message(BaseModel):
    """One chat message. Give authors whenever more than one message is sent together."""

    model_config = _STRICT

    text: Text
    author: Author = "user"


class MessageInput(BaseModel):
    """A message to classify, with the messages before it (oldest first) as context."""

    model_config = _STRICT

    text: Text
    author: Author = "user"
    context: Annotated[
        list[Message],
        AfterValidator(_context_within_limit),
        Field(description="previous messages, oldest first (the model reads the newest few)"),
    ] = Field(default_factory=list)
    language: Language = None


def _request_within_limit(messages: list[MessageInput]) -> list[MessageInput]:
    check_request_size(len(messages))
    return messages


ConversationMessages = Annotated[
    list[Message],
    AfterValidator(_conversation_within_limit),
    Field(description="the conversation, oldest message first"),
]
MessageInputs = Annotated[
    list[MessageInput],
    AfterValidator(_request_within_limit),
    Field(description="messages to classify (at most limits.max_messages_per_request)"),
]


class Conversation(BaseModel):
    """A whole conversation, oldest message first."""

    model_config = _STRICT

    messages: ConversationMessages
    language: Language = None


class IndicatorResult(BaseModel):
    """Indicator probabilities (calibrated) and the indicators over their thresholds."""

    probabilities: dict[str, float]
    indicators: list[str] = Field(description="indicators over their decision thresholds")
    any_indicator: bool
    calibration: CalibrationUsed


class EarlyWarning(BaseModel):
    """The eSPD early warning: raised once `skepticism` of the last 10 scores are positive."""

    raised: bool
    message_index: int | None = Field(description="0-based message after which it fired")
    messages_read: int | None = Field(description="eSPD latency k (1-based)")
    skepticism: int


class Evidence(BaseModel):
    """A message a reviewer should read first: where risk rose, or indicators were found."""

    message_index: int
    risk_before: float
    risk_after: float
    indicators: list[str]


class ConversationResult(BaseModel):
    """Risk after each message, the warning, and the evidence for a human reviewer."""

    risk: list[float] = Field(description="calibrated risk after each message")
    threshold: float = Field(description="risk at or over which a score counts as positive")
    warning: EarlyWarning
    peak_index: int
    evidence: list[Evidence] = Field(description="messages by index only, never their text")
    calibration: CalibrationUsed
