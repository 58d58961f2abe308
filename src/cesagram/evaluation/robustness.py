"""Invariance tests in the CheckList style: a decision must survive label-preserving edits.

Ribeiro et al. 2020 ("Beyond Accuracy: Behavioral Testing of NLP Models with CheckList") test a
model's *behaviour* rather than its accuracy: an invariance test perturbs an input in a way that
cannot change its label and counts how often the model's decision changes anyway. Chat text is
noisy by nature (typos, leetspeak, emoji, no accents, shouting, other languages mixed in), and
offenders disguise keywords on purpose, so a detector whose flags flip under such edits is both
unreliable and easy to evade.

Perturbations (`PERTURBATIONS`, in this order), each a pure function of the text, its language
and a seed, returning None when it does not apply to the text:

- ``typos``: a swapped, deleted or doubled letter in about one of every five words of four or
  more letters (at least one); the first letter of a word is never touched.
- ``leetspeak``: a->4, e->3, i->1, o->0, s->5, t->7 on Latin letters only (Greek stays as is).
- ``emoji``: one or two emoji from `NEUTRAL_EMOJI`, between words or at the end.
- ``casing``: all upper case, all lower case or alternating words (the seed picks among the
  variants that change the text).
- ``missing_accents``: diacritics stripped (é -> e, ά -> α, ϊ -> ι, ą -> a, ž -> z), as people
  type on phone keyboards.
- ``name_swap``: first names replaced by other names of the same language and gender, in the
  same grammatical form (vocative stays vocative), case and accent style; the names are
  `FIRST_NAMES` plus those the synthetic corpus uses. Names that are also common words in one of
  the supported languages (Dutch "ben", Italian "mia", Lithuanian "matai", Greek "σοφία") are
  left out, so an edit never rewrites an ordinary word.
- ``code_switch``: a neutral filler from another language (`CODE_SWITCH_PHRASES`) at the start
  or the end, as bilingual teenagers write.

The redaction token and contact details (handles, e-mails, links, phone numbers) are never
edited: they are not words and models may rely on them legitimately.

`run_suite` runs the perturbations through a model's decision function and reports, per
perturbation, how many texts it applied to and how many kept their decision. Only counts and
rates are returned and logged, never text (DOMAIN.md): examples of failures are for a reviewer
to produce on their own data, not for reports.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from cesagram.data.synth.config import SUPPORTED_LANGUAGES
from cesagram.data.synth.noise import strip_accents
from cesagram.data.synth.phrasebook import Name, load_phrasebook
from cesagram.taxonomy import REDACTED_SEXUAL

logger = logging.getLogger(__name__)

PERTURBATIONS: tuple[str, ...] = (
    "typos",
    "leetspeak",
    "emoji",
    "casing",
    "missing_accents",
    "name_swap",
    "code_switch",
)

NEUTRAL_EMOJI: tuple[str, ...] = ("😊", "😂", "👍", "🙂", "😅", "❤️")

# Short fillers that carry no indicator, one table per language; no phrase is in two tables, so
# an inserted phrase always names its language.
CODE_SWITCH_PHRASES: Mapping[str, tuple[str, ...]] = {
    "en": ("ok lol", "haha yeah", "no way", "same tbh", "fair enough"),
    "de": ("haha ja", "na gut", "alles klar", "ach so", "genau"),
    "fr": ("d'accord", "bon bah", "ah ouais", "mdr ok", "trop bien"),
    "nl": ("oké dan", "haha ja toch", "nou ja", "echt wel", "prima"),
    "es": ("vale", "jaja sí", "bueno", "qué va", "venga"),
    "it": ("ok dai", "boh", "vabbè", "ahah sì", "va bene"),
    "el": ("εντάξει", "χαχα ναι", "έλα ρε", "καλά", "τέλεια"),
    "lt": ("gerai", "nu gerai", "aišku", "supratau", "tikrai"),
}

# Common first names by language and gender ("f", "m"), written "nominative|vocative" where the
# vocative differs (el, lt), as in the phrasebooks. Greek in Greek script. The synthetic corpus's
# own names are added to these (see `_name_groups`).
FIRST_NAMES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "en": {
        "f": ("Emily", "Jessica", "Hannah", "Lucy", "Megan", "Sarah", "Laura", "Rachel", "Katie",
              "Evie"),
        "m": ("James", "Thomas", "Daniel", "Ryan", "Joshua", "Ethan", "Lewis", "Callum", "Adam",
              "Luke"),
    },
    "de": {
        "f": ("Laura", "Julia", "Lisa", "Katharina", "Johanna", "Franziska", "Jana", "Nele",
              "Frieda", "Charlotte"),
        "m": ("Lukas", "Jonas", "Moritz", "Jannik", "Niklas", "Tobias", "Florian", "Sebastian",
              "Philipp", "Simon"),
    },
    "fr": {
        "f": ("Juliette", "Léna", "Sarah", "Margaux", "Océane", "Pauline", "Lucie", "Mathilde",
              "Élodie", "Anaïs"),
        "m": ("Nicolas", "Mathéo", "Antoine", "Thomas", "Alexandre", "Quentin", "Romain",
              "Julien", "Baptiste", "Enzo"),
    },
    "nl": {
        "f": ("Sanne", "Lieke", "Femke", "Anouk", "Eva", "Sofie", "Lisa", "Marieke", "Ilse",
              "Jana"),
        "m": ("Bram", "Thijs", "Ruben", "Jasper", "Wout", "Stijn", "Jens", "Robbe", "Tibo",
              "Kobe"),
    },
    "es": {
        "f": ("Carmen", "Elena", "Irene", "Claudia", "Marta", "Andrea", "Nerea", "Laura",
              "Ainhoa", "Lucía"),
        "m": ("Javier", "Sergio", "Diego", "Carlos", "Jorge", "Iván", "Rubén", "Raúl", "Gonzalo",
              "Álvaro"),
    },
    "it": {
        "f": ("Francesca", "Elisa", "Valentina", "Alessia", "Federica", "Silvia", "Camilla",
              "Elena", "Ilaria", "Marta"),
        "m": ("Marco", "Matteo", "Giovanni", "Simone", "Pietro", "Stefano", "Filippo", "Giacomo",
              "Nicola", "Michele"),
    },
    "el": {
        "f": ("Μαρίνα", "Κωνσταντίνα", "Θεοδώρα", "Αλεξάνδρα", "Ευαγγελία", "Αικατερίνη", "Δανάη",
              "Μυρτώ", "Ραφαέλα", "Στέλλα"),
        "m": ("Κωνσταντίνος|Κωνσταντίνε", "Ιωάννης|Ιωάννη", "Βασίλης|Βασίλη", "Σπύρος|Σπύρο",
              "Μανώλης|Μανώλη", "Αντώνης|Αντώνη", "Λευτέρης|Λευτέρη", "Πέτρος|Πέτρο",
              "Ηλίας|Ηλία", "Τάσος|Τάσο"),
    },
    "lt": {
        "f": ("Ieva", "Kotryna", "Gabrielė|Gabriele", "Viltė|Vilte", "Akvilė|Akvile",
              "Agnė|Agne", "Justė|Juste", "Rugilė|Rugile", "Smiltė|Smilte", "Aistė|Aiste"),
        "m": ("Tomas|Tomai", "Mantas|Mantai", "Vytautas|Vytautai", "Dovydas|Dovydai",
              "Karolis|Karoli", "Mindaugas|Mindaugai", "Ignas|Ignai", "Arnas|Arnai",
              "Justas|Justai", "Titas|Titai"),
    },
}  # fmt: skip

# Names that are also ordinary words in a supported language (compared casefolded, without
# accents): swapping them would rewrite "ik ben" (nl), "la mia" (it), "ar matai" (lt), "leo" (es),
# "σοφία" (el), so they are neither matched nor used as replacements.
ALSO_COMMON_WORDS: frozenset[str] = frozenset(
    {
        "ben", "mia", "max", "leo", "lea", "isla", "alba", "clara", "chiara", "aurora", "grace",
        "lily", "jade", "jack", "sara", "milan", "oscar", "ginevra", "matas", "matai", "eglė",
        "rūta", "greta", "άγγελος", "άγγελε", "σοφία", "γεωργία", "βασιλική", "δέσποινα",
    }
)  # fmt: skip

# Spans no perturbation edits: the redaction token, handles, e-mails and links, phone numbers.
_PROTECTED = re.compile(rf"{re.escape(REDACTED_SEXUAL)}|\S*[@/]\S*|\+?\d[\d ]{{5,}}\d")
_LONG_WORD = re.compile(r"[^\W\d_]{4,}")  # letters only: numbers and handles are not words
_TOKEN = re.compile(r"\S+")
_LEET = str.maketrans("aeiostAEIOST", "431057431057")
_WORDS_PER_TYPO = 5


@dataclass(frozen=True)
class PerturbationResult:
    """How one perturbation fared: texts it applied to and how many kept their decision."""

    kind: str
    applicable: int
    passed: int
    pass_rate: float  # passed / applicable; NaN when the perturbation applied to no text

    def to_dict(self) -> dict[str, str | int | float]:
        """The result as a plain dict (for JSON reports)."""
        return asdict(self)


def perturb(text: str, kind: str, *, language: str = "en", seed: int = 0) -> str | None:
    """``text`` after the perturbation ``kind``, or None when it does not apply to the text.

    Args:
        text: one message.
        kind: one of `PERTURBATIONS`.
        language: the message's ISO 639-1 code; ``code_switch`` inserts a phrase of another
            language, and ``name_swap`` looks names up in this language's list first.
        seed: the same (text, kind, language, seed) always gives the same result.

    Raises:
        ValueError: for an unknown ``kind``.
    """
    if kind not in _PERTURBERS:
        raise ValueError(
            f"unknown perturbation {kind!r}; expected one of: {', '.join(PERTURBATIONS)}"
        )
    rng = random.Random(_seed(text, kind, language, seed))
    result = _PERTURBERS[kind](text, language, rng)
    return None if result == text else result


def run_suite(
    texts: Sequence[str],
    languages: Sequence[str],
    decide: Callable[[npt.NDArray[np.int64], list[str]], npt.NDArray[Any]],
    *,
    kinds: Sequence[str] = PERTURBATIONS,
    seed: int = 0,
) -> dict[str, PerturbationResult]:
    """Invariance pass rates of a model's decisions under each perturbation.

    ``decide(indices, batch)`` returns the model's decisions for ``batch``, whose texts stand at
    ``indices`` of ``texts`` (a model may use the positions to find context such as the
    conversation a message belongs to). It is called once with every original text, then once
    per perturbation with only the texts it applies to, perturbed; a perturbation that applies
    to no text is not sent. Decisions are compared exactly, so pass thresholded decisions (0/1,
    labels), not scores: one value per text (shape ``[len(batch)]``) or one row per text for
    multi-label models (``[len(batch), labels]``), where a text passes only if its whole row is
    unchanged.

    Args:
        texts: the messages.
        languages: each message's ISO 639-1 code, same length as ``texts``.
        decide: the model's decision function, as above.
        kinds: the perturbations to run, a subset of `PERTURBATIONS`.
        seed: passed to `perturb`.

    Returns:
        One `PerturbationResult` per kind, in the order of ``kinds``. Counts are also logged;
        no text is.

    Raises:
        ValueError: on empty or mismatched inputs, an unknown kind, or decisions whose shape
            does not match the batch.
    """
    if isinstance(texts, str) or isinstance(languages, str):
        raise ValueError("texts and languages must be sequences of strings, not one string")
    originals, codes = list(texts), list(languages)
    if not originals:
        raise ValueError("texts is empty: there is nothing to test")
    if len(codes) != len(originals):
        raise ValueError(
            f"languages must give one code per text: {len(originals)} texts, {len(codes)} languages"
        )
    unknown = [kind for kind in kinds if kind not in _PERTURBERS]
    if unknown:
        raise ValueError(
            f"unknown perturbation(s) {unknown}; expected some of: {', '.join(PERTURBATIONS)}"
        )

    everything = np.arange(len(originals), dtype=np.int64)
    reference = _decisions(decide(everything, originals), len(originals), "the original texts")
    results: dict[str, PerturbationResult] = {}
    for kind in dict.fromkeys(kinds):
        positions: list[int] = []
        batch: list[str] = []
        for position, (text, language) in enumerate(zip(originals, codes, strict=True)):
            changed = perturb(text, kind, language=language, seed=seed)
            if changed is not None:
                positions.append(position)
                batch.append(changed)
        passed = 0
        if positions:
            indices = np.asarray(positions, dtype=np.int64)
            decided = _decisions(decide(indices, batch), len(batch), f"the {kind} texts")
            expected = reference[indices]
            if decided.shape != expected.shape:
                raise ValueError(
                    f"decide returned shape {decided.shape} for the {kind} texts but "
                    f"{expected.shape} for the same original texts"
                )
            same = (decided == expected).reshape(len(positions), -1).all(axis=1)
            passed = int(np.count_nonzero(same))
        rate = passed / len(positions) if positions else math.nan
        results[kind] = PerturbationResult(kind, len(positions), passed, rate)
        logger.info(
            "robustness %s: %d of %d applicable texts kept their decision (pass rate %.3f); "
            "%d texts not applicable",
            kind,
            passed,
            len(positions),
            rate,
            len(originals) - len(positions),
        )
    return results


def _decisions(values: Any, expected_rows: int, what: str) -> npt.NDArray[Any]:
    array = np.asarray(values)
    if array.ndim not in (1, 2) or array.shape[0] != expected_rows:
        raise ValueError(
            f"decide must return one decision (or one row of decisions) per text; for "
            f"{what} it got {expected_rows} texts and returned shape {array.shape}"
        )
    return array


def _seed(text: str, kind: str, language: str, seed: int) -> int:
    # A digest, not hash(): str hashes change with PYTHONHASHSEED, results must not.
    key = "\x00".join((kind, language, str(seed), text)).encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def _protected_spans(text: str) -> list[tuple[int, int]]:
    return [match.span() for match in _PROTECTED.finditer(text)]


def _is_free(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether ``text[start:end]`` overlaps no protected span."""
    return all(end <= first or start >= last for first, last in spans)


