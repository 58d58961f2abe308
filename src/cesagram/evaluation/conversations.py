"""A split's conversations as evaluation needs them: messages by id, metadata by id.

Robustness tests re-render a message or a window after perturbing its text, and fairness
reports need each conversation's language and metadata; both look conversations up here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cesagram.training.examples import one_line

# Conversation-level columns that define groups for the fairness report, when filled.
GROUP_COLUMNS = ("language", "age_band", "gender", "platform")


@dataclass(frozen=True)
class ConversationView:
    """One conversation's messages (as single lines) and its conversation-level fields."""

    conversation_id: str
    language: str
    risk: int | None
    authors: list[str]
    texts: list[str]
    fields: dict[str, Any]


def conversations_by_id(table: pa.Table) -> dict[str, ConversationView]:
    """Every conversation of a corpus table, by id, in table order."""
    rows = table.select([name for name in table.column_names if name != "messages"]).to_pylist()
    messages = table.column("messages").to_pylist()
    views = {}
    for row, conversation_messages in zip(rows, messages, strict=True):
        ordered = sorted(conversation_messages, key=lambda message: message["index"])
        views[row["conversation_id"]] = ConversationView(
            conversation_id=row["conversation_id"],
            language=row["language"],
            risk=row["risk"],
            authors=[message["author"] for message in ordered],
            texts=[one_line(message["text"]) for message in ordered],
            fields=row,
        )
    return views


def group_values(
    views: dict[str, ConversationView], conversation_ids: list[str]
) -> dict[str, list[Any]]:
    """For each group column with at least one value, the value of every listed conversation."""
    columns: dict[str, list[Any]] = {}
    for column in GROUP_COLUMNS:
        values = [views[cid].fields.get(column) for cid in conversation_ids]
        if any(value is not None for value in values):
            columns[column] = values
    return columns


def data_provenance(table: pa.Table, split: str) -> dict[str, Any]:
    """Counts a model card needs: conversations, messages, languages, sources, translations."""
    languages = Counter(table.column("language").to_pylist())
    sources = Counter(table.column("source").to_pylist())
    translated = Counter(
        value for value in table.column("translated_from").to_pylist() if value is not None
    )
    lengths = pc.list_value_length(table.column("messages"))
    return {
        "split": split,
        "conversations": table.num_rows,
        "messages": int(pc.sum(lengths).as_py() or 0),
        "languages": dict(sorted(languages.items())),
        "sources": dict(sorted(sources.items())),
        "translated": dict(sorted(translated.items())),
    }
