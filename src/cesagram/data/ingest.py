"""The accounting every importer shares: pseudonymise, validate, write or quarantine, report.

Importers parse their format into plain conversation dicts and hand each one to
``Ingestion.offer``. Nothing is dropped silently: every conversation and message read is either
written to the canonical corpus or quarantined with a reason, and the JSON report proves it
(read = written + rejected, for conversations and for messages).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydantic import ValidationError

from cesagram.data.pseudonymise import Pseudonymiser
from cesagram.data.schema import SCHEMA_VERSION, Conversation, CorpusWriter, Message

CORPUS_FILE = "conversations.parquet"
REPORT_FILE = "import_report.json"
QUARANTINE_FILE = "quarantine.jsonl"

RawRecord = dict[str, Any]


class InputError(Exception):
    """A fatal problem with an input: names the file, where in it, and what was wrong."""

    def __init__(self, path: Path | str, where: str | None, problem: str) -> None:
        self.path = Path(path)
        self.where = where
        self.problem = problem
        location = f"{path}: {where}" if where else f"{path}"
        super().__init__(f"{location}: {problem}")


@dataclass
class Counts:
    """How many units were read, written to the corpus and quarantined."""

    read: int = 0
    written: int = 0
    rejected: int = 0

    @property
    def balanced(self) -> bool:
        """True when every unit read was either written or rejected."""
        return self.read == self.written + self.rejected


@dataclass
class ImportReport:
    """The JSON report written beside every imported corpus."""

    format: str
    source: str
    inputs: list[str]
    output: str
    quarantine: str
    schema_version: str = SCHEMA_VERSION
    conversations: Counts = field(default_factory=Counts)
    messages: Counts = field(default_factory=Counts)
    rejections_by_reason: dict[str, int] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)
    risk: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=False)


def validation_reason(error: ValidationError) -> tuple[str, str]:
    """A short reason code and a readable reason from a pydantic error (first problem only)."""
    first = error.errors(include_url=False, include_input=False)[0]
    location = ".".join(str(part) for part in first["loc"] if not isinstance(part, int))
    code = f"invalid_{location or 'record'}"
    return code, f"{location or 'record'}: {first['msg']}"


class Ingestion:
    """Collects one import: canonical corpus, quarantine file and report in ``out_dir``."""

    def __init__(
        self,
        out_dir: Path,
        *,
        format: str,
        source: str,
        inputs: list[Path],
        pseudonymiser: Pseudonymiser,
    ) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir
        self.pseudonymiser = pseudonymiser
        self.report = ImportReport(
            format=format,
            source=source,
            inputs=[str(path) for path in inputs],
            output=str(out_dir / CORPUS_FILE),
            quarantine=str(out_dir / QUARANTINE_FILE),
        )
        self._writer = CorpusWriter(out_dir / CORPUS_FILE)
        self._quarantine_path = out_dir / QUARANTINE_FILE
        self._quarantine = self._quarantine_path.open("w", encoding="utf-8")
        self._first_seen: dict[str, str] = {}
        self._reasons: Counter[str] = Counter()
        self._languages: Counter[str] = Counter()
        self._risk: Counter[str] = Counter()

    # -- importers call these ---------------------------------------------------------------

    def offer(self, record: RawRecord, *, file: Path, where: str) -> bool:
        """Pseudonymise, validate and write one raw conversation; quarantine what fails.

        ``record`` holds the Conversation fields with raw (not yet pseudonymised) authors and
        text; its ``messages`` are dicts without ``index`` (positions are assigned here).
        Invalid messages are quarantined one by one and the rest kept, in order.
        Returns True when the conversation was written.
        """
        raw_messages: list[RawRecord] = record.get("messages") or []
        self.report.conversations.read += 1
        self.report.messages.read += len(raw_messages)
        conversation_id = str(record.get("conversation_id", ""))

        if conversation_id in self._first_seen:
            self._reject_whole(
                record,
                file=file,
                where=where,
                code="duplicate_conversation_id",
                reason=f"conversation id {conversation_id!r} already seen at "
                f"{self._first_seen[conversation_id]}",
                messages_rejected=len(raw_messages),
            )
            return False

        messages: list[Message] = []
        validate = Message.model_validate
        for position, raw_message in enumerate(raw_messages):
            pseudonymised = self._pseudonymise_message(raw_message)
            pseudonymised["index"] = len(messages)
            try:
                messages.append(validate(pseudonymised))
            except ValidationError as error:
                del pseudonymised["index"]
                code, reason = validation_reason(error)
                self._quarantine_record(
                    level="message",
                    file=file,
                    where=f"{where}, message {raw_message.get('where', position + 1)}",
                    code=code,
                    reason=reason,
                    record=pseudonymised,
                )
                self.report.messages.rejected += 1

        if not messages:
            self._reject_whole(
                record,
                file=file,
                where=where,
                code="no_valid_messages",
                reason="conversation has no valid messages",
                messages_rejected=0,
            )
            return False
        try:
            conversation = Conversation.model_validate(
                {**{k: v for k, v in record.items() if k != "messages"}, "messages": messages}
            )
        except ValidationError as error:
            code, reason = validation_reason(error)
            self._reject_whole(
                record,
                file=file,
                where=where,
                code=code,
                reason=reason,
                messages_rejected=len(messages),
            )
            return False

        self._first_seen[conversation_id] = where
        self._writer.write(conversation)
        self.report.conversations.written += 1
        self.report.messages.written += len(messages)
        self._languages[conversation.language] += 1
        self._risk[str(conversation.risk) if conversation.risk is not None else "unknown"] += 1
        return True

    def reject_conversation(
        self, record: RawRecord, *, file: Path, where: str, code: str, reason: str
    ) -> None:
        """Quarantine a whole conversation the importer could not offer (e.g. unknown label)."""
        self.report.conversations.read += 1
        self.report.messages.read += len(record.get("messages") or [])
        self._reject_whole(
            record,
            file=file,
            where=where,
            code=code,
            reason=reason,
            messages_rejected=len(record.get("messages") or []),
        )

    def reject_message(
        self, message: RawRecord, *, file: Path, where: str, code: str, reason: str
    ) -> None:
        """Quarantine one message the importer could not put into its conversation."""
        self.report.messages.read += 1
        self.report.messages.rejected += 1
        self._quarantine_record(
            level="message",
            file=file,
            where=where,
            code=code,
            reason=reason,
            record=self._pseudonymise_message(message),
        )

    def reject_unparsed(
        self, raw: str | RawRecord, *, file: Path, where: str, code: str, reason: str
    ) -> None:
        """Quarantine an input record that never became a conversation (e.g. a broken line).

        It counts as one conversation read and rejected. Its structure is unknown, so nothing
        says which parts are identities: the quarantine keeps only its length and SHA-256 (to
        find it again in the source at ``where``), never its content.
        """
        self.report.conversations.read += 1
        self.report.conversations.rejected += 1
        content = raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True, default=str)
        record = {
            "characters": len(content),
            "sha256": hashlib.sha256(content.encode("utf-8", "replace")).hexdigest(),
        }
        self._quarantine_record(
            level="record", file=file, where=where, code=code, reason=reason, record=record
        )

    # -- internals ----------------------------------------------------------------------------

    def _reject_whole(
        self,
        record: RawRecord,
        *,
        file: Path,
        where: str,
        code: str,
        reason: str,
        messages_rejected: int,
    ) -> None:
        self.report.conversations.rejected += 1
        self.report.messages.rejected += messages_rejected
        pseudonymised = {
            **{key: value for key, value in record.items() if key != "messages"},
            "messages": [self._pseudonymise_message(m) for m in record.get("messages") or []],
        }
        self._quarantine_record(
            level="conversation",
            file=file,
            where=where,
            code=code,
            reason=reason,
            record=pseudonymised,
        )

    def _pseudonymise_message(self, message: RawRecord) -> RawRecord:
        # Only the author and the text can carry identities; timestamp, role, labels and flags
        # are structured fields. This runs once per message, hence the inlined checks.
        pseudonymised = dict(message)
        pseudonymised.pop("where", None)
        author = pseudonymised.get("author")
        if isinstance(author, str):
            # A blank author becomes "" so that validation rejects it with its reason (a
            # whitespace-only id would pass min_length=1; a pseudonym would look real).
            pseudonymised["author"] = self.pseudonymiser.author(author) if author.strip() else ""
        text = pseudonymised.get("text")
        if isinstance(text, str):
            pseudonymised["text"] = self.pseudonymiser.text(text)
        return pseudonymised

    def _quarantine_record(
        self, *, level: str, file: Path, where: str, code: str, reason: str, record: Any
    ) -> None:
        self._reasons[code] += 1
        entry = {
            "file": str(file),
            "where": where,
            "level": level,
            "code": code,
            "reason": reason,
            "record": record,
        }
        self._quarantine.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")

    def close(self, commit: bool = True) -> ImportReport:
        """Finish the corpus and the quarantine; write the report when ``commit``."""
        self._writer.close(commit=commit)
        self._quarantine.close()
        report = self.report
        report.rejections_by_reason = dict(sorted(self._reasons.items()))
        report.languages = dict(sorted(self._languages.items()))
        report.risk = dict(sorted(self._risk.items()))
        if commit:
            (self.out_dir / REPORT_FILE).write_text(report.to_json() + "\n", encoding="utf-8")
        else:
            self._quarantine_path.unlink(missing_ok=True)
        return report

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(commit=exc_type is None)
