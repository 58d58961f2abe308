"""Per-language phrasebooks: the templates and slot values the synthetic corpus is written from.

Each language is one YAML file, ``phrasebooks/<code>.yaml``, with the same structure:

- ``language``: the ISO 639-1 code (must match the file name).
- ``code_switch_partners``: languages whose lines may be mixed into this language's chats.
- ``slots``: values for the template slots, written natively for the country. Values that a
  template uses as a grammatical object carry the article, case or preposition the templates of
  that file expect (documented at the top of each file), so sentences agree in every language.
- ``small_talk``: ``openers``, ``lines``, ``replies``, ``closers`` (said by teenagers and by
  offenders posing as one) and their ``adult_`` versions (parents, teachers); no labels.
- ``indicators``: one template list per taxonomy indicator, said by the offender.
- ``indicator_pairs``: templates that carry two indicators, keyed ``first+second``.
- ``victim_replies``: the young participant's replies, one list per indicator; no labels.
- ``hard_negatives``: per benign scenario, ``initiator`` lines (the other participant) and
  ``responder`` lines (the young participant); surface forms like indicators, no labels.
- ``noise``: ``slang`` (phrase -> chat spelling), ``fillers`` (lol, mdr, jaja, ...) and
  ``transliteration`` (letter -> Latin spelling, for Greeklish; empty elsewhere).

Templates are ``str.format`` strings. ``{g:female|male}`` picks the form agreeing with the
young participant's gender; every other slot is listed in ``TEMPLATE_SLOTS``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from cesagram.data.synth.config import SUPPORTED_LANGUAGES
from cesagram.data.synth.scenarios import HARD_NEGATIVES, INDICATOR_PAIRS
from cesagram.taxonomy import INDICATOR_IDS

PHRASEBOOK_DIR = Path(__file__).parent / "phrasebooks"

# Slots a template may use. Person and contact slots keep their value for the whole conversation
# (contact slots belong to the speaker, {name} to the one spoken to); the grammatical ones (town,
# item, ...) come from the phrasebook the line is written in, so case and article agree.
TEMPLATE_SLOTS: frozenset[str] = frozenset(
    {
        "name",  # the first name of the one spoken to
        "name_voc",  # the same name in the vocative (el, lt); equal to name elsewhere
        "friend",  # a third person's first name, in the nominative
        "age",  # the young participant's age
        "other_age",  # the age the other participant states (offenders lie about it)
        "g",  # gender agreement: {g:female form|male form}
        "town",
        "school",
        "app",
        "game",
        "item",
        "item2",
        "gift",
        "amount",
        "place",
        "time",
        "hobby",
        "handle",  # the speaker's own @handle
        "phone",  # the speaker's own (fictitious) phone number
        "email",  # the speaker's own e-mail address at an example domain
        "url",  # the speaker's own link at an example domain (invite, profile)
    }
)

# Slot-value lists and the fewest values each must hold.
MIN_SLOT_VALUES: Mapping[str, int] = {
    "names_f": 8,
    "names_m": 8,
    "towns": 8,
    "schools": 5,
    "apps": 5,
    "games": 5,
    "items": 8,
    "gifts": 5,
    "amounts": 4,
    "places": 6,
    "times": 6,
    "hobbies": 6,
    "phone_formats": 1,
    "username_words": 12,
}

# Template pools, by dotted key, and the fewest templates each must hold.
MIN_TEMPLATES: Mapping[str, int] = {
    "small_talk.openers": 6,
    "small_talk.lines": 24,
    "small_talk.replies": 16,
    "small_talk.closers": 5,
    "small_talk.adult_openers": 4,
    "small_talk.adult_lines": 8,
    "small_talk.adult_replies": 6,
    "small_talk.adult_closers": 3,
    **{f"indicators.{indicator}": 8 for indicator in INDICATOR_IDS},
    **{f"indicator_pairs.{'+'.join(pair)}": 3 for pair in INDICATOR_PAIRS},
    **{f"victim_replies.{indicator}": 3 for indicator in INDICATOR_IDS},
    **{
        f"hard_negatives.{scenario.value}.{side}": 6
        for scenario in HARD_NEGATIVES
        for side in ("initiator", "responder")
    },
}

_TOP_LEVEL_KEYS = (
    "language",
    "code_switch_partners",
    "slots",
    "small_talk",
    "indicators",
    "indicator_pairs",
    "victim_replies",
    "hard_negatives",
    "noise",
)
_NOISE_KEYS = ("slang", "fillers", "transliteration")
_FORMATTER = string.Formatter()


class PhrasebookError(ValueError):
    """A phrasebook file does not have the expected structure or content."""


@dataclass(frozen=True)
class Name:
    """A first name and its vocative (the form used to address someone in el and lt)."""

    nominative: str
    vocative: str


@dataclass(frozen=True)
class Phrasebook:
    """One language's templates and slot values, validated."""

    language: str
    path: Path
    code_switch_partners: tuple[str, ...]
    names: Mapping[str, tuple[Name, ...]]  # by gender, "f" and "m"
    slot_values: Mapping[str, tuple[str, ...]]
    pools: Mapping[str, tuple[str, ...]]
    slang: Mapping[str, str]
    slang_pattern: re.Pattern[str] | None
    fillers: tuple[str, ...]
    transliteration: Mapping[int, str]

    def templates(self, pool: str) -> tuple[str, ...]:
        """The templates of one pool, e.g. ``indicators.access``."""
        return self.pools[pool]


