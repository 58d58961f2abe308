"""Synthetic usernames and contact details, obviously fake by construction.

Usernames are the raw author ids (ingestion pseudonymises them later). Contact details appear in
message text for the pseudonymiser to find: e-mails and links use the reserved example.com,
example.org and example.net domains (RFC 2606), and phone numbers the fictitious ranges in each
phrasebook's ``phone_formats`` ('#' stands for a digit).
"""

from __future__ import annotations

import random
import re
import string
from typing import TYPE_CHECKING

from cesagram.data.synth.noise import strip_accents

if TYPE_CHECKING:
    from cesagram.data.synth.phrasebook import Phrasebook

_NOT_HANDLE = re.compile(r"[^a-z0-9_.]")
_CODE_ALPHABET = string.ascii_letters + string.digits
_URL_FORMATS = (
    "https://discord.example.com/invite/{code}",
    "https://example.org/join/{code}",
    "https://chat.example.net/g/{code}",
    "https://www.example.com/u/{user}",
    "https://example.org/@{user}",
)


def ascii_handle(text: str, book: Phrasebook) -> str:
    """``text`` as a username part: Latin letters (Greek transliterated), lowercase, no accents."""
    return _NOT_HANDLE.sub("", strip_accents(text).translate(book.transliteration).lower())


def username(rng: random.Random, book: Phrasebook, first_name: str, adult: bool) -> str:
    """A plausible username; adults (offenders, parents) draw from the same patterns."""
    name = ascii_handle(first_name, book)
    word = ascii_handle(rng.choice(book.slot_values["username_words"]), book)
    year = rng.randint(1972, 1999) if adult else rng.randint(2007, 2015)
    patterns = (
        f"{name}{rng.randint(1, 99):02d}",
        f"{name}_{word}",
        f"{word}.{name}",
        f"{word}{rng.randint(1, 999)}",
        f"x{word}x",
        f"{name}{year}",
        f"{word}_{year % 100:02d}",
    )
    return rng.choice(patterns)


def handle(rng: random.Random, book: Phrasebook, user: str) -> str:
    """An @handle on another app: often the username again, sometimes a variant."""
    if rng.random() < 0.5:
        return f"@{user}"
    word = ascii_handle(rng.choice(book.slot_values["username_words"]), book)
    return f"@{word}_{rng.randint(1, 99):02d}"


def phone(rng: random.Random, book: Phrasebook) -> str:
    """A phone number from the phrasebook's fictitious formats."""
    template = rng.choice(book.slot_values["phone_formats"])
    return "".join(str(rng.randrange(10)) if char == "#" else char for char in template)


def email(rng: random.Random, user: str) -> str:
    """An address at a reserved example domain."""
    local = user.strip("._") or "user"
    return f"{local}@{rng.choice(('example.com', 'example.org', 'example.net'))}"


def url(rng: random.Random, user: str) -> str:
    """An invite or profile link at a reserved example domain."""
    code = "".join(rng.choice(_CODE_ALPHABET) for _ in range(rng.randint(6, 8)))
    return rng.choice(_URL_FORMATS).format(code=code, user=user)