def _map_free(text: str, rewrite: Callable[[str], str]) -> str:
    """``text`` with ``rewrite`` applied to everything outside the protected spans."""
    pieces: list[str] = []
    cursor = 0
    for start, end in _protected_spans(text):
        pieces.extend((rewrite(text[cursor:start]), text[start:end]))
        cursor = end
    pieces.append(rewrite(text[cursor:]))
    return "".join(pieces)


def _typos(text: str, language: str, rng: random.Random) -> str:
    spans = _protected_spans(text)
    words = [match.span() for match in _LONG_WORD.finditer(text) if _is_free(spans, *match.span())]
    if not words:
        return text
    count = max(1, (len(words) + _WORDS_PER_TYPO // 2) // _WORDS_PER_TYPO)
    # Right to left, so earlier offsets stay valid while words change length.
    for start, end in sorted(rng.sample(words, count), reverse=True):
        text = text[:start] + _typo(text[start:end], rng) + text[end:]
    return text


def _typo(word: str, rng: random.Random) -> str:
    """One slip of the finger; the word always changes and keeps its first letter."""
    operation = rng.choice(("swap", "delete", "duplicate"))
    swappable = [i for i in range(1, len(word) - 1) if word[i] != word[i + 1]]
    if operation == "swap" and swappable:
        i = rng.choice(swappable)
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    i = rng.randrange(1, len(word))
    if operation == "duplicate":
        return word[: i + 1] + word[i:]
    return word[:i] + word[i + 1 :]


def _leetspeak(text: str, language: str, rng: random.Random) -> str:
    return _map_free(text, lambda free: free.translate(_LEET))


def _emoji(text: str, language: str, rng: random.Random) -> str:
    spans = _protected_spans(text)
    # After a word: between two words or at the end, never inside a phone number.
    slots = [
        match.end()
        for match in _TOKEN.finditer(text)
        if all(not first < match.end() < last for first, last in spans)
    ]
    if not slots:
        return text
    insertions = sorted(
        ((rng.choice(slots), rng.choice(NEUTRAL_EMOJI)) for _ in range(rng.choice((1, 2)))),
        key=lambda insertion: insertion[0],
        reverse=True,
    )
    for slot, emoji in insertions:
        text = f"{text[:slot]} {emoji}{text[slot:]}"
    return text


def _casing(text: str, language: str, rng: random.Random) -> str:
    variants = (
        _map_free(text, str.upper),
        _map_free(text, str.lower),
        _alternate_words(text),
    )
    changed = list(dict.fromkeys(variant for variant in variants if variant != text))
    return rng.choice(changed) if changed else text


def _alternate_words(text: str) -> str:
    """Every other word upper case (the first, the third, ...), the rest lower case."""
    spans = _protected_spans(text)
    position = -1

    def case(match: re.Match[str]) -> str:
        nonlocal position
        position += 1
        word = match.group(0)
        if not _is_free(spans, *match.span()):
            return word
        return word.upper() if position % 2 == 0 else word.lower()

    return _TOKEN.sub(case, text)


def _missing_accents(text: str, language: str, rng: random.Random) -> str:
    # NFC afterwards: stripping decomposes letters that carry no accent (Hangul); only a real
    # accent change must count as a change.
    stripped = unicodedata.normalize("NFC", strip_accents(text))
    return text if stripped == unicodedata.normalize("NFC", text) else stripped


def _code_switch(text: str, language: str, rng: random.Random) -> str:
    if not text.strip():
        return text
    other = rng.choice([code for code in CODE_SWITCH_PHRASES if code != language])
    phrase = rng.choice(CODE_SWITCH_PHRASES[other])
    return f"{phrase} {text}" if rng.random() < 0.5 else f"{text} {phrase}"


@dataclass(frozen=True)
class _NameForm:
    """Where a written name form belongs: its group, the name in it, and which form it is."""

    group: tuple[str, str]  # (language, gender)
    name: int  # position in the group
    vocative: bool
    bare: bool  # written without its accents


def _name_swap(text: str, language: str, rng: random.Random) -> str:
    groups, forms, pattern = _name_index()
    spans = _protected_spans(text)
    found: dict[tuple[tuple[str, str], int], _NameForm] = {}
    for match in pattern.finditer(text):
        form = _lookup(forms, match.group(0), language) if _is_free(spans, *match.span()) else None
        if form is not None:
            found.setdefault((form.group, form.name), form)
    if not found:
        return text

    # One replacement per distinct name, so "Lucy ... Lucy" stays one person, and never a name
    # already in the text, so two people do not merge into one.
    taken = set(found)
    replacement: dict[tuple[tuple[str, str], int], int] = {}
    for group, name in found:
        others = [i for i in range(len(groups[group])) if i != name]
        fresh = [i for i in others if (group, i) not in taken]
        chosen = rng.choice(fresh or others)
        taken.add((group, chosen))
        replacement[(group, name)] = chosen

    def swap(match: re.Match[str]) -> str:
        written = match.group(0)
        form = _lookup(forms, written, language) if _is_free(spans, *match.span()) else None
        if form is None:
            return written
        new = groups[form.group][replacement[(form.group, form.name)]]
        spelled = new.vocative if form.vocative else new.nominative
        if form.bare:
            spelled = strip_accents(spelled)
        return _same_case(written, spelled)

    return pattern.sub(swap, text)


def _lookup(
    forms: Mapping[str, Mapping[str, _NameForm]], written: str, language: str
) -> _NameForm | None:
    """The name ``written`` stands for, in the message's language when it has that name."""
    by_language = forms.get(written.casefold())
    if not by_language:
        return None
    return by_language.get(language) or next(iter(by_language.values()))


def _same_case(written: str, name: str) -> str:
    if written.isupper() and len(written) > 1:
        return name.upper()
    if written.islower():
        return name.lower()
    return name


@cache
def _name_groups() -> dict[tuple[str, str], tuple[Name, ...]]:
    """Names by (language, gender): `FIRST_NAMES` and the synthetic corpus's, minus common words."""
    common_words = {_plain(word) for word in ALSO_COMMON_WORDS}
    groups: dict[tuple[str, str], tuple[Name, ...]] = {}
    for language in dict.fromkeys((*FIRST_NAMES, *SUPPORTED_LANGUAGES)):
        book = load_phrasebook(language) if language in SUPPORTED_LANGUAGES else None
        for gender in ("f", "m"):
            names = [_parse_name(entry) for entry in FIRST_NAMES.get(language, {}).get(gender, ())]
            if book is not None:
                names.extend(book.names[gender])
            kept = {
                name.nominative: name
                for name in names
                if not {_plain(name.nominative), _plain(name.vocative)} & common_words
            }
            if len(kept) > 1:
                groups[(language, gender)] = tuple(kept.values())
    return groups


@cache
def _name_index() -> tuple[
    dict[tuple[str, str], tuple[Name, ...]],
    dict[str, dict[str, _NameForm]],
    re.Pattern[str],
]:
    """The name groups, every written form (casefolded) by language, and a pattern for them."""
    groups = _name_groups()
    forms: dict[str, dict[str, _NameForm]] = {}
    spellings: set[str] = set()
    # Forms as listed first, accent-less spellings after: "Urte" is Urtė's vocative, not a
    # bare nominative.
    for bare in (False, True):
        for group, names in groups.items():
            for position, name in enumerate(names):
                for vocative, spelled in ((False, name.nominative), (True, name.vocative)):
                    written = strip_accents(spelled) if bare else spelled
                    spellings.add(written)
                    by_language = forms.setdefault(written.casefold(), {})
                    by_language.setdefault(group[0], _NameForm(group, position, vocative, bare))
    # Longest first, so "Γιώργος" wins over "Γιώργο"; whole words only.
    alternatives = "|".join(re.escape(form) for form in sorted(spellings, key=len, reverse=True))
    pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
    return groups, forms, pattern


def _parse_name(entry: str) -> Name:
    nominative, _, vocative = entry.partition("|")
    return Name(nominative, vocative or nominative)


def _plain(word: str) -> str:
    return strip_accents(word).casefold()


_PERTURBERS: Mapping[str, Callable[[str, str, random.Random], str]] = {
    "typos": _typos,
    "leetspeak": _leetspeak,
    "emoji": _emoji,
    "casing": _casing,
    "missing_accents": _missing_accents,
    "name_swap": _name_swap,
    "code_switch": _code_switch,
}
