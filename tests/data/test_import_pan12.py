"""The PAN12 XML importer: counts, roles, risk, problem 2 flags, pseudonymisation, bad input.

Fixtures are tiny PAN12-shaped files written here, with bland chat lines only (content rule).
"""

from __future__ import annotations

import gc
import json
import logging
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cesagram.data.importers import pan12
from cesagram.data.importers.pan12 import import_pan12
from cesagram.data.ingest import (
    CORPUS_FILE,
    QUARANTINE_FILE,
    REPORT_FILE,
    ImportReport,
    Ingestion,
    InputError,
)
from cesagram.data.pseudonymise import Pseudonymiser
from cesagram.data.schema import read_corpus_table

KEY = b"test-key-0123456789"
PSEUDONYMISER = Pseudonymiser(KEY)

# Raw author ids chosen to be easy to spot if one ever leaks into an output file.
PREDATOR = "rawpredator0001"
DECOY = "rawdecoy0002"
TEEN_A = "rawteenalpha03"
TEEN_B = "rawteenbeta004"
RAW_IDS = (PREDATOR, DECOY, TEEN_A, TEEN_B)


def message(line: int, author: str | None, text: str | None, time: str | None = "20:15") -> str:
    """One ``<message>`` element; ``None`` leaves the child element out."""
    parts = [f'<message line="{line}">']
    if author is not None:
        parts.append(f"<author>{author}</author>")
    if time is not None:
        parts.append(f"<time>{time}</time>")
    if text is not None:
        parts.append(f"<text>{text}</text>")
    parts.append("</message>")
    return "\n".join(parts)


def conversation(conversation_id: str | None, *messages: str) -> str:
    """One ``<conversation>``; ``None`` leaves the id attribute out."""
    opening = (
        "<conversation>" if conversation_id is None else f'<conversation id="{conversation_id}">'
    )
    return "\n".join([opening, *messages, "</conversation>"])


def corpus_xml(*conversations: str) -> str:
    """A whole corpus file."""
    return "\n".join(
        [
            '<?xml version="1.0" encoding="UTF-8"?>',
            "<conversations>",
            *conversations,
            "</conversations>",
            "",
        ]
    )


GROOMING = conversation(
    "c-groom",
    message(1, PREDATOR, "hey, how was school?", "21:02"),
    message(2, DECOY, "boring, we had a maths test", "21:03"),
    message(3, PREDATOR, "ask @rawdecoy0002 if you forgot", "21:05"),
    message(4, DECOY, "ok lol", "21:06"),
)
PEERS = conversation(
    "c-peers",
    message(1, TEEN_A, "did you finish the homework?", "9:07"),
    message(2, TEEN_B, "yes, mail me at someone@example.com", "noon"),
    message(3, TEEN_A, "see you at practice", None),
)
SHORT = conversation("c-short", message(1, TEEN_B, "brb dinner"))


class Imported:
    """What one import left behind: the report, the corpus rows and the quarantine."""

    def __init__(self, out: Path, report: ImportReport) -> None:
        self.out = out
        self.report = report
        corpus = out / CORPUS_FILE
        self.rows: list[dict[str, Any]] = (
            read_corpus_table(corpus).to_pylist() if corpus.exists() else []
        )
        self.quarantine = [
            json.loads(line) for line in (out / QUARANTINE_FILE).read_text().splitlines()
        ]

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        """The corpus row of ``conversation_id``."""
        (row,) = [row for row in self.rows if row["conversation_id"] == conversation_id]
        return row

    def balanced(self) -> bool:
        """Every conversation and message read was written or quarantined."""
        return self.report.conversations.balanced and self.report.messages.balanced


def write(path: Path, text: str | bytes) -> Path:
    """Write a fixture file and return its path."""
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def run_import(
    tmp_path: Path,
    xml: str | bytes,
    predators: str = f"{PREDATOR}\n",
    *,
    suspicious: str | None = None,
    **options: Any,
) -> Imported:
    """Import fixture files written into ``tmp_path`` and collect the outputs."""
    corpus = write(tmp_path / "corpus.xml", xml)
    predator_file = write(tmp_path / "predators.txt", predators)
    problem2 = write(tmp_path / "problem2.txt", suspicious) if suspicious is not None else None
    out = tmp_path / "out"
    with Ingestion(
        out, format="pan12", source="pan12", inputs=[corpus], pseudonymiser=PSEUDONYMISER
    ) as ingestion:
        import_pan12(corpus, predator_file, ingestion, suspicious_lines=problem2, **options)
    return Imported(out, ingestion.report)


