from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cesagram.data.importers.tabular import (
    Layout,
    TabularColumns,
    TabularOptions,
    import_csv,
    import_jsonl,
)
from cesagram.data.ingest import CORPUS_FILE, QUARANTINE_FILE, REPORT_FILE, InputError
from cesagram.data.schema import read_corpus
from tests.factories import ingestion

MESSAGE_COLUMNS = TabularColumns(
    text="text", label="label", conversation="chat", author="user", indicators="indicators"
)


def _import_csv(tmp_path: Path, content: str, options: TabularOptions) -> Path:
    source = tmp_path / "partner.csv"
    source.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    with ingestion(out, "csv") as session:
        import_csv(source, options, session)
    return out


def _report(out: Path) -> dict[str, dict[str, int]]:
    report: dict[str, dict[str, int]] = json.loads((out / REPORT_FILE).read_text())
    return report


def _quarantine(out: Path) -> list[dict[str, object]]:
    lines = (out / QUARANTINE_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines]


MESSAGES_CSV = """chat,user,text,label,indicators
c1,anna,hi there,predator,
c2,ben,are you coming to practice?,0,
c1,mark,how old are you? mail me at mark@example.com,predator,access
c2,cleo,,0,
c3,dan,hello,maybe,
c4,eve,one,1,
c4,fred,two,0,
c1,anna,bye,predator,secrecy;meeting
"""


def test_messages_layout_groups_rows_into_conversations(tmp_path: Path) -> None:
    out = _import_csv(tmp_path, MESSAGES_CSV, TabularOptions(MESSAGE_COLUMNS, language="de"))
    conversations = {c.conversation_id: c for c in read_corpus(out / CORPUS_FILE)}
    assert sorted(conversations) == ["c1", "c2"]
    c1 = conversations["c1"]
    assert (c1.risk, c1.language, len(c1.messages)) == (1, "de", 3)
    assert [m.labels for m in c1.messages] == [(), ("access",), ("secrecy", "meeting")]
    assert c1.messages[0].author == c1.messages[2].author != c1.messages[1].author
    assert "mark@example.com" not in c1.messages[1].text
    assert conversations["c2"].risk == 0 and len(conversations["c2"].messages) == 1

    report = _report(out)
    assert report["conversations"] == {"read": 4, "written": 2, "rejected": 2}
    assert report["messages"] == {"read": 8, "written": 4, "rejected": 4}
    assert report["rejections_by_reason"] == {
        "conflicting_labels": 1,
        "invalid_text": 1,
        "unknown_label": 1,
    }


def test_quarantine_names_file_line_and_reason_without_raw_identities(tmp_path: Path) -> None:
    out = _import_csv(tmp_path, MESSAGES_CSV, TabularOptions(MESSAGE_COLUMNS, language="de"))
    entries = {entry["code"]: entry for entry in _quarantine(out)}
    assert entries["invalid_text"]["where"] == "conversation 'c2' (line 3), message line 5"
    assert entries["invalid_text"]["reason"] == "text: Value error, message text is empty"
    assert entries["unknown_label"]["where"] == "conversation 'c3' (line 6), line 6"
    assert "unknown label 'maybe'" in str(entries["unknown_label"]["reason"])
    assert entries["conflicting_labels"]["reason"] == (
        "rows of one conversation disagree on the label (1 at line 7, 0 at line 8)"
    )
    assert all(entry["file"].endswith("partner.csv") for entry in entries.values())
    quarantine_text = (out / QUARANTINE_FILE).read_text()
    for raw_name in ("dan", "eve", "fred", "cleo"):
        assert f'"{raw_name}"' not in quarantine_text


def test_without_conversation_column_each_row_is_a_conversation(tmp_path: Path) -> None:
    content = "text,label\nhello,non-predator\nsee you,predator\n"
    columns = TabularColumns(text="text", label="label")
    out = _import_csv(tmp_path, content, TabularOptions(columns, language="nl"))
    conversations = list(read_corpus(out / CORPUS_FILE))
    assert [(c.conversation_id, c.risk) for c in conversations] == [
        ("partner-2", 0),
        ("partner-3", 1),
    ]
    # Unknown authors stay distinct per conversation, so they never tie splits together.
    assert conversations[0].messages[0].author != conversations[1].messages[0].author


SEGMENTS_CSV = """segment,label,lang
"alex: hey
sam: hi, how are you?
still typing
alex: fine",predator,de
"",non-predator,de
"one line only",non-predator,fr
"""


