from __future__ import annotations

import json
from pathlib import Path

import pytest

from cesagram.data.importers.espd import import_espd
from cesagram.data.ingest import CORPUS_FILE, REPORT_FILE, InputError
from cesagram.data.labels import DEFAULT_RISK_LABELS, RiskLabelMap
from cesagram.data.schema import read_corpus
from tests.factories import ingestion

DATAPACK = {
    "datapackID": "test-pack",
    "chats": [
        {
            "name": "chat-a",
            "className": "predator",
            "content": [
                {
                    "type": "message",
                    "author": "u1",
                    "time": "10:01",
                    "body": "hi, how old are you?",
                },
                {"type": "separator"},
                {"type": "message", "author": "u2", "time": "10:05", "body": "hey"},
            ],
        },
        {
            "name": "chat-b",
            "className": "non-predator",
            "content": [
                {"type": "message", "author": "u3", "body": "gg"},
                {"type": "image", "author": "u3"},
                {"type": "message", "author": "u4", "body": ""},
            ],
        },
        {"name": "chat-c", "className": "suspect", "content": [{"type": "message", "body": "x"}]},
        {"name": "chat-d"},
    ],
}


def _import(tmp_path: Path, document: object) -> Path:
    source = tmp_path / "pack.json"
    source.write_text(json.dumps(document))
    out = tmp_path / "out"
    with ingestion(out, "espd") as session:
        import_espd(source, session, label_map=RiskLabelMap(DEFAULT_RISK_LABELS), language="en")
    return out


def test_datapack_chats_become_conversations(tmp_path: Path) -> None:
    out = _import(tmp_path, DATAPACK)
    chat_a, chat_b = read_corpus(out / CORPUS_FILE)
    assert (chat_a.conversation_id, chat_a.risk, len(chat_a.messages)) == ("chat-a", 1, 2)
    assert [m.timestamp for m in chat_a.messages] == ["10:01", "10:05"]
    assert (chat_b.conversation_id, chat_b.risk, len(chat_b.messages)) == ("chat-b", 0, 1)
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["conversations"] == {"read": 4, "written": 2, "rejected": 2}
    assert report["messages"] == {"read": 6, "written": 3, "rejected": 3}
    assert report["rejections_by_reason"] == {
        "invalid_chat": 1,
        "invalid_text": 1,
        "unknown_item_type": 1,
        "unknown_label": 1,
    }


def test_a_plain_list_of_chats_is_accepted(tmp_path: Path) -> None:
    out = _import(tmp_path, DATAPACK["chats"][:1])  # type: ignore[index]
    assert [c.conversation_id for c in read_corpus(out / CORPUS_FILE)] == ["chat-a"]


def test_broken_json_is_fatal_with_line_and_column(tmp_path: Path) -> None:
    source = tmp_path / "pack.json"
    source.write_text('{"chats": [\n  {"name": "a",,}\n]}')
    with pytest.raises(InputError) as raised, ingestion(tmp_path / "out") as session:
        import_espd(source, session, label_map=RiskLabelMap())
    assert str(raised.value) == (
        f"{source}: line 2, column 16: not valid JSON "
        "(Expecting property name enclosed in double quotes)"
    )


def test_wrong_top_level_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(
        InputError, match=r"expected a datapack with a 'chats' list.*\['messages'\]"
    ):
        _import(tmp_path, {"messages": []})