def expect_fatal(tmp_path: Path, xml: str | bytes, **options: Any) -> InputError:
    """Run an import that must fail; check that it left no corpus behind."""
    with pytest.raises(InputError) as raised:
        run_import(tmp_path, xml, **options)
    assert not (tmp_path / "out" / CORPUS_FILE).exists()
    assert not (tmp_path / "out" / REPORT_FILE).exists()
    return raised.value


# -- well-formed corpora ---------------------------------------------------------------------


def test_counts_risk_and_roles(tmp_path: Path) -> None:
    imported = run_import(tmp_path, corpus_xml(GROOMING, PEERS, SHORT))

    counts = imported.report
    assert (counts.conversations.read, counts.conversations.written) == (3, 3)
    assert (counts.messages.read, counts.messages.written) == (8, 8)
    assert (counts.conversations.rejected, counts.messages.rejected) == (0, 0)
    assert imported.balanced()
    assert imported.quarantine == []
    assert counts.risk == {"0": 2, "1": 1}
    assert counts.languages == {"en": 3}

    assert [row["conversation_id"] for row in imported.rows] == ["c-groom", "c-peers", "c-short"]
    grooming = imported.conversation("c-groom")
    assert (grooming["risk"], grooming["source"], grooming["language"]) == (1, "pan12", "en")
    assert [m["author_role"] for m in grooming["messages"]] == [
        "offender",
        "decoy",
        "offender",
        "decoy",
    ]
    assert [m["index"] for m in grooming["messages"]] == [0, 1, 2, 3]
    assert [m["text"] for m in grooming["messages"]][1] == "boring, we had a maths test"
    peers = imported.conversation("c-peers")
    assert peers["risk"] == 0
    assert {m["author_role"] for m in peers["messages"]} == {"unknown"}
    assert imported.conversation("c-short")["risk"] == 0


def test_authors_are_pseudonymised_and_never_written_raw(tmp_path: Path) -> None:
    xml = corpus_xml(
        GROOMING,
        PEERS,
        # Quarantined messages must be pseudonymised too.
        conversation("c-quarantined", message(1, TEEN_A, ""), message(2, TEEN_B, "ok")),
    )
    imported = run_import(tmp_path, xml)

    grooming = imported.conversation("c-groom")
    assert [m["author"] for m in grooming["messages"]] == [
        PSEUDONYMISER.author(PREDATOR),
        PSEUDONYMISER.author(DECOY),
        PSEUDONYMISER.author(PREDATOR),
        PSEUDONYMISER.author(DECOY),
    ]
    # An @-mention of an author maps to the same token as the author.
    assert grooming["messages"][2]["text"] == f"ask @{PSEUDONYMISER.author(DECOY)} if you forgot"
    assert "someone@example.com" not in imported.conversation("c-peers")["messages"][1]["text"]
    assert len(imported.quarantine) == 1

    everything = json.dumps(imported.rows) + (tmp_path / "out" / QUARANTINE_FILE).read_text()
    everything += (tmp_path / "out" / REPORT_FILE).read_text()
    for raw_id in RAW_IDS:
        assert raw_id not in everything


def test_timestamps_are_kept_only_when_they_look_like_hh_mm(tmp_path: Path) -> None:
    imported = run_import(tmp_path, corpus_xml(GROOMING, PEERS))
    assert [m["timestamp"] for m in imported.conversation("c-groom")["messages"]] == [
        "21:02",
        "21:03",
        "21:05",
        "21:06",
    ]
    # "9:07" is kept as given, "noon" and a missing <time> become None.
    assert [m["timestamp"] for m in imported.conversation("c-peers")["messages"]] == [
        "9:07",
        None,
        None,
    ]


def test_language_and_source_are_parameters(tmp_path: Path) -> None:
    imported = run_import(tmp_path, corpus_xml(SHORT), language="nl", source="pan12-nl")
    row = imported.conversation("c-short")
    assert (row["language"], row["source"]) == ("nl", "pan12-nl")
    assert imported.report.languages == {"nl": 1}


def test_an_invalid_language_code_is_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="language must be an ISO 639 code like 'en', found 'EN'"):
        run_import(tmp_path, corpus_xml(SHORT), language="EN")