@cache
def load_phrasebook(language: str) -> Phrasebook:
    """Load and validate ``phrasebooks/<language>.yaml``; cached, so each file is read once."""
    if language not in SUPPORTED_LANGUAGES:
        raise PhrasebookError(
            f"no phrasebook for language {language!r}; supported: {', '.join(SUPPORTED_LANGUAGES)}"
        )
    return parse_phrasebook(PHRASEBOOK_DIR / f"{language}.yaml")


def parse_phrasebook(path: Path) -> Phrasebook:
    """Read and validate one phrasebook file; errors name the file, the key and what is wrong."""
    with path.open(encoding="utf-8") as stream:
        # The C loader when present: the files are a few hundred lines each, read once.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        raw = yaml.load(stream, Loader=loader)
    document = _mapping(path, "the file", raw)
    missing = [key for key in _TOP_LEVEL_KEYS if key not in document]
    unexpected = [key for key in document if key not in _TOP_LEVEL_KEYS]
    if missing or unexpected:
        raise PhrasebookError(
            f"{path}: top-level keys must be {list(_TOP_LEVEL_KEYS)}; "
            f"missing {missing}, unexpected {unexpected}"
        )
    language = document["language"]
    if language != path.stem:
        raise PhrasebookError(f"{path}: language is {language!r}, expected {path.stem!r}")

    partners = _strings(path, "code_switch_partners", document["code_switch_partners"])
    strange = [code for code in partners if code not in SUPPORTED_LANGUAGES or code == language]
    if strange:
        raise PhrasebookError(
            f"{path}: code_switch_partners {strange} must be other supported languages "
            f"({', '.join(SUPPORTED_LANGUAGES)})"
        )

    slots = _mapping(path, "slots", document["slots"])
    slot_values = {key: _strings(path, f"slots.{key}", value) for key, value in slots.items()}
    _check_keys(path, "slots", slot_values, MIN_SLOT_VALUES)
    names = {
        gender: tuple(_name(path, value) for value in slot_values[f"names_{gender}"])
        for gender in ("f", "m")
    }

    pools: dict[str, tuple[str, ...]] = {}
    for section in ("small_talk", "indicators", "indicator_pairs", "victim_replies"):
        for key, value in _mapping(path, section, document[section]).items():
            pools[f"{section}.{key}"] = _strings(path, f"{section}.{key}", value)
    for scenario, sides in _mapping(path, "hard_negatives", document["hard_negatives"]).items():
        for side, value in _mapping(path, f"hard_negatives.{scenario}", sides).items():
            key = f"hard_negatives.{scenario}.{side}"
            pools[key] = _strings(path, key, value)
    _check_keys(path, "template pools", pools, MIN_TEMPLATES)
    for key, templates in pools.items():
        for position, template in enumerate(templates):
            _check_template(path, f"{key}[{position}]", template)

    noise = _mapping(path, "noise", document["noise"])
    if sorted(noise) != sorted(_NOISE_KEYS):
        raise PhrasebookError(f"{path}: noise must have exactly the keys {list(_NOISE_KEYS)}")
    slang = {
        key.lower(): replacement
        for key, replacement in _string_mapping(path, "noise.slang", noise["slang"]).items()
    }
    transliteration = _string_mapping(path, "noise.transliteration", noise["transliteration"])
    if any(len(letter) != 1 for letter in transliteration):
        raise PhrasebookError(f"{path}: noise.transliteration keys must be single letters")
    return Phrasebook(
        language=language,
        path=path,
        code_switch_partners=partners,
        names=names,
        slot_values=slot_values,
        pools=pools,
        slang=slang,
        slang_pattern=_slang_pattern(slang),
        fillers=_strings(path, "noise.fillers", noise["fillers"]),
        transliteration=_translation_table(transliteration),
    )


