from __future__ import annotations

import json
from pathlib import Path

from cesagram.data.prepare import PrepareConfig, prepare_corpus
from cesagram.data.schema import read_corpus
from tests.factories import conversation, corpus_file


def test_prepare_merges_dedupes_and_filters(tmp_path: Path) -> None:
    first = corpus_file(
        tmp_path / "a.parquet",
        [
            conversation("a1", texts=("hi", "hey", "ok")),
            conversation("a2", texts=("only one",)),
            conversation("a3", language="fr", texts=("salut", "ça va")),
        ],
    )
    second = corpus_file(
        tmp_path / "b.parquet",
        [
            conversation("b1", texts=("hi", "hey", "ok")),  # same texts as a1
            conversation("a1", texts=("other", "texts")),  # same id as a1
            conversation("b2", language="de", texts=("hallo", "na")),
        ],
    )
    out = tmp_path / "prepared" / "corpus.parquet"
    report = prepare_corpus([first, second], out, PrepareConfig(languages=("en", "de")))
    assert [c.conversation_id for c in read_corpus(out)] == ["a1", "b2"]
    assert (report.read, report.written) == (6, 2)
    assert report.set_aside == {
        "duplicate_content": 1,
        "duplicate_conversation_id": 1,
        "language_not_selected": 1,
        "too_few_messages": 1,
    }
    saved = json.loads((out.parent / "prepare_report.json").read_text())
    assert saved["set_aside"] == report.set_aside


def test_prepare_keeps_duplicates_when_asked(tmp_path: Path) -> None:
    corpus = corpus_file(
        tmp_path / "a.parquet",
        [conversation("x", texts=("a", "b")), conversation("y", texts=("a", "b"))],
    )
    out = tmp_path / "out.parquet"
    report = prepare_corpus([corpus], out, PrepareConfig(deduplicate=False))
    assert report.written == 2
