"""Merge imported corpora into one validated, de-duplicated corpus ready to split.

Every conversation is re-validated against the schema. Exact duplicates (the same sequence of
message texts, as happens when a chat is scraped twice) are kept once, so a copy can never sit
in train while its twin sits in test; conversations outside the configured languages or shorter
than the minimum length are set aside. Each decision is counted in the prepare report.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cesagram.data.schema import Conversation, CorpusWriter, read_corpus


@dataclass(frozen=True)
class PrepareConfig:
    """Which conversations go on to the split."""

    languages: tuple[str, ...] | None = None  # None keeps every language
    min_messages: int = 2
    deduplicate: bool = True


@dataclass
class PrepareReport:
    """What prepare read, kept and set aside (by reason)."""

    inputs: list[str]
    output: str
    read: int = 0
    written: int = 0
    set_aside: dict[str, int] = field(default_factory=dict)


def _content_hash(conversation: Conversation) -> str:
    digest = hashlib.sha256()
    for message in conversation.messages:
        digest.update(message.text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def prepare_corpus(inputs: list[Path], output: Path, config: PrepareConfig) -> PrepareReport:
    """Validate and merge ``inputs`` into ``output``; returns the report (also written as JSON)."""
    report = PrepareReport(inputs=[str(path) for path in inputs], output=str(output))
    reasons: Counter[str] = Counter()
    seen_ids: set[str] = set()
    seen_content: set[str] = set()
    with CorpusWriter(output) as writer:
        for path in inputs:
            for conversation in read_corpus(path):
                report.read += 1
                reason = _set_aside_reason(conversation, config, seen_ids, seen_content)
                if reason:
                    reasons[reason] += 1
                    continue
                writer.write(conversation)
                report.written += 1
    report.set_aside = dict(sorted(reasons.items()))
    report_path = output.with_name("prepare_report.json")
    report_path.write_text(json.dumps(report.__dict__, indent=2) + "\n", encoding="utf-8")
    return report


def _set_aside_reason(
    conversation: Conversation,
    config: PrepareConfig,
    seen_ids: set[str],
    seen_content: set[str],
) -> str | None:
    if config.languages is not None and conversation.language not in config.languages:
        return "language_not_selected"
    if len(conversation.messages) < config.min_messages:
        return "too_few_messages"
    if conversation.conversation_id in seen_ids:
        return "duplicate_conversation_id"
    seen_ids.add(conversation.conversation_id)
    if config.deduplicate:
        content = _content_hash(conversation)
        if content in seen_content:
            return "duplicate_content"
        seen_content.add(content)
    return None
