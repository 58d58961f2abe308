"""The canonical corpus: one schema for everything downstream of ingestion.

A corpus is a Parquet file with one row per conversation; each row holds its ordered messages
as a nested list. Pydantic models validate records on the way in; the Arrow schema fixes the
on-disk layout and carries the schema version in its metadata so readers refuse stale files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Self

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cesagram.taxonomy import INDICATOR_IDS, AuthorRole

SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = b"cesagram.schema_version"
LANGUAGE_PATTERN = r"^[a-z]{2,3}$"

_KNOWN_INDICATORS = frozenset(INDICATOR_IDS)


class Message(BaseModel):
    """One chat message, already pseudonymised."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: Annotated[int, Field(ge=0, description="0-based position in the conversation")]
    author: Annotated[str, Field(min_length=1, description="pseudonymous author id")]
    author_role: AuthorRole = AuthorRole.UNKNOWN
    timestamp: str | None = Field(default=None, description="as given: ISO 8601 or HH:MM")
    text: Annotated[str, Field(description="message text, pseudonymised")]
    labels: tuple[str, ...] = Field(default=(), description="indicator ids from the taxonomy")
    suspicious: bool | None = Field(
        default=None, description="marked suspicious by the source (PAN12 problem 2)"
    )

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("message text is empty")
        return text

    @field_validator("labels")
    @classmethod
    def _labels_in_taxonomy(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [label for label in labels if label not in _KNOWN_INDICATORS]
        if unknown:
            raise ValueError(
                f"unknown indicator label(s) {unknown}; expected one of {list(INDICATOR_IDS)}"
            )
        # Taxonomy order keeps label lists comparable across sources.
        return tuple(label for label in INDICATOR_IDS if label in labels)


class Conversation(BaseModel):
    """A conversation with its conversation-level label and optional metadata."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    conversation_id: Annotated[str, Field(min_length=1)]
    source: Annotated[str, Field(min_length=1, description="corpus name, e.g. pan12, synthetic")]
    language: Annotated[str, Field(pattern=LANGUAGE_PATTERN, description="ISO 639-1 code")]
    risk: Annotated[int, Field(ge=0, le=1)] | None = Field(
        default=None, description="1 = grooming conversation, 0 = not, None = unknown"
    )
    age_band: str | None = None
    gender: str | None = None
    platform: str | None = None
    translated_from: str | None = Field(
        default=None, description="language code of the original when machine-translated"
    )
    messages: tuple[Message, ...]

    @model_validator(mode="after")
    def _messages_ordered(self) -> Self:
        if not self.messages:
            raise ValueError("conversation has no messages")
        for position, message in enumerate(self.messages):
            if message.index != position:
                raise ValueError(
                    f"message indexes must run 0..{len(self.messages) - 1} in order; "
                    f"found {message.index} at position {position}"
                )
        return self


METADATA_COLUMNS: tuple[str, ...] = ("age_band", "gender", "platform")

MESSAGE_TYPE = pa.struct(
    [
        pa.field("index", pa.int32(), nullable=False),
        pa.field("author", pa.string(), nullable=False),
        pa.field("author_role", pa.string(), nullable=False),
        pa.field("timestamp", pa.string()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("labels", pa.list_(pa.string()), nullable=False),
        pa.field("suspicious", pa.bool_()),
    ]
)

ARROW_SCHEMA = pa.schema(
    [
        pa.field("conversation_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("risk", pa.int8()),
        pa.field("age_band", pa.string()),
        pa.field("gender", pa.string()),
        pa.field("platform", pa.string()),
        pa.field("translated_from", pa.string()),
        pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=False),
    ],
    metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()},
)


class SchemaVersionError(ValueError):
    """A corpus file was written with another schema version."""


def _row(conversation: Conversation) -> dict[str, Any]:
    # Hand-built rather than model_dump(): this runs once per conversation on multi-million
    # message imports and model_dump is several times slower.
    return {
        "conversation_id": conversation.conversation_id,
        "source": conversation.source,
        "language": conversation.language,
        "risk": conversation.risk,
        "age_band": conversation.age_band,
        "gender": conversation.gender,
        "platform": conversation.platform,
        "translated_from": conversation.translated_from,
        "messages": [
            {
                "index": message.index,
                "author": message.author,
                "author_role": message.author_role.value,
                "timestamp": message.timestamp,
                "text": message.text,
                "labels": list(message.labels),
                "suspicious": message.suspicious,
            }
            for message in conversation.messages
        ],
    }


class CorpusWriter:
    """Streams conversations into a canonical Parquet file.

    Writes go to a temporary file that replaces ``path`` only when the writer closes without an
    exception, so a failed run never leaves a half-written corpus behind.
    """

    def __init__(self, path: Path, batch_size: int = 2000) -> None:
        self.path = path
        self.batch_size = batch_size
        self.conversations = 0
        self.messages = 0
        self._partial = path.with_name(f".{path.name}.partial")
        self._buffer: list[dict[str, Any]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self._partial, ARROW_SCHEMA, compression="zstd")

    def write(self, conversation: Conversation) -> None:
        """Buffer one conversation; flushes a row group every ``batch_size`` conversations."""
        self._buffer.append(_row(conversation))
        self.conversations += 1
        self.messages += len(conversation.messages)
        if len(self._buffer) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=ARROW_SCHEMA))
            self._buffer = []

    def close(self, commit: bool = True) -> None:
        """Finish the file; ``commit=False`` discards it."""
        if commit:
            self._flush()
        self._writer.close()
        if commit:
            self._partial.replace(self.path)
        else:
            self._partial.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(commit=exc_type is None)


def write_corpus(path: Path, conversations: Iterable[Conversation]) -> int:
    """Write conversations to ``path``; returns how many were written."""
    with CorpusWriter(path) as writer:
        for conversation in conversations:
            writer.write(conversation)
    return writer.conversations


def check_schema_version(path: Path, schema: pa.Schema) -> None:
    """Raise ``SchemaVersionError`` unless ``schema`` carries this release's schema version."""
    found = (schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if found is None:
        raise SchemaVersionError(
            f"{path}: not a cesagram corpus (no {SCHEMA_VERSION_KEY.decode()} in its metadata); "
            "create it with `cesagram data import` or `cesagram data synth`"
        )
    if found.decode() != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path}: corpus schema version {found.decode()} found, {SCHEMA_VERSION} expected; "
            "re-create it with this release's `cesagram data` commands"
        )


def read_corpus_table(path: Path) -> pa.Table:
    """Read a whole corpus as an Arrow table after checking its schema version."""
    check_schema_version(path, pq.read_schema(path))
    return pq.read_table(path)


def read_corpus(path: Path, batch_size: int = 1000) -> Iterator[Conversation]:
    """Stream validated conversations from a corpus file, one row group at a time."""
    parquet = pq.ParquetFile(path)
    check_schema_version(path, parquet.schema_arrow)
    for batch in parquet.iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            yield Conversation.model_validate(row)


def messages_frame(table: pa.Table) -> pd.DataFrame:
    """Flatten a corpus table to one row per message, conversation fields repeated."""
    conversation_columns = [name for name in table.column_names if name != "messages"]
    lengths = pc.list_value_length(table["messages"]).to_numpy(zero_copy_only=False)
    owners = np.repeat(np.arange(table.num_rows), lengths)
    conversations = table.select(conversation_columns).take(owners).to_pandas()
    messages = pa.Table.from_struct_array(pc.list_flatten(table["messages"])).to_pandas()
    frame: pd.DataFrame = pd.concat([conversations, messages], axis=1)
    return frame
