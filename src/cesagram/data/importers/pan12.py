"""Importer for the PAN12 Sexual Predator Identification corpus (PAN@CLEF 2012).

The corpus is one XML file::

    <conversations>
      <conversation id="...">
        <message line="1"><author>...</author><time>HH:MM</time><text>...</text></message>
        ...

plus a predator id list (problem 1 ground truth) and, optionally, the problem 2 ground truth
listing the suspicious lines of predator conversations. The XML is streamed: each conversation
is offered to the shared ``Ingestion`` as soon as it is complete and then dropped, so memory
stays flat however large the corpus (the test set holds about 2.06M messages).
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from xml.parsers import expat

from cesagram.data.ingest import Ingestion, InputError, RawRecord
from cesagram.data.schema import LANGUAGE_PATTERN
from cesagram.taxonomy import AuthorRole

logger = logging.getLogger(__name__)

ROOT_TAG = "conversations"
CONVERSATION_TAG = "conversation"
MESSAGE_TAG = "message"
# PAN12 times are wall-clock HH:MM without a date (and not reliable); anything else is dropped.
_TIME = re.compile(r"\d{1,2}:\d{2}")
_EXAMPLES_LOGGED = 5
_DECLARED_ENCODING = re.compile(rb"<\?xml[^>]*?encoding=[\"']([A-Za-z0-9._-]+)[\"']")

SuspiciousLines = dict[str, frozenset[int]]


def import_pan12(
    corpus: Path,
    predators: Path,
    ingestion: Ingestion,
    *,
    suspicious_lines: Path | None = None,
    language: str = "en",
    source: str = "pan12",
) -> None:
    """Import a PAN12 corpus XML file into ``ingestion``.

    ``predators`` lists predator author ids, one per line (PAN12's problem 1 ground truth, e.g.
    ``...groundtruth-problem1.txt`` for the test set). A conversation with a predator author gets
    ``risk=1`` and otherwise ``risk=0``; predator messages get the role ``offender``, the other
    authors of a predator conversation ``decoy`` (PAN12 positives are Perverted-Justice chats
    with adult decoys), every author of any other conversation ``unknown``.

    ``suspicious_lines`` is the problem 2 ground truth (``...groundtruth-problem2.txt``): one
    ``conversation_id<TAB>line`` per suspicious message. With it, listed messages get
    ``suspicious=True`` and all others ``suspicious=False``; without it ``suspicious`` is None.
    Do not pass the ``...diff.txt`` file here: it lists lines modified by the organisers, not
    suspicious ones. References to messages absent from the corpus are counted and logged.

    ``language`` is stored on every conversation (PAN12 is English; translated copies exist).
    ``<time>`` values are kept as given when they look like ``HH:MM`` and dropped otherwise.

    Raises ``InputError`` for missing or unreadable files, XML that is not well-formed (with
    the parser's line and column), bytes invalid in the file's encoding and malformed lines in
    the id files. Recoverable problems are quarantined by ``ingestion``: conversations without
    an id, duplicate ids, messages with no author or empty text.
    """
    if not re.fullmatch(LANGUAGE_PATTERN, language):
        raise ValueError(f"language must be an ISO 639 code like 'en', found {language!r}")
    predator_ids = read_predator_ids(predators)
    suspicious = None if suspicious_lines is None else read_suspicious_lines(suspicious_lines)
    # Only ids and line numbers named by the problem 2 file are tracked, so these sets are
    # bounded by that (small) file, not by the corpus.
    matched: set[tuple[str, int]] = set()
    seen_referenced: set[str] = set()
    ignored: Counter[str] = Counter()

    for ordinal, element in enumerate(_conversation_elements(corpus, ignored), start=1):
        conversation_id = (element.get("id") or "").strip()
        where = f"conversation #{ordinal} ({conversation_id or 'no id'})"
        lines = suspicious.get(conversation_id) if suspicious is not None else None
        if lines is not None:
            seen_referenced.add(conversation_id)
        record = _conversation_record(
            element,
            conversation_id=conversation_id,
            predator_ids=predator_ids,
            flag_suspicious=suspicious is not None,
            suspicious=lines,
            matched=matched,
            ignored=ignored,
            language=language,
            source=source,
        )
        if conversation_id:
            ingestion.offer(record, file=corpus, where=where)
        else:
            ingestion.reject_conversation(
                record,
                file=corpus,
                where=where,
                code="missing_conversation_id",
                reason=f"<{CONVERSATION_TAG}> has no id attribute",
            )

    if ignored:
        # Tag names and counts only: the elements may hold message text.
        logger.warning(
            "%s: ignored unexpected elements (not PAN12): %s",
            corpus,
            ", ".join(f"<{tag}> x{count}" for tag, count in sorted(ignored.items())),
        )
    if suspicious is not None and suspicious_lines is not None:
        _log_unmatched(suspicious_lines, corpus, suspicious, matched, seen_referenced)


def _conversation_record(
    element: ET.Element,
    *,
    conversation_id: str,
    predator_ids: frozenset[str],
    flag_suspicious: bool,
    suspicious: frozenset[int] | None,
    matched: set[tuple[str, int]],
    ignored: Counter[str],
    language: str,
    source: str,
) -> RawRecord:
    """The raw record ``Ingestion.offer`` expects for one ``<conversation>`` element."""
    messages: list[RawRecord] = []
    risky = False
    for message_element in element:
        if message_element.tag != MESSAGE_TAG:
            ignored[f"{CONVERSATION_TAG}/{message_element.tag}"] += 1
            continue
        author: str | None = None
        text = ""
        timestamp: str | None = None
        for field in message_element:
            tag = field.tag
            if tag == "author":
                # A blank author must stay missing: pseudonymised, it would look like a real id.
                author = (field.text or "").strip() or None
            elif tag == "text":
                text = "".join(field.itertext()) if len(field) else (field.text or "")
            elif tag == "time":
                value = (field.text or "").strip()
                timestamp = value if _TIME.fullmatch(value) else None
        if author in predator_ids:
            risky = True
        message: RawRecord = {"author": author, "timestamp": timestamp, "text": text}
        line = message_element.get("line")
        if line is not None:
            message["where"] = f"line {line}"
        if flag_suspicious:
            flagged = False
            if suspicious is not None and line is not None and line.strip().isdecimal():
                line_number = int(line)
                if line_number in suspicious:
                    flagged = True
                    matched.add((conversation_id, line_number))
            message["suspicious"] = flagged
        messages.append(message)

    if risky:
        for message in messages:
            in_list = message["author"] in predator_ids
            message["author_role"] = AuthorRole.OFFENDER if in_list else AuthorRole.DECOY
    # Authors of other conversations keep the schema's default role, unknown.
    return {
        "conversation_id": conversation_id,
        "source": source,
        "language": language,
        "risk": 1 if risky else 0,
        "messages": messages,
    }


def _conversation_elements(corpus: Path, ignored: Counter[str]) -> Iterator[ET.Element]:
    """Yield each complete ``<conversation>`` element, freeing it once the caller is done.

    Other elements directly under the root are counted in ``ignored`` and skipped.
    """
    try:
        handle = corpus.open("rb")
    except OSError as error:
        raise _unreadable(corpus, error) from error
    with handle:
        root: ET.Element | None = None
        try:
            for event, element in ET.iterparse(handle, events=("start", "end")):
                if root is None:
                    root = element
                    if element.tag != ROOT_TAG:
                        raise InputError(
                            corpus,
                            None,
                            f"expected a PAN12 corpus with root element <{ROOT_TAG}>, "
                            f"found <{element.tag}>",
                        )
                elif event == "end" and element.tag == CONVERSATION_TAG:
                    yield element
                    _drop_through(root, element, ignored)
            if root is not None:
                # What is left under the root after the last conversation is strays.
                for child in root:
                    ignored[child.tag] += 1
        except ET.ParseError as error:
            raise _parse_error(corpus, error) from None


def _drop_through(root: ET.Element, element: ET.Element, ignored: Counter[str]) -> None:
    """Remove ``element`` and anything before it from ``root``, counting non-conversations.

    Dropping finished conversations keeps memory flat. Only earlier children go: the parser may
    already have built later conversations from the same chunk, and their turn comes later.
    """
    if root[0] is element:  # the usual case: nothing stray before it
        del root[0]
        return
    for position, child in enumerate(root):
        if child is element:
            del root[: position + 1]
            return
        if child.tag != CONVERSATION_TAG:
            ignored[child.tag] += 1


def _parse_error(corpus: Path, error: ET.ParseError) -> InputError:
    line, column = error.position
    problem = f"XML is not well-formed: {expat.ErrorString(error.code)}"
    # Expat reports bytes invalid in the declared encoding as an "invalid token"; say so.
    invalid_token = expat.errors.codes[expat.errors.XML_ERROR_INVALID_TOKEN]
    if error.code == invalid_token and _invalid_utf8_on_line(corpus, line):
        problem = "bytes that are not valid UTF-8 (the corpus must be UTF-8 encoded)"
    # Expat counts columns from 0; editors and users count from 1.
    return InputError(corpus, f"line {line}, column {column + 1}", problem)


def _invalid_utf8_on_line(corpus: Path, line_number: int) -> bool:
    """Whether the corpus is meant to be UTF-8 and its line ``line_number`` (1-based) is not."""
    with corpus.open("rb") as handle:
        declared = _DECLARED_ENCODING.match(handle.read(256))
        if declared and declared[1].lower().replace(b"_", b"-") not in (b"utf-8", b"utf8"):
            return False
        handle.seek(0)
        for number, raw in enumerate(handle, start=1):
            if number == line_number:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    return True
                return False
    return False


def read_predator_ids(path: Path) -> frozenset[str]:
    """Read a PAN12 predator id list: one author id per line, blank lines ignored."""
    ids = frozenset(line.strip() for _, line in _numbered_lines(path) if line.strip())
    if not ids:
        logger.warning("%s lists no predator ids: every conversation gets risk 0", path)
    return ids


def read_suspicious_lines(path: Path) -> SuspiciousLines:
    """Read a PAN12 problem 2 file: ``conversation_id<TAB>line`` per suspicious message.

    Blank lines are ignored; a line with another column count or a non-integer message line
    raises ``InputError`` naming the file and line.
    """
    lines: dict[str, set[int]] = {}
    for number, line in _numbered_lines(path):
        if not line.strip():
            continue
        # Only trailing whitespace goes: a leading tab means an empty first column.
        columns = line.rstrip().split("\t")
        if len(columns) != 2:
            raise InputError(
                path,
                f"line {number}",
                f"expected 2 tab-separated columns (conversation_id, line), found {len(columns)}",
            )
        conversation_id, message_line = (column.strip() for column in columns)
        if not conversation_id:
            raise InputError(path, f"line {number}", "the conversation id (column 1) is empty")
        if not message_line.isdecimal():
            raise InputError(
                path,
                f"line {number}",
                f"expected a message line number in column 2, found {message_line!r}",
            )
        lines.setdefault(conversation_id, set()).add(int(message_line))
    return {conversation_id: frozenset(found) for conversation_id, found in lines.items()}


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` for a small UTF-8 text file; errors name the line."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise _unreadable(path, error) from error
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(
                path, f"line {number}", f"not valid UTF-8 (byte {error.start + 1} of the line)"
            ) from None
        yield number, text.removeprefix("\ufeff") if number == 1 else text


def _unreadable(path: Path, error: OSError) -> InputError:
    if isinstance(error, FileNotFoundError):
        return InputError(path, None, "file not found")
    return InputError(path, None, f"cannot read the file ({error.strerror or error})")


def _log_unmatched(
    path: Path,
    corpus: Path,
    suspicious: SuspiciousLines,
    matched: set[tuple[str, int]],
    seen_referenced: set[str],
) -> None:
    references = sum(len(lines) for lines in suspicious.values())
    unmatched = [
        (conversation_id, line)
        for conversation_id, lines in suspicious.items()
        for line in sorted(lines)
        if (conversation_id, line) not in matched
    ]
    if not unmatched:
        return
    missing_conversations = len(suspicious.keys() - seen_referenced)
    examples = unmatched[:_EXAMPLES_LOGGED]
    logger.warning(
        "%s: %d of %d suspicious line reference(s) match no message in %s "
        "(%d conversation id(s) not in the corpus); first: %s",
        path,
        len(unmatched),
        references,
        corpus,
        missing_conversations,
        ", ".join(f"{conversation_id} line {line}" for conversation_id, line in examples),
    )