def _mapping(path: Path, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PhrasebookError(f"{path}: {key} must be a mapping, found {type(value).__name__}")
    return value


def _strings(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise PhrasebookError(f"{path}: {key} must be a list, found {type(value).__name__}")
    for position, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise PhrasebookError(f"{path}: {key}[{position}] must be non-empty text: {item!r}")
    return tuple(value)


def _string_mapping(path: Path, key: str, value: Any) -> dict[str, str]:
    mapping = _mapping(path, key, value)
    for entry, replacement in mapping.items():
        if not isinstance(entry, str) or not isinstance(replacement, str):
            raise PhrasebookError(f"{path}: {key} must map text to text: {entry!r}")
    return mapping


def _check_keys(
    path: Path, what: str, found: Mapping[str, tuple[str, ...]], minimum: Mapping[str, int]
) -> None:
    missing = [key for key in minimum if key not in found]
    unexpected = [key for key in found if key not in minimum]
    if missing or unexpected:
        raise PhrasebookError(
            f"{path}: {what} must be exactly {list(minimum)}; "
            f"missing {missing}, unexpected {unexpected}"
        )
    for key, fewest in minimum.items():
        if len(found[key]) < fewest:
            raise PhrasebookError(
                f"{path}: {key} needs at least {fewest} entries, found {len(found[key])}"
            )


def _name(path: Path, value: str) -> Name:
    forms = value.split("|")
    if len(forms) > 2 or not all(form.strip() for form in forms):
        raise PhrasebookError(f"{path}: slots.names_* entry {value!r} must be 'name' or 'nom|voc'")
    return Name(forms[0], forms[-1])


def _check_template(path: Path, key: str, template: str) -> None:
    try:
        fields = list(_FORMATTER.parse(template))
    except ValueError as error:
        raise PhrasebookError(f"{path}: {key}: malformed template {template!r}: {error}") from None
    for _, field, spec, conversion in fields:
        if field is None:
            continue
        if field not in TEMPLATE_SLOTS or conversion is not None:
            raise PhrasebookError(
                f"{path}: {key}: unknown slot {{{field}}} in {template!r}; "
                f"expected one of {sorted(TEMPLATE_SLOTS)}"
            )
        if field == "g" and (not spec or spec.count("|") != 1):
            raise PhrasebookError(
                f"{path}: {key}: gender slot must read {{g:female|male}} in {template!r}"
            )
        if field != "g" and spec:
            raise PhrasebookError(
                f"{path}: {key}: slot {{{field}}} takes no format in {template!r}"
            )


def _slang_pattern(slang: Mapping[str, str]) -> re.Pattern[str] | None:
    if not slang:
        return None
    # Longest first, so a phrase wins over a word inside it.
    alternatives = "|".join(re.escape(key) for key in sorted(slang, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def _translation_table(letters: Mapping[str, str]) -> dict[int, str]:
    table = {ord(letter): latin for letter, latin in letters.items()}
    for letter, latin in letters.items():
        upper = letter.upper()
        if upper != letter and ord(upper) not in table:
            table[ord(upper)] = latin.capitalize()
    return table
