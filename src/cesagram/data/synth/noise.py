"""Chat-writing noise: how real people type, applied to clean phrasebook lines.

Each author gets a writing style (some always type lowercase, some never type accents, some
write Greek in Latin letters), and each message gets typos, slang, fillers and emoji at that
style's rates. Noise only rewrites text; labels are decided before it and never looked at here.
The redaction token, handles, e-mails, links and phone numbers are left intact.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cesagram.taxonomy import REDACTED_SEXUAL, AuthorRole

if TYPE_CHECKING:
    from cesagram.data.synth.phrasebook import Phrasebook

EMOJI: tuple[str, ...] = (
    "😂",
    "🤣",
    "😅",
    "🙂",
    "😊",
    "😭",
    "🙄",
    "👍",
    "🔥",
    "😎",
    "🤔",
    "😳",
    "🙈",
    "💀",
    "✨",
    "😴",
    "🥲",
    "👀",
)

# Spans noise must not touch: the redaction token and contact details the pseudonymiser finds.
_PROTECTED = re.compile(rf"({re.escape(REDACTED_SEXUAL)}|\S*[@/]\S*|\+?\d[\d ]{{5,}}\d)")


@dataclass(frozen=True)
class WritingStyle:
    """How one author types. ``CLEAN`` leaves text exactly as the phrasebook wrote it."""

    lowercase: bool = False
    strip_accents: bool = False
    transliterate: bool = False  # Latin letters for a non-Latin script (Greeklish)
    slang: bool = False
    typo_rate: float = 0.0  # per word
    emoji_rate: float = 0.0  # per message
    filler_rate: float = 0.0  # per message
    shout_rate: float = 0.0  # per message, ALL CAPS


CLEAN = WritingStyle()


def draw_style(rng: random.Random, noise: float, role: AuthorRole) -> WritingStyle:
    """A writing style for one author at noise level ``noise`` (0 = clean, 1 = very noisy)."""
    if noise <= 0:
        return CLEAN
    # Parents and teachers type more carefully than teenagers (and offenders imitating them).
    level = noise * (0.5 if role is AuthorRole.ADULT else 1.0)
    return WritingStyle(
        lowercase=rng.random() < 2.5 * level,
        strip_accents=rng.random() < 2 * level,
        transliterate=rng.random() < level,
        slang=rng.random() < 3 * level,
        typo_rate=0.2 * level * rng.uniform(0.5, 1.5),
        emoji_rate=min(1.0, level * rng.uniform(0.5, 2.0)),
        filler_rate=0.5 * level,
        shout_rate=0.05 * level,
    )


def add_noise(text: str, style: WritingStyle, book: Phrasebook, rng: random.Random) -> str:
    """Rewrite ``text`` the way an author with ``style`` would type it."""
    if style is CLEAN:
        return text
    shout = rng.random() < style.shout_rate
    parts = _PROTECTED.split(text)
    # re.split with one group alternates free text (even positions) and protected spans.
    for position in range(0, len(parts), 2):
        if parts[position]:
            parts[position] = _noisy(parts[position], style, book, rng, shout)
    noisy = "".join(parts)
    if book.fillers and rng.random() < style.filler_rate:
        filler = rng.choice(book.fillers)
        noisy = f"{filler} {noisy}" if rng.random() < 0.3 else f"{noisy} {filler}"
    if rng.random() < style.emoji_rate:
        noisy = f"{noisy} {rng.choice(EMOJI) * rng.choice((1, 1, 1, 2, 3))}"
    return noisy


class _BareLetters(dict[int, str]):
    """A ``str.translate`` table from each letter to itself without diacritics, built lazily.

    Decomposing every message with unicodedata costs more than the rest of the noise together;
    a letter is decomposed once, the first time it is met.
    """

    def __missing__(self, code: int) -> str:
        decomposed = unicodedata.normalize("NFD", chr(code))
        bare = "".join(char for char in decomposed if not unicodedata.combining(char))
        self[code] = bare
        return bare


_BARE_LETTERS = _BareLetters()


def strip_accents(text: str) -> str:
    """Drop diacritics (é -> e, ą -> a, ά -> α), as people do on phone keyboards."""
    return text.translate(_BARE_LETTERS)


def _noisy(
    text: str, style: WritingStyle, book: Phrasebook, rng: random.Random, shout: bool
) -> str:
    if style.slang and book.slang_pattern is not None:
        slang = book.slang
        text = book.slang_pattern.sub(
            lambda match: slang[match.group(0).lower()] if rng.random() < 0.7 else match.group(0),
            text,
        )
    if style.typo_rate:
        text = " ".join(
            _typo(word, rng) if len(word) > 3 and rng.random() < style.typo_rate else word
            for word in text.split(" ")
        )
    if style.strip_accents or style.transliterate:
        text = strip_accents(text)
    if style.transliterate and book.transliteration:
        text = text.translate(book.transliteration)
    if shout:
        return text.upper()
    if style.lowercase:
        return text.lower()
    return text


def _typo(word: str, rng: random.Random) -> str:
    position = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:  # neighbouring letters swapped
        return word[: position - 1] + word[position] + word[position - 1] + word[position + 1 :]
    if kind == 1:  # a letter dropped
        return word[:position] + word[position + 1 :]
    return word[:position] + word[position] + word[position:]  # a letter doubled
