"""Small canonical conversations for tests (bland text only: the content rule holds here too)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cesagram.data.ingest import Ingestion
from cesagram.data.pseudonymise import Pseudonymiser
from cesagram.data.schema import Conversation, Message, write_corpus
from cesagram.taxonomy import AuthorRole

TEST_PSEUDONYMISER = Pseudonymiser(b"test-key-0123456789")


def conversation(
    conversation_id: str,
    *,
    authors: Sequence[str] = ("a", "b"),
    texts: Sequence[str] = ("hi", "hello", "how was school?", "fine"),
    language: str = "en",
    risk: int | None = 0,
    roles: dict[str, AuthorRole] | None = None,
    labels: dict[int, tuple[str, ...]] | None = None,
) -> Conversation:
    """A conversation whose messages alternate between ``authors``."""
    roles = roles or {}
    labels = labels or {}
    return Conversation(
        conversation_id=conversation_id,
        source="test",
        language=language,
        risk=risk,
        messages=tuple(
            Message(
                index=index,
                author=authors[index % len(authors)],
                author_role=roles.get(authors[index % len(authors)], AuthorRole.UNKNOWN),
                text=text,
                labels=labels.get(index, ()),
            )
            for index, text in enumerate(texts)
        ),
    )


def corpus_file(path: Path, conversations: Sequence[Conversation]) -> Path:
    """Write ``conversations`` to ``path`` and return it."""
    write_corpus(path, conversations)
    return path


def ingestion(out_dir: Path, format: str = "test") -> Ingestion:
    """An Ingestion into ``out_dir`` with the test key."""
    return Ingestion(
        out_dir, format=format, source=format, inputs=[], pseudonymiser=TEST_PSEUDONYMISER
    )