def test_without_problem2_file_suspicious_is_unknown(tmp_path: Path) -> None:
    imported = run_import(tmp_path, corpus_xml(GROOMING, PEERS))
    flags = {m["suspicious"] for row in imported.rows for m in row["messages"]}
    assert flags == {None}


def test_problem2_lines_mark_suspicious_messages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    problem2 = "c-groom\t1\nc-groom\t3\n\nc-groom\t3\nc-groom\t99\nc-unknown\t2\n"
    with caplog.at_level(logging.WARNING, logger="cesagram.data.importers.pan12"):
        imported = run_import(tmp_path, corpus_xml(GROOMING, PEERS), suspicious=problem2)

    assert [m["suspicious"] for m in imported.conversation("c-groom")["messages"]] == [
        True,
        False,
        True,
        False,
    ]
    assert [m["suspicious"] for m in imported.conversation("c-peers")["messages"]] == [
        False,
        False,
        False,
    ]
    # Four distinct references, two of which match no message: logged as ids, never text.
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "2 of 4 suspicious line reference(s) match no message" in record.getMessage()
    assert "(1 conversation id(s) not in the corpus)" in record.getMessage()
    assert "c-groom line 99, c-unknown line 2" in record.getMessage()
    assert "school" not in record.getMessage()


def test_problem2_references_that_all_match_log_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cesagram.data.importers.pan12"):
        run_import(tmp_path, corpus_xml(GROOMING), suspicious="c-groom\t2\r\n")
    assert caplog.records == []


def test_empty_predator_file_is_allowed_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cesagram.data.importers.pan12"):
        imported = run_import(tmp_path, corpus_xml(GROOMING, PEERS), predators="\n  \n")
    assert imported.report.risk == {"0": 2}
    roles = {m["author_role"] for row in imported.rows for m in row["messages"]}
    assert roles == {"unknown"}
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'predators.txt'} lists no predator ids: every conversation gets risk 0"
    ]


def test_predator_file_tolerates_bom_crlf_and_spaces(tmp_path: Path) -> None:
    predators = f"\ufeff{TEEN_B}  \r\n\r\n{PREDATOR}\r\n"
    imported = run_import(tmp_path, corpus_xml(GROOMING, PEERS), predators=predators)
    assert imported.report.risk == {"1": 2}
    peers = imported.conversation("c-peers")
    assert [m["author_role"] for m in peers["messages"]] == ["decoy", "offender", "decoy"]


