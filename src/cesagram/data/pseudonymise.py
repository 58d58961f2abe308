"""Keyed pseudonymisation of author ids and of identifiers inside message text.

Every identity becomes ``<kind>_<12 hex of HMAC-SHA256(key, kind:value)>``, so the same person
maps to the same token across a corpus (and across corpora imported with the same key), while
nobody without the key can recover or even confirm an identity by hashing guesses.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path

KEY_ENVIRONMENT_VARIABLE = "CESAGRAM_PSEUDONYM_KEY"
MIN_KEY_LENGTH = 16
# Synthetic data holds no real identities, so a public key is harmless there and keeps the
# default pipeline reproducible on every machine.
SYNTHETIC_DATA_KEY = b"cesagram-synthetic-data-only-key"

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(
    r"(?:https?://|www\.)\S+"
    r"|\b(?:[a-z0-9-]+\.)+(?:com|net|org|io|me|gg|ly|eu|be|nl|de|fr|es|it|gr|lt|uk|co|info|app)"
    r"\b(?:/\S*)?",
    re.IGNORECASE,
)
_HANDLE = re.compile(r"(?<![\w@])@([A-Za-z0-9_][A-Za-z0-9_.]{1,30})")
# Seven or more digits, optionally led by + and broken by spaces, dots, dashes or brackets.
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d[\d ().-]{5,}\d(?!\w)")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DIGIT = re.compile(r"\d")
_TRAILING_PUNCTUATION = ".,;:!?)]}'\""
_MIN_PHONE_DIGITS = 7


class PseudonymKeyError(ValueError):
    """No usable pseudonymisation key was configured."""


def load_key(key_file: Path | None = None, *, synthetic: bool = False) -> bytes:
    """Find the pseudonymisation key: ``key_file``, then ``$CESAGRAM_PSEUDONYM_KEY``.

    Synthetic data may fall back to a public key; real data must not, because a public key lets
    anyone confirm a guessed username by hashing it.
    """
    if key_file is not None:
        try:
            key = key_file.read_bytes().strip()
        except OSError as error:
            raise PseudonymKeyError(f"{key_file}: cannot read the key file ({error})") from error
        source = str(key_file)
    elif os.environ.get(KEY_ENVIRONMENT_VARIABLE):
        key = os.environ[KEY_ENVIRONMENT_VARIABLE].encode()
        source = f"${KEY_ENVIRONMENT_VARIABLE}"
    elif synthetic:
        return SYNTHETIC_DATA_KEY
    else:
        raise PseudonymKeyError(
            f"no pseudonymisation key: set {KEY_ENVIRONMENT_VARIABLE} to a secret of at least "
            f"{MIN_KEY_LENGTH} characters (the same one for every import of a project), "
            "or pass --key-file"
        )
    if len(key) < MIN_KEY_LENGTH:
        raise PseudonymKeyError(
            f"{source}: the pseudonymisation key has {len(key)} characters; "
            f"use at least {MIN_KEY_LENGTH}"
        )
    return key


class Pseudonymiser:
    """Replaces identities with stable keyed tokens."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._cache: dict[tuple[str, str], str] = {}
        # Raw author id -> token: skips re-normalising ids that repeat on every message.
        self._authors: dict[str, str] = {}

    def token(self, kind: str, value: str) -> str:
        """The stable pseudonym of ``value`` in namespace ``kind`` (user, email, phone, url)."""
        cache_key = (kind, value)
        token = self._cache.get(cache_key)
        if token is None:
            digest = hmac.new(self._key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
            token = f"{kind}_{digest[:12]}"
            # Author ids repeat across messages; the cache is bounded by the corpus's identities.
            self._cache[cache_key] = token
        return token

    def author(self, author_id: str) -> str:
        """Pseudonym of an author id; ``@name`` mentions in text map to the same token."""
        token = self._authors.get(author_id)
        if token is None:
            token = self._authors[author_id] = self.token("user", _normalise_handle(author_id))
        return token

    def text(self, text: str) -> str:
        """Replace e-mails, URLs, @-handles and phone numbers in ``text`` with tokens."""
        if "@" in text:
            text = _EMAIL.sub(lambda match: f"[{self.token('email', match[0].lower())}]", text)
            text = _HANDLE.sub(self._replace_handle, text)
        if "." in text:
            text = _URL.sub(self._replace_url, text)
        # A regex search runs in C; a generator over the characters costs ~1 µs per message.
        if _DIGIT.search(text):
            text = _PHONE.sub(self._replace_phone, text)
        return text

    def _replace_handle(self, match: re.Match[str]) -> str:
        handle = match[1].rstrip(_TRAILING_PUNCTUATION)
        rest = match[1][len(handle) :]
        return f"@{self.author(handle)}{rest}"

    def _replace_url(self, match: re.Match[str]) -> str:
        url = match[0].rstrip(_TRAILING_PUNCTUATION)
        rest = match[0][len(url) :]
        return f"[{self.token('url', url.lower())}]{rest}"

    def _replace_phone(self, match: re.Match[str]) -> str:
        candidate = match[0]
        digits = re.sub(r"\D", "", candidate)
        if len(digits) < _MIN_PHONE_DIGITS or _ISO_DATE.fullmatch(candidate.strip()):
            return candidate
        return f"[{self.token('phone', digits)}]"


def _normalise_handle(name: str) -> str:
    return name.strip().lstrip("@").lower()