def test_segments_layout_splits_lines_into_messages(tmp_path: Path) -> None:
    columns = TabularColumns(text="segment", label="label", language="lang")
    options = TabularOptions(
        columns, layout=Layout.SEGMENTS, speaker_separator=": ", translated_from="en"
    )
    out = _import_csv(tmp_path, SEGMENTS_CSV, options)
    first, second = read_corpus(out / CORPUS_FILE)
    assert [m.text for m in first.messages] == ["hey", "hi, how are you?\nstill typing", "fine"]
    assert first.messages[0].author == first.messages[2].author != first.messages[1].author
    assert (first.risk, first.language, first.translated_from) == (1, "de", "en")
    assert (second.conversation_id, second.language, second.risk) == ("partner-7", "fr", 0)
    assert _report(out)["conversations"] == {"read": 3, "written": 2, "rejected": 1}
    # The empty segment's only message is quarantined, then the conversation left empty.
    assert _report(out)["rejections_by_reason"] == {"invalid_text": 1, "no_valid_messages": 1}


def test_missing_column_is_fatal_and_names_the_columns(tmp_path: Path) -> None:
    with pytest.raises(InputError) as raised:
        _import_csv(tmp_path, "body,label\nhi,1\n", TabularOptions(MESSAGE_COLUMNS, language="en"))
    assert str(raised.value) == (
        f"{tmp_path / 'partner.csv'}: line 1 (header): missing column(s) "
        "['text', 'chat', 'user', 'indicators']; the file has columns ['body', 'label']"
    )
    assert not (tmp_path / "out" / CORPUS_FILE).exists()


def test_wrong_encoding_is_fatal_and_names_the_line(tmp_path: Path) -> None:
    source = tmp_path / "partner.csv"
    source.write_bytes(b"text,label\nhello,0\nbonjour,0\n" + "d\xe9j\xe0,0\n".encode("latin-1"))
    options = TabularOptions(TabularColumns(text="text", label="label"), language="fr")
    with pytest.raises(InputError) as raised, ingestion(tmp_path / "out") as session:
        import_csv(source, options, session)
    assert str(raised.value) == (
        f"{source}: line 4: not valid utf-8 (byte 0xe9); pass the file's encoding with --encoding"
    )
    options = TabularOptions(
        TabularColumns(text="text", label="label"), language="fr", encoding="latin-1"
    )
    with ingestion(tmp_path / "out2") as session:
        import_csv(source, options, session)
    assert [c.messages[0].text for c in read_corpus(tmp_path / "out2" / CORPUS_FILE)][-1] == "déjà"


def test_row_with_extra_fields_is_fatal(tmp_path: Path) -> None:
    options = TabularOptions(TabularColumns(text="text", label="label"), language="en")
    with pytest.raises(InputError, match=r"line 3: 3 fields found, 2 expected"):
        _import_csv(tmp_path, "text,label\nhi,0\nhi;there,0,extra\n", options)


def test_no_language_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="no language"):
        TabularOptions(TabularColumns(text="text"))


def test_jsonl_quarantines_broken_lines_and_keeps_the_rest(tmp_path: Path) -> None:
    source = tmp_path / "chat.jsonl"
    records: list[str | dict[str, object]] = [
        {"chat": "c1", "user": "u1", "text": "hey", "label": "1", "indicators": ["access"]},
        '{"chat": "c1", "user": "u2", "text": ',
        "[1, 2]",
        {"chat": "c1", "user": "u2", "text": "hi", "label": "1", "indicators": None},
        "",
        {"chat": "c2", "user": "u3", "text": "yo", "label": "1", "indicators": "gifts_offers|x"},
    ]
    lines = [line if isinstance(line, str) else json.dumps(line) for line in records]
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with ingestion(out, "jsonl") as session:
        import_jsonl(source, TabularOptions(MESSAGE_COLUMNS, language="it"), session)
    (c1,) = read_corpus(out / CORPUS_FILE)
    assert [m.text for m in c1.messages] == ["hey", "hi"]
    report = _report(out)
    assert report["conversations"] == {"read": 4, "written": 1, "rejected": 3}
    assert report["messages"] == {"read": 3, "written": 2, "rejected": 1}
    assert report["rejections_by_reason"] == {
        "invalid_json": 1,
        "invalid_labels": 1,
        "no_valid_messages": 1,
        "not_an_object": 1,
    }
    entries = _quarantine(out)
    where = {entry["code"]: entry["where"] for entry in entries}
    # A record that never parsed is kept only as length and hash: its identities are unknown.
    broken = next(entry for entry in entries if entry["code"] == "invalid_json")
    assert broken["record"] == {
        "characters": 37,
        "sha256": hashlib.sha256(b'{"chat": "c1", "user": "u2", "text": ').hexdigest(),
    }
    assert where["invalid_json"] == "line 2"
    assert where["not_an_object"] == "line 3"
    assert where["invalid_labels"] == "conversation 'c2' (line 6), message line 6"