def test_unexpected_elements_are_skipped_and_logged_by_tag(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    xml = corpus_xml(
        "<note>bland words</note>",
        conversation("c-1", message(1, TEEN_A, "hi"), "<comment>bland words</comment>"),
        "<note>bland words</note>",
    )
    with caplog.at_level(logging.WARNING, logger="cesagram.data.importers.pan12"):
        imported = run_import(tmp_path, xml)
    assert imported.report.messages.written == 1
    (record,) = caplog.records
    assert record.getMessage().endswith(
        "ignored unexpected elements (not PAN12): <conversation/comment> x1, <note> x2"
    )
    assert "bland" not in record.getMessage()


# -- quarantined records ---------------------------------------------------------------------


def test_messages_without_text_are_quarantined_one_by_one(tmp_path: Path) -> None:
    xml = corpus_xml(
        conversation(
            "c-1",
            message(1, TEEN_A, "hi"),
            message(2, TEEN_B, ""),
            message(3, TEEN_A, "   "),
            message(4, TEEN_B, None),
            message(5, TEEN_A, "see you"),
        )
    )
    imported = run_import(tmp_path, xml)

    report = imported.report
    assert (report.messages.read, report.messages.written, report.messages.rejected) == (5, 2, 3)
    assert (report.conversations.written, report.conversations.rejected) == (1, 0)
    assert imported.balanced()
    messages = imported.conversation("c-1")["messages"]
    assert [(m["index"], m["text"]) for m in messages] == [(0, "hi"), (1, "see you")]
    assert report.rejections_by_reason == {"invalid_text": 3}
    expected_reason = "text: Value error, message text is empty"
    assert [(q["level"], q["where"], q["code"], q["reason"]) for q in imported.quarantine] == [
        ("message", f"conversation #1 (c-1), message line {line}", "invalid_text", expected_reason)
        for line in (2, 3, 4)
    ]
    assert all(q["file"] == str(tmp_path / "corpus.xml") for q in imported.quarantine)


def test_messages_without_author_are_quarantined(tmp_path: Path) -> None:
    xml = corpus_xml(
        conversation(
            "c-1",
            message(1, None, "hi"),
            message(2, "", "hello"),
            message(3, "  ", "hey"),
            message(4, TEEN_A, "ok"),
        )
    )
    imported = run_import(tmp_path, xml)
    assert (imported.report.messages.written, imported.report.messages.rejected) == (1, 3)
    assert imported.balanced()
    assert imported.report.rejections_by_reason == {"invalid_author": 3}
    assert {q["reason"] for q in imported.quarantine} == {"author: Input should be a valid string"}
    assert [q["where"] for q in imported.quarantine] == [
        f"conversation #1 (c-1), message line {line}" for line in (1, 2, 3)
    ]


def test_a_conversation_with_no_valid_message_is_quarantined_whole(tmp_path: Path) -> None:
    imported = run_import(tmp_path, corpus_xml(conversation("c-1", message(1, TEEN_A, "")), SHORT))
    assert imported.report.conversations.rejected == 1
    assert imported.report.messages.rejected == 1
    assert imported.report.rejections_by_reason == {"invalid_text": 1, "no_valid_messages": 1}
    assert imported.balanced()


def test_duplicate_conversation_ids_are_quarantined(tmp_path: Path) -> None:
    duplicate = conversation("c-peers", message(1, TEEN_B, "again"), message(2, TEEN_A, "yes"))
    imported = run_import(tmp_path, corpus_xml(PEERS, SHORT, duplicate))

    report = imported.report
    assert (report.conversations.read, report.conversations.written) == (3, 2)
    assert (report.messages.read, report.messages.written, report.messages.rejected) == (6, 4, 2)
    assert imported.balanced()
    (entry,) = imported.quarantine
    assert (entry["level"], entry["code"], entry["where"]) == (
        "conversation",
        "duplicate_conversation_id",
        "conversation #3 (c-peers)",
    )
    assert entry["reason"] == (
        "conversation id 'c-peers' already seen at conversation #1 (c-peers)"
    )
    # The first occurrence is the one kept.
    assert imported.conversation("c-peers")["messages"][0]["text"] == (
        "did you finish the homework?"
    )


def test_a_conversation_without_id_is_quarantined_with_its_messages(tmp_path: Path) -> None:
    no_id = conversation(None, message(1, TEEN_A, "hi"), message(2, TEEN_B, "hello"))
    blank_id = conversation("  ", message(1, TEEN_A, "hey"))
    imported = run_import(tmp_path, corpus_xml(no_id, SHORT, blank_id))

    report = imported.report
    assert (report.conversations.read, report.conversations.written) == (3, 1)
    assert report.conversations.rejected == 2
    assert (report.messages.read, report.messages.written, report.messages.rejected) == (4, 1, 3)
    assert imported.balanced()
    assert report.rejections_by_reason == {"missing_conversation_id": 2}
    assert [(q["level"], q["where"], q["reason"]) for q in imported.quarantine] == [
        ("conversation", "conversation #1 (no id)", "<conversation> has no id attribute"),
        ("conversation", "conversation #3 (no id)", "<conversation> has no id attribute"),
    ]
    assert imported.quarantine[0]["record"]["messages"][0]["author"] == PSEUDONYMISER.author(TEEN_A)


def test_an_empty_conversation_is_quarantined(tmp_path: Path) -> None:
    imported = run_import(tmp_path, corpus_xml(conversation("c-empty"), SHORT))
    assert imported.report.rejections_by_reason == {"no_valid_messages": 1}
    assert imported.balanced()


# -- fatal input problems ----------------------------------------------------------------------


def test_xml_that_is_not_well_formed_names_file_line_and_column(tmp_path: Path) -> None:
    xml = corpus_xml(SHORT, '<conversation id="c-2">\n<message line="1">\n<author>x</autor>')
    error = expect_fatal(tmp_path, xml)
    assert str(error) == (
        f"{tmp_path / 'corpus.xml'}: line 12, column 12: XML is not well-formed: mismatched tag"
    )
    assert (error.path, error.where) == (tmp_path / "corpus.xml", "line 12, column 12")


def test_a_truncated_corpus_is_fatal(tmp_path: Path) -> None:
    error = expect_fatal(tmp_path, corpus_xml(SHORT).replace("</conversations>", ""))
    assert error.problem == "XML is not well-formed: no element found"


def test_bytes_invalid_in_utf8_are_fatal_with_their_line(tmp_path: Path) -> None:
    xml = corpus_xml(SHORT).encode().replace(b"brb dinner", b"caf\xe9 later")
    error = expect_fatal(tmp_path, xml)
    assert str(error) == (
        f"{tmp_path / 'corpus.xml'}: line 7, column 10: "
        "bytes that are not valid UTF-8 (the corpus must be UTF-8 encoded)"
    )


def test_a_declared_latin1_corpus_is_decoded(tmp_path: Path) -> None:
    xml = corpus_xml(SHORT).replace("UTF-8", "ISO-8859-1").encode("latin-1")
    xml = xml.replace(b"brb dinner", b"caf\xe9 later")
    imported = run_import(tmp_path, xml)
    assert imported.conversation("c-short")["messages"][0]["text"] == "café later"


def test_a_file_that_is_not_a_pan12_corpus_is_fatal(tmp_path: Path) -> None:
    error = expect_fatal(tmp_path, "<chats><chat/></chats>")
    assert (
        error.problem == "expected a PAN12 corpus with root element <conversations>, found <chats>"
    )


def test_missing_files_are_fatal(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingestion = Ingestion(
        out, format="pan12", source="pan12", inputs=[], pseudonymiser=PSEUDONYMISER
    )
    corpus = write(tmp_path / "corpus.xml", corpus_xml(SHORT))
    predators = write(tmp_path / "predators.txt", PREDATOR)
    missing = tmp_path / "missing.txt"
    with pytest.raises(InputError, match=r"missing\.txt: file not found$"):
        import_pan12(missing, predators, ingestion)
    with pytest.raises(InputError, match=r"missing\.txt: file not found$"):
        import_pan12(corpus, missing, ingestion)
    with pytest.raises(InputError, match=r"missing\.txt: file not found$"):
        import_pan12(corpus, predators, ingestion, suspicious_lines=missing)
    with pytest.raises(InputError, match="cannot read the file"):
        import_pan12(tmp_path, predators, ingestion)
    ingestion.close(commit=False)


@pytest.mark.parametrize(
    ("second_line", "problem"),
    [
        ("c-groom\t2\t1", "expected 2 tab-separated columns (conversation_id, line), found 3"),
        ("c-groom 2", "expected 2 tab-separated columns (conversation_id, line), found 1"),
        ("c-groom\tsecond", "expected a message line number in column 2, found 'second'"),
        ("c-groom\t-2", "expected a message line number in column 2, found '-2'"),
        ("\t2", "the conversation id (column 1) is empty"),
    ],
)
def test_bad_problem2_lines_are_fatal_with_file_and_line(
    tmp_path: Path, second_line: str, problem: str
) -> None:
    error = expect_fatal(tmp_path, corpus_xml(GROOMING), suspicious=f"c-groom\t1\n{second_line}\n")
    assert str(error) == f"{tmp_path / 'problem2.txt'}: line 2: {problem}"


def test_id_files_that_are_not_utf8_are_fatal_with_the_line(tmp_path: Path) -> None:
    corpus = write(tmp_path / "corpus.xml", corpus_xml(SHORT))
    predators = write(tmp_path / "predators.txt", b"abc\nd\xffe\n")
    with (
        Ingestion(
            tmp_path / "out", format="pan12", source="pan12", inputs=[], pseudonymiser=PSEUDONYMISER
        ) as ingestion,
        pytest.raises(InputError) as raised,
    ):
        import_pan12(corpus, predators, ingestion)
    assert str(raised.value) == f"{predators}: line 2: not valid UTF-8 (byte 2 of the line)"


def test_finished_conversations_are_freed_while_streaming(tmp_path: Path) -> None:
    """Memory stays flat: a conversation is dropped from the tree once it has been offered."""
    corpus = write(
        tmp_path / "corpus.xml",
        corpus_xml(*(conversation(f"c-{n}", message(1, TEEN_A, "hi")) for n in range(3000))),
    )
    elements = pan12._conversation_elements(corpus, Counter())
    early = [weakref.ref(next(elements)) for _ in range(1000)]
    for _ in range(1000):
        next(elements)
    gc.collect()
    assert [ref for ref in early if ref() is not None] == []
    assert sum(1 for _ in elements) == 1000
