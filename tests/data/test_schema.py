from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from cesagram.data.schema import (
    ARROW_SCHEMA,
    Conversation,
    Message,
    SchemaVersionError,
    messages_frame,
    read_corpus,
    read_corpus_table,
)
from tests.factories import conversation, corpus_file


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    original = conversation(
        "c1", risk=1, labels={0: ("meeting", "access")}, texts=("where do you live?", "far")
    )
    path = corpus_file(tmp_path / "corpus.parquet", [original])
    (read_back,) = list(read_corpus(path))
    assert read_back == original
    # Labels are stored in taxonomy order whatever order the source gave.
    assert read_back.messages[0].labels == ("access", "meeting")


def test_messages_frame_has_one_row_per_message(tmp_path: Path) -> None:
    path = corpus_file(
        tmp_path / "c.parquet", [conversation("c1"), conversation("c2", texts=("a", "b"))]
    )
    frame = messages_frame(read_corpus_table(path))
    assert list(frame["conversation_id"]) == ["c1"] * 4 + ["c2"] * 2
    assert list(frame["index"]) == [0, 1, 2, 3, 0, 1]
    assert {"language", "risk", "text", "labels", "author"} <= set(frame.columns)


def test_unknown_indicator_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"unknown indicator label\(s\) \['flirting'\]"):
        Message(index=0, author="a", text="hi", labels=("flirting",))


def test_blank_text_is_rejected() -> None:
    with pytest.raises(ValidationError, match="message text is empty"):
        Message(index=0, author="a", text="   ")


def test_message_indexes_must_run_in_order() -> None:
    with pytest.raises(ValidationError, match="found 2 at position 1"):
        Conversation(
            conversation_id="c",
            source="s",
            language="en",
            messages=(
                Message(index=0, author="a", text="x"),
                Message(index=2, author="a", text="y"),
            ),
        )


def test_language_must_be_a_code() -> None:
    with pytest.raises(ValidationError, match="language"):
        conversation("c", language="English")


def test_file_without_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1]}), path)
    with pytest.raises(SchemaVersionError, match=r"foreign.parquet: not a cesagram corpus"):
        read_corpus_table(path)


def test_file_with_other_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.parquet"
    schema = ARROW_SCHEMA.with_metadata({b"cesagram.schema_version": b"0"})
    pq.write_table(pa.Table.from_pylist([], schema=schema), path)
    with pytest.raises(SchemaVersionError, match="schema version 0 found, 1 expected"):
        list(read_corpus(path))


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    from cesagram.data.schema import CorpusWriter

    path = tmp_path / "corpus.parquet"
    with pytest.raises(RuntimeError), CorpusWriter(path) as writer:
        writer.write(conversation("c1"))
        raise RuntimeError("interrupted")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []
