"""The synthetic corpus: determinism, labels, hard negatives, noise, phrasebooks, content rule."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from cesagram.data.schema import Conversation
from cesagram.data.synth import (
    HARD_NEGATIVES,
    SUPPORTED_LANGUAGES,
    Scenario,
    SynthConfig,
    SyntheticConversation,
    generate_annotated_corpus,
    generate_corpus,
)
from cesagram.data.synth.noise import strip_accents
from cesagram.data.synth.phrasebook import (
    MIN_TEMPLATES,
    PHRASEBOOK_DIR,
    PhrasebookError,
    load_phrasebook,
    parse_phrasebook,
)
from cesagram.taxonomy import INDICATOR_IDS, REDACTED_SEXUAL, AuthorRole

# A minimal, clinical list of explicit terms per language (content rule, DOMAIN.md). Matched on
# lowercased text without accents, at word boundaries; a trailing * matches any ending.
EXPLICIT_TERMS: dict[str, tuple[str, ...]] = {
    "en": ("penis", "vagina", "genital*", "intercourse", "masturbat*", "orgasm*", "erection",
           "naked", "nude", "nudes", "porn*"),
    "de": ("penis", "vagina", "genital*", "geschlechtsverkehr", "masturb*", "orgasmus",
           "erektion", "nackt*", "porno*"),
    "fr": ("penis", "vagin*", "genital*", "masturb*", "orgasme*", "erection", "nue", "nudite",
           "porno*"),
    "nl": ("penis", "vagina", "geslachtsde*", "geslachtsgemeenschap", "masturb*", "orgasme",
           "erectie", "naakt*", "porno*"),
    "es": ("pene", "vagina", "genital*", "coito", "masturb*", "orgasmo", "ereccion", "desnud*",
           "porno*"),
    "it": ("pene", "vagina", "genital*", "coito", "masturb*", "orgasmo", "erezione", "nud*",
           "porno*"),
    "el": ("πεος", "αιδοιο", "γεννητικ*", "συνουσια", "αυνανισμ*", "οργασμ*", "στυση", "γυμνος",
           "γυμνη", "γυμνο", "γυμνα", "πορνο*"),
    "lt": ("penis", "makstis", "lytiniai organai", "lytinis aktas", "masturb*", "orgazm*",
           "erekcij*", "nuog*", "porno*"),
}  # fmt: skip


def _term_pattern(term: str) -> str:
    ending = r"\w*" if term.endswith("*") else r"(?!\w)"
    return r"(?<!\w)" + re.escape(term.rstrip("*")) + ending


# One pattern per language: a term is only explicit in its own language ("Nudeln" is pasta).
_EXPLICIT = {
    language: re.compile("|".join(_term_pattern(term) for term in terms))
    for language, terms in EXPLICIT_TERMS.items()
}
# Desensitisation stays at category level: short lines, and the redaction token stands in for
# anything specific, so no more than a couple of words may follow it.
MAX_DESENSITISATION_WORDS = 16
MAX_WORDS_AFTER_REDACTION = 2

# 555 blocks, Ofcom's drama range (07700 900xxx) and ARCEP's fiction range (06 39 98 xx xx).
_FICTITIOUS_PHONE = re.compile(r"555|7700 900|6 39 98")
_GREEK = re.compile(r"[\u0370-\u03ff]")
_URL = re.compile(r"https?://([^/\s]+)")
_EMAIL = re.compile(r"[\w.]+@([\w.-]+\.\w+)")


def _explicit_terms(text: str, *languages: str) -> list[str]:
    bare = strip_accents(text).lower()
    return [term for language in languages for term in _EXPLICIT[language].findall(bare)]


def _dump(conversations: list[Conversation]) -> list[str]:
    return [conversation.model_dump_json() for conversation in conversations]


@pytest.fixture(scope="module")
def corpus() -> list[SyntheticConversation]:
    config = SynthConfig(conversations=400, seed=11, code_switch_fraction=0.2)
    return list(generate_annotated_corpus(config))


def _grooming(corpus: list[SyntheticConversation]) -> list[Conversation]:
    return [record.conversation for record in corpus if record.conversation.risk == 1]


def _benign(corpus: list[SyntheticConversation]) -> list[SyntheticConversation]:
    return [record for record in corpus if record.conversation.risk == 0]


# --- determinism --------------------------------------------------------------------------------


def test_same_config_gives_identical_corpus() -> None:
    config = SynthConfig(conversations=48, seed=5)
    assert _dump(list(generate_corpus(config))) == _dump(list(generate_corpus(config)))


def test_different_seeds_give_different_corpora() -> None:
    first = _dump(list(generate_corpus(SynthConfig(conversations=24, seed=1))))
    second = _dump(list(generate_corpus(SynthConfig(conversations=24, seed=2))))
    assert first != second
    assert sum(a != b for a, b in zip(first, second, strict=True)) > 20


def test_a_larger_corpus_starts_with_the_smaller_one() -> None:
    small = _dump(list(generate_corpus(SynthConfig(conversations=20, seed=3))))
    large = _dump(list(generate_corpus(SynthConfig(conversations=60, seed=3))))
    assert large[:20] == small


# --- shape and metadata -------------------------------------------------------------------------


def test_only_and_every_requested_language(corpus: list[SyntheticConversation]) -> None:
    assert {record.conversation.language for record in corpus} == set(SUPPORTED_LANGUAGES)
    chosen = list(generate_corpus(SynthConfig(conversations=30, languages=("el", "lt"), seed=4)))
    assert {conversation.language for conversation in chosen} == {"el", "lt"}
    assert Counter(conversation.language for conversation in chosen) == {"el": 15, "lt": 15}


def test_conversations_validate_and_carry_metadata(corpus: list[SyntheticConversation]) -> None:
    ids = set()
    for record in corpus:
        conversation = record.conversation
        assert isinstance(conversation, Conversation)
        Conversation.model_validate(conversation.model_dump())
        assert re.fullmatch(rf"syn-{conversation.language}-\d{{6}}", conversation.conversation_id)
        ids.add(conversation.conversation_id)
        assert conversation.source == "synthetic"
        assert conversation.age_band in ("10-12", "13-15", "16-17")
        assert conversation.gender in ("f", "m", "x")
        assert conversation.platform in ("game_chat", "social_app", "messenger", "forum")
        assert 8 <= len(conversation.messages) <= 80
        assert len({message.author for message in conversation.messages}) == 2
        times = [datetime.fromisoformat(m.timestamp or "") for m in conversation.messages]
        assert all(earlier < later for earlier, later in pairwise(times))
    assert len(ids) == len(corpus)


def test_grooming_conversations_are_longer(corpus: list[SyntheticConversation]) -> None:
    def mean_length(conversations: list[Conversation]) -> float:
        return sum(len(c.messages) for c in conversations) / len(conversations)

    benign = [record.conversation for record in _benign(corpus)]
    assert mean_length(_grooming(corpus)) > mean_length(benign) + 5


def test_grooming_fraction_within_tolerance(corpus: list[SyntheticConversation]) -> None:
    share = len(_grooming(corpus)) / len(corpus)
    assert abs(share - 0.35) < 0.08
    never = SynthConfig(conversations=40, grooming_fraction=0)
    assert not any(conversation.risk for conversation in generate_corpus(never))


# --- labels -------------------------------------------------------------------------------------


def test_grooming_walks_through_the_stages(corpus: list[SyntheticConversation]) -> None:
    grooming = _grooming(corpus)
    reached_meeting = 0
    for conversation in grooming:
        roles = {message.author_role for message in conversation.messages}
        assert roles == {AuthorRole.OFFENDER, AuthorRole.VICTIM}
        first_seen: dict[str, int] = {}
        for message in conversation.messages:
            if message.labels:
                assert message.author_role is AuthorRole.OFFENDER, message
            for label in message.labels:
                first_seen.setdefault(label, message.index)
        assert len(first_seen) >= 2
        if "meeting" in first_seen:
            reached_meeting += 1
            for earlier in ("access", "trust_building", "risk_assessment"):
                if earlier in first_seen:
                    assert first_seen[earlier] < first_seen["meeting"], conversation
    many = sum(len({label for m in c.messages for label in m.labels}) >= 4 for c in grooming)
    assert many > 0.6 * len(grooming)
    # Some chats get all the way to a meeting, others stop earlier.
    assert 0.2 * len(grooming) < reached_meeting < 0.9 * len(grooming)


def test_every_indicator_and_some_pairs_appear(corpus: list[SyntheticConversation]) -> None:
    labels = [m.labels for c in _grooming(corpus) for m in c.messages if m.labels]
    assert {label for message_labels in labels for label in message_labels} == set(INDICATOR_IDS)
    assert sum(len(message_labels) == 2 for message_labels in labels) > 10


def test_benign_conversations_carry_no_labels(corpus: list[SyntheticConversation]) -> None:
    for record in _benign(corpus):
        for message in record.conversation.messages:
            assert message.labels == ()
            assert message.author_role in (AuthorRole.PEER, AuthorRole.ADULT)


def test_hard_negatives_are_about_half_of_benign(corpus: list[SyntheticConversation]) -> None:
    benign = _benign(corpus)
    scenarios = Counter(record.scenario for record in benign)
    assert set(scenarios) == {Scenario.SMALL_TALK, *HARD_NEGATIVES}
    hard = sum(scenarios[scenario] for scenario in HARD_NEGATIVES)
    assert 0.35 < hard / len(benign) < 0.65
    for record in benign:
        roles = {message.author_role for message in record.conversation.messages}
        if record.scenario in (Scenario.PARENT_LOGISTICS, Scenario.HEALTH_EDUCATION):
            assert roles == {AuthorRole.PEER, AuthorRole.ADULT}
        else:
            assert roles == {AuthorRole.PEER}


def test_offenders_recur_and_nobody_else_does(corpus: list[SyntheticConversation]) -> None:
    conversations_of: dict[str, set[str]] = {}
    for record in corpus:
        for message in record.conversation.messages:
            conversations_of.setdefault(message.author, set()).add(
                record.conversation.conversation_id
            )
    offenders = {
        m.author for c in _grooming(corpus) for m in c.messages if m.author_role == "offender"
    }
    recurring = {author for author, ids in conversations_of.items() if len(ids) > 1}
    assert recurring
    assert recurring <= offenders
    config = SynthConfig(conversations=200, seed=11, offender_reuse=0)
    authors = Counter(
        author
        for conversation in generate_corpus(config)
        for author in {message.author for message in conversation.messages}
    )
    assert max(authors.values()) == 1


# --- text ---------------------------------------------------------------------------------------


def test_code_switching_mixes_in_a_second_language(corpus: list[SyntheticConversation]) -> None:
    switched = [record for record in corpus if record.switched_language is not None]
    assert 0.1 < len(switched) / len(corpus) < 0.3
    greek = generate_annotated_corpus(
        SynthConfig(conversations=20, languages=("el",), code_switch_fraction=1, noise=0)
    )
    mixed = 0
    for record in greek:
        assert record.conversation.language == "el"
        assert record.switched_language == "en"
        texts = [message.text for message in record.conversation.messages]
        mixed += any(re.search("[a-z]{3}", t) and not _GREEK.search(t) for t in texts)
    assert mixed >= 15
    unswitched = SynthConfig(conversations=40, code_switch_fraction=0)
    assert all(r.switched_language is None for r in generate_annotated_corpus(unswitched))


def test_noise_changes_text_but_never_labels() -> None:
    def corpus_at(noise: float) -> list[Conversation]:
        return list(generate_corpus(SynthConfig(conversations=80, seed=9, noise=noise)))

    clean, noisy = corpus_at(0), corpus_at(0.9)
    changed = 0
    for plain, rough in zip(clean, noisy, strict=True):
        assert len(plain.messages) == len(rough.messages)
        for before, after in zip(plain.messages, rough.messages, strict=True):
            assert (before.labels, before.author, before.author_role, before.timestamp) == (
                after.labels,
                after.author,
                after.author_role,
                after.timestamp,
            )
            changed += before.text != after.text
    assert changed > 0.5 * sum(len(c.messages) for c in clean)


def test_noise_strips_accents_and_writes_greeklish() -> None:
    texts = [
        message.text
        for conversation in generate_corpus(
            SynthConfig(conversations=40, languages=("el", "fr"), noise=0.5, seed=2)
        )
        for message in conversation.messages
    ]
    assert any(re.search(r"\b(ti|kai|k|eisai|8a|xaxa)\b", text) for text in texts)
    assert any("deja" in text or "ca " in text or "tres" in text for text in texts)


def test_noise_keeps_the_redaction_token_and_contacts_intact() -> None:
    config = SynthConfig(conversations=300, seed=4, noise=1.0, grooming_fraction=1.0)
    tokens = 0
    for conversation in generate_corpus(config):
        for message in conversation.messages:
            if "redacted" in message.text.lower():
                assert REDACTED_SEXUAL in message.text, message.text
                tokens += 1
            for domain in _EMAIL.findall(message.text) + _URL.findall(message.text):
                assert re.search(r"example\.(com|org|net)$", domain), message.text
    assert tokens > 20


def test_contact_details_appear_in_both_classes(corpus: list[SyntheticConversation]) -> None:
    patterns = {
        "url": _URL,
        "email": _EMAIL,
        "handle": re.compile(r"(?<![\w.])@\w+"),
        "phone": re.compile(r"\+?\d[\d ]{6,}\d"),
    }
    for risk in (0, 1):
        conversations = [r.conversation for r in corpus if r.conversation.risk == risk]
        texts = [message.text for c in conversations for message in c.messages]
        for kind, pattern in patterns.items():
            assert any(pattern.search(text) for text in texts), (risk, kind)
    for record in corpus:
        for message in record.conversation.messages:
            for domain in _URL.findall(message.text) + _EMAIL.findall(message.text):
                assert re.search(r"example\.(com|org|net)$", domain), message.text
            for number in patterns["phone"].findall(message.text):
                assert _FICTITIOUS_PHONE.search(number), message.text


# --- phrasebooks and the content rule -----------------------------------------------------------


def _raw(language: str) -> dict[str, Any]:
    with (PHRASEBOOK_DIR / f"{language}.yaml").open(encoding="utf-8") as stream:
        document: dict[str, Any] = yaml.safe_load(stream)
    return document


def _structure(document: dict[str, Any]) -> set[str]:
    keys = {f"top.{key}" for key in document}
    keys |= {f"slots.{key}" for key in document["slots"]}
    keys |= {f"noise.{key}" for key in document["noise"]}
    for section in ("small_talk", "indicators", "indicator_pairs", "victim_replies"):
        keys |= {f"{section}.{key}" for key in document[section]}
    for scenario, sides in document["hard_negatives"].items():
        keys |= {f"hard_negatives.{scenario}.{side}" for side in sides}
    return keys


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in (*_strings(key), *_strings(item))]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


@pytest.mark.parametrize("language", SUPPORTED_LANGUAGES)
def test_phrasebooks_share_one_structure(language: str) -> None:
    assert _structure(_raw(language)) == _structure(_raw("en"))
    book = load_phrasebook(language)
    assert book.language == language
    for pool, fewest in MIN_TEMPLATES.items():
        assert len(book.templates(pool)) >= fewest, (language, pool)
        assert len(set(book.templates(pool))) == len(book.templates(pool)), (language, pool)
    assert len(book.pools["small_talk.lines"]) > len(book.pools["indicators.access"])


@pytest.mark.parametrize("language", SUPPORTED_LANGUAGES)
def test_desensitisation_stays_at_category_level(language: str) -> None:
    templates = load_phrasebook(language).templates("indicators.desensitisation")
    redacted = 0
    for template in templates:
        words = re.sub(r"\{g:[^}]*\}", "X", template).split()
        assert len(words) <= MAX_DESENSITISATION_WORDS, template
        assert not _explicit_terms(template, language, "en"), template
        if REDACTED_SEXUAL in template:
            redacted += 1
            assert template.count(REDACTED_SEXUAL) == 1, template
            after = template.split(REDACTED_SEXUAL, 1)[1].split()
            assert len(after) <= MAX_WORDS_AFTER_REDACTION, template
    assert redacted >= len(templates) / 3


@pytest.mark.parametrize("language", SUPPORTED_LANGUAGES)
def test_phrasebooks_hold_no_explicit_terms(language: str) -> None:
    found = {text: _explicit_terms(text, language) for text in _strings(_raw(language))}
    assert not {text: terms for text, terms in found.items() if terms}


def test_the_explicit_term_check_catches_what_it_should() -> None:
    assert _explicit_terms("send me a NUDE", "en")
    assert _explicit_terms("schick ein Nacktbild", "de")
    assert _explicit_terms("στείλε γυμνή", "el")
    assert not _explicit_terms("πάω στο 3ο Γυμνάσιο", "el")
    assert not _explicit_terms("the sex ed lesson on puberty and consent", "en")


def test_generated_text_holds_no_explicit_terms(corpus: list[SyntheticConversation]) -> None:
    for record in corpus:
        languages = [record.conversation.language, record.switched_language or "en"]
        for message in record.conversation.messages:
            assert not _explicit_terms(message.text, *languages), message.text


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"conversations": 0}, "conversations"),
        ({"conversations": True}, "conversations"),
        ({"languages": ("en", "xx")}, "languages"),
        ({"languages": ()}, "languages"),
        ({"languages": ("en", "en")}, "languages"),
        ({"grooming_fraction": 1.5}, "grooming_fraction"),
        ({"code_switch_fraction": -0.1}, "code_switch_fraction"),
        ({"noise": 2}, "noise"),
        ({"offender_reuse": "0.2"}, "offender_reuse"),
    ],
)
def test_bad_config_says_what_to_change(changes: dict[str, Any], field: str) -> None:
    settings: dict[str, Any] = {"conversations": 10, **changes}
    with pytest.raises(ValueError, match=rf"SynthConfig\.{field}"):
        SynthConfig(**settings)


def test_config_accepts_a_list_of_languages() -> None:
    config = SynthConfig(conversations=2, languages=["nl", "fr"])  # type: ignore[arg-type]
    assert config.languages == ("nl", "fr")


def test_phrasebook_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    text = (PHRASEBOOK_DIR / "en.yaml").read_text(encoding="utf-8")
    broken = tmp_path / "en.yaml"
    broken.write_text(text.replace('"how old are you?"', '"how old are you, {nmae}?"'), "utf-8")
    with pytest.raises(PhrasebookError, match=r"en\.yaml: indicators\.access\[0\].*\{nmae\}"):
        parse_phrasebook(broken)
    broken.write_text(text.replace('  meeting:\n    - "we should', '  meetings:\n    - "we'))
    with pytest.raises(PhrasebookError, match=r"missing \['indicators\.meeting'\]"):
        parse_phrasebook(broken)
