"""CSV and JSONL importers for a partner's own files, with the columns named by the user.

Two layouts:
- ``messages``: one message per row. Rows sharing a conversation id form a conversation, in file
  order; without a conversation column every row is a conversation of one message.
- ``segments``: one conversation excerpt per row; the text column holds the whole segment, one
  message per line (optionally ``author<separator>text``), like the translated PAN12 segment CSVs.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cesagram.data.ingest import Ingestion, InputError, RawRecord
from cesagram.data.labels import DEFAULT_RISK_LABELS, RiskLabelMap, UnknownLabelError


class Layout(StrEnum):
    """How rows map to conversations."""

    MESSAGES = "messages"
    SEGMENTS = "segments"


METADATA_FIELDS = ("age_band", "gender", "platform")


@dataclass(frozen=True)
class TabularColumns:
    """Which input column holds which canonical field (None: the file has no such column)."""

    text: str
    label: str | None = None
    conversation: str | None = None
    author: str | None = None
    timestamp: str | None = None
    language: str | None = None
    indicators: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def required(self) -> list[str]:
        """Every column named, in a stable order."""
        named = [
            self.text,
            self.label,
            self.conversation,
            self.author,
            self.timestamp,
            self.language,
            self.indicators,
            *self.metadata.values(),
        ]
        return [column for column in named if column]


@dataclass(frozen=True)
class TabularOptions:
    """Everything a tabular import needs besides the file."""

    columns: TabularColumns
    layout: Layout = Layout.MESSAGES
    language: str | None = None
    label_map: RiskLabelMap = field(default_factory=lambda: RiskLabelMap(DEFAULT_RISK_LABELS))
    source: str = "partner"
    encoding: str = "utf-8"
    delimiter: str = ","
    speaker_separator: str | None = None
    translated_from: str | None = None

    def __post_init__(self) -> None:
        if not self.columns.language and not self.language:
            raise ValueError(
                "no language: name a language column (--language-col) "
                "or give the file's language (--language xx)"
            )
        unknown = set(self.columns.metadata) - set(METADATA_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown metadata field(s) {sorted(unknown)}; expected {list(METADATA_FIELDS)}"
            )


_INDICATOR_SEPARATORS = re.compile(r"[;,|]")


def import_csv(path: Path, options: TabularOptions, ingestion: Ingestion) -> None:
    """Import a CSV file (header row required)."""
    _import_rows(path, _csv_rows(path, options), options, ingestion)


def import_jsonl(path: Path, options: TabularOptions, ingestion: Ingestion) -> None:
    """Import a JSON Lines file: one JSON object per line."""
    _import_rows(path, _jsonl_rows(path, options, ingestion), options, ingestion)


# -- reading rows -------------------------------------------------------------------------------


def _csv_rows(path: Path, options: TabularOptions) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_text(path, options.encoding) as handle:
        reader = csv.DictReader(handle, delimiter=options.delimiter)
        try:
            header = reader.fieldnames or []
            _check_columns(path, "line 1 (header)", header, options.columns)
            line = reader.line_num + 1
            for row in reader:
                if None in row:
                    raise InputError(
                        path,
                        f"line {line}",
                        f"{len(header) + len(row[None])} fields found, {len(header)} expected "
                        f"(the header's); check --delimiter {options.delimiter!r} and quoting",
                    )
                yield line, row
                line = reader.line_num + 1
        except UnicodeDecodeError as error:
            raise _encoding_error(path, options.encoding, error) from error
        except csv.Error as error:
            raise InputError(path, f"line {reader.line_num}", f"malformed CSV ({error})") from error


def _jsonl_rows(
    path: Path, options: TabularOptions, ingestion: Ingestion
) -> Iterator[tuple[int, dict[str, Any]]]:
    checked = False
    with _open_text(path, options.encoding) as handle:
        try:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    ingestion.reject_unparsed(
                        line.rstrip("\n"),
                        file=path,
                        where=f"line {line_number}",
                        code="invalid_json",
                        reason=f"not valid JSON ({error.msg} at column {error.colno})",
                    )
                    continue
                if not isinstance(record, dict):
                    ingestion.reject_unparsed(
                        line.rstrip("\n"),
                        file=path,
                        where=f"line {line_number}",
                        code="not_an_object",
                        reason=f"expected a JSON object, found {type(record).__name__}",
                    )
                    continue
                if not checked:
                    # The first record stands for the file: a column missing there is a
                    # misnamed column, not a bad record.
                    _check_columns(path, f"line {line_number}", list(record), options.columns)
                    checked = True
                yield line_number, record
        except UnicodeDecodeError as error:
            raise _encoding_error(path, options.encoding, error) from error


def _open_text(path: Path, encoding: str) -> Any:
    try:
        return path.open(encoding=encoding, newline="")
    except FileNotFoundError as error:
        raise InputError(path, None, "file not found") from error
    except LookupError as error:
        raise InputError(path, None, f"unknown encoding {encoding!r}") from error


def _check_columns(path: Path, where: str, found: Sequence[str], columns: TabularColumns) -> None:
    missing = [column for column in columns.required() if column not in found]
    if missing:
        raise InputError(
            path, where, f"missing column(s) {missing}; the file has columns {list(found)}"
        )


def _encoding_error(path: Path, encoding: str, error: UnicodeDecodeError) -> InputError:
    # The text layer decodes in chunks, so find the offending line from the raw bytes.
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as located:
        line = data.count(b"\n", 0, located.start) + 1
        byte = data[located.start : located.start + 1].hex()
        return InputError(
            path,
            f"line {line}",
            f"not valid {encoding} (byte 0x{byte}); pass the file's encoding with --encoding",
        )
    return InputError(path, None, f"not valid {encoding} ({error.reason})")


# -- rows to conversations ----------------------------------------------------------------------


def _import_rows(
    path: Path,
    rows: Iterator[tuple[int, dict[str, Any]]],
    options: TabularOptions,
    ingestion: Ingestion,
) -> None:
    if options.layout is Layout.SEGMENTS:
        for line, row in rows:
            _offer_segment(path, line, row, options, ingestion)
        return
    grouped: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for line, row in rows:
        conversation_id = _cell(row, options.columns.conversation) or f"{path.stem}-{line}"
        grouped.setdefault(conversation_id, []).append((line, row))
    for conversation_id, conversation_rows in grouped.items():
        _offer_message_rows(path, conversation_id, conversation_rows, options, ingestion)


def _offer_message_rows(
    path: Path,
    conversation_id: str,
    rows: list[tuple[int, dict[str, Any]]],
    options: TabularOptions,
    ingestion: Ingestion,
) -> None:
    columns = options.columns
    first_line, first_row = rows[0]
    where = f"conversation {conversation_id!r} (line {first_line})"
    messages = [
        {
            "author": _cell(row, columns.author) or f"{conversation_id}/unknown",
            "timestamp": _cell(row, columns.timestamp),
            "text": _text(row, columns.text),
            "labels": _indicators(row, columns.indicators),
            "where": f"line {line}",
        }
        for line, row in rows
    ]
    record = _conversation_record(conversation_id, first_row, messages, options)
    risks: dict[int | None, int] = {}
    for line, row in rows:
        try:
            risks.setdefault(_risk(row, options), line)
        except UnknownLabelError as error:
            ingestion.reject_conversation(
                record,
                file=path,
                where=f"{where}, line {line}",
                code="unknown_label",
                reason=str(error),
            )
            return
    if len(risks) > 1:
        found = ", ".join(f"{risk} at line {line}" for risk, line in risks.items())
        ingestion.reject_conversation(
            record,
            file=path,
            where=where,
            code="conflicting_labels",
            reason=f"rows of one conversation disagree on the label ({found})",
        )
        return
    record["risk"] = next(iter(risks))
    ingestion.offer(record, file=path, where=where)


def _offer_segment(
    path: Path, line: int, row: dict[str, Any], options: TabularOptions, ingestion: Ingestion
) -> None:
    columns = options.columns
    conversation_id = _cell(row, columns.conversation) or f"{path.stem}-{line}"
    where = f"line {line}"
    messages = _segment_messages(
        conversation_id, _text(row, columns.text), options.speaker_separator
    )
    for message in messages:
        message["timestamp"] = None
        message["labels"] = []
    record = _conversation_record(conversation_id, row, messages, options)
    try:
        record["risk"] = _risk(row, options)
    except UnknownLabelError as error:
        ingestion.reject_conversation(
            record, file=path, where=where, code="unknown_label", reason=str(error)
        )
        return
    ingestion.offer(record, file=path, where=where)


def _segment_messages(
    conversation_id: str, segment: str, speaker_separator: str | None
) -> list[RawRecord]:
    """Split a segment into messages: one per non-blank line, continuation lines appended."""
    unknown_author = f"{conversation_id}/unknown"
    messages: list[RawRecord] = []
    for line in segment.splitlines():
        if not line.strip():
            continue
        author, separator, text = (
            line.partition(speaker_separator) if speaker_separator else ("", "", line)
        )
        if speaker_separator and not separator:
            if messages:
                # A line without a speaker continues the previous message.
                messages[-1]["text"] += "\n" + line
                continue
            author, text = unknown_author, line
        messages.append({"author": author.strip() or unknown_author, "text": text.strip()})
    if not messages:
        # Keep the empty segment visible: the framework quarantines it with its reason.
        messages.append({"author": unknown_author, "text": segment})
    return messages


def _conversation_record(
    conversation_id: str,
    row: dict[str, Any],
    messages: list[RawRecord],
    options: TabularOptions,
) -> RawRecord:
    language = _cell(row, options.columns.language)
    record: RawRecord = {
        "conversation_id": conversation_id,
        "source": options.source,
        "language": language.lower() if language else options.language,
        "translated_from": options.translated_from,
        "messages": messages,
    }
    for name, column in options.columns.metadata.items():
        record[name] = _cell(row, column)
    return record


def _risk(row: dict[str, Any], options: TabularOptions) -> int | None:
    if not options.columns.label:
        return None
    return options.label_map.risk(row.get(options.columns.label))


def _cell(row: dict[str, Any], column: str | None) -> str | None:
    if not column:
        return None
    value = row.get(column)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _text(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    return "" if value is None else str(value)


def _indicators(row: dict[str, Any], column: str | None) -> list[str]:
    if not column:
        return []
    value = row.get(column)
    if value is None:
        return []
    if isinstance(value, list):
        return [str(item).strip() for item in value if str(item).strip()]
    return [part.strip() for part in _INDICATOR_SEPARATORS.split(str(value)) if part.strip()]
