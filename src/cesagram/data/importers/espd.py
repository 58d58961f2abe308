"""Importer for eSPD / PANC datapack JSON (Vogt, Leser & Akbik 2021).

A datapack holds chats; each chat's ``content`` lists ``{"type": "message", "author", "body",
"time"}`` items and ``{"type": "separator"}`` items that mark where an excerpt skips messages.
Separators carry no text and are not messages, so they are counted, not stored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from cesagram.data.ingest import Ingestion, InputError, RawRecord
from cesagram.data.labels import RiskLabelMap, UnknownLabelError

logger = logging.getLogger(__name__)

_ID_KEYS = ("name", "id", "chatName", "chat_id")
_LABEL_KEYS = ("className", "label", "class")


def import_espd(
    path: Path,
    ingestion: Ingestion,
    *,
    label_map: RiskLabelMap,
    language: str = "en",
    source: str = "espd",
) -> None:
    """Import every chat of an eSPD datapack JSON file."""
    try:
        with path.open(encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError as error:
        raise InputError(path, None, "file not found") from error
    except UnicodeDecodeError as error:
        raise InputError(path, f"byte {error.start}", "not valid UTF-8") from error
    except json.JSONDecodeError as error:
        raise InputError(
            path, f"line {error.lineno}, column {error.colno}", f"not valid JSON ({error.msg})"
        ) from error

    chats = document.get("chats") if isinstance(document, dict) else document
    if not isinstance(chats, list):
        found = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise InputError(
            path, None, f"expected a datapack with a 'chats' list or a list of chats; found {found}"
        )
    separators = 0
    for position, chat in enumerate(chats, start=1):
        where = f"chat {position}"
        if not isinstance(chat, dict) or not isinstance(chat.get("content"), list):
            ingestion.reject_unparsed(
                chat if isinstance(chat, dict) else str(chat),
                file=path,
                where=where,
                code="invalid_chat",
                reason="expected an object with a 'content' list",
            )
            continue
        separators += _offer_chat(path, where, chat, ingestion, label_map, language, source)
    logger.info("%s: %d chats, %d separators skipped", path, len(chats), separators)


def _offer_chat(
    path: Path,
    where: str,
    chat: dict[str, Any],
    ingestion: Ingestion,
    label_map: RiskLabelMap,
    language: str,
    source: str,
) -> int:
    chat_id = _first(chat, _ID_KEYS) or f"{path.stem}-{where.split()[-1]}"
    where = f"{where} ({chat_id})"
    messages: list[RawRecord] = []
    separators = 0
    for item_number, item in enumerate(chat["content"], start=1):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "separator":
            separators += 1
            continue
        if kind != "message":
            ingestion.reject_message(
                _message(item) if isinstance(item, dict) else {"text": str(item)},
                file=path,
                where=f"{where}, item {item_number}",
                code="unknown_item_type",
                reason=f"content item type {kind!r}; expected 'message' or 'separator'",
            )
            continue
        messages.append({**_message(item), "where": f"item {item_number}"})
    record: RawRecord = {
        "conversation_id": str(chat_id),
        "source": source,
        "language": language,
        "messages": messages,
    }
    label = _first(chat, _LABEL_KEYS)
    try:
        record["risk"] = label_map.risk(label) if label is not None else None
    except UnknownLabelError as error:
        ingestion.reject_conversation(
            record, file=path, where=where, code="unknown_label", reason=str(error)
        )
        return separators
    ingestion.offer(record, file=path, where=where)
    return separators


def _message(item: dict[str, Any]) -> RawRecord:
    author = item.get("author")
    return {
        "author": str(author) if author is not None else "",
        "timestamp": str(item["time"]) if item.get("time") is not None else None,
        "text": str(item.get("body") or ""),
    }


def _first(chat: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if chat.get(key) is not None:
            return chat[key]
    return None
