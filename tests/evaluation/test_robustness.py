"""CheckList invariance tests: each perturbation on small neutral sentences, and the suite."""

from __future__ import annotations

import logging
import math
import unicodedata
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cesagram.data.synth import SUPPORTED_LANGUAGES
from cesagram.data.synth.noise import strip_accents
from cesagram.data.synth.phrasebook import load_phrasebook
from cesagram.evaluation.robustness import (
    ALSO_COMMON_WORDS,
    CODE_SWITCH_PHRASES,
    FIRST_NAMES,
    NEUTRAL_EMOJI,
    PERTURBATIONS,
    PerturbationResult,
    perturb,
    run_suite,
)
from cesagram.taxonomy import REDACTED_SEXUAL

SEEDS = range(40)

# Neutral everyday lines, one or two per language.
SENTENCES: tuple[tuple[str, str], ...] = (
    ("See you at the park after school, Jessica!", "en"),
    ("Können wir morgen zusammen für die Prüfung üben?", "de"),
    ("Je suis à la maison, j'ai fini mes devoirs", "fr"),
    ("Ik heb morgen een toets wiskunde met Fien", "nl"),
    ("¿Qué tal el examen de mañana?", "es"),
    ("Stasera guardo la partita con Luca", "it"),
    ("Γεια σου Γιώργο, τι κάνεις; Είμαι στο σπίτι", "el"),
    ("Labas, Lukai! Ačiū, šiandien einu į mokyklą", "lt"),
)


def _names(language: str, gender: str, *, vocative: bool = False) -> set[str]:
    """The documented name pool: FIRST_NAMES plus the synthetic corpus's names."""
    pool: set[str] = set()
    for entry in FIRST_NAMES[language][gender]:
        nominative, _, voc = entry.partition("|")
        pool.add((voc or nominative) if vocative else nominative)
    for name in load_phrasebook(language).names[gender]:
        pool.add(name.vocative if vocative else name.nominative)
    return pool


def _typo_variants(word: str) -> set[str]:
    """Every swap, deletion or doubling of one letter after the first."""
    variants = set()
    for i in range(1, len(word)):
        variants.add(word[:i] + word[i + 1 :])
        variants.add(word[: i + 1] + word[i:])
        if i < len(word) - 1:
            variants.add(word[:i] + word[i + 1] + word[i] + word[i + 2 :])
    variants.discard(word)
    return variants


# --- perturb: the API ----------------------------------------------------------------------------


def test_perturbations_are_listed_in_order() -> None:
    assert PERTURBATIONS == (
        "typos",
        "leetspeak",
        "emoji",
        "casing",
        "missing_accents",
        "name_swap",
        "code_switch",
    )


def test_unknown_kind_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="shouting") as error:
        perturb("see you later", "shouting")
    assert ", ".join(PERTURBATIONS) in str(error.value)


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_every_perturbation_is_deterministic_per_seed(kind: str) -> None:
    for text, language in SENTENCES:
        for seed in (0, 1, 7):
            first = perturb(text, kind, language=language, seed=seed)
            assert first == perturb(text, kind, language=language, seed=seed)
            assert first != text


@pytest.mark.parametrize("kind", ["typos", "emoji", "casing", "name_swap", "code_switch"])
def test_random_perturbations_vary_with_the_seed(kind: str) -> None:
    text = "See you at the park after school, Jessica!"
    results = {perturb(text, kind, language="en", seed=seed) for seed in SEEDS}
    assert len(results) > 1
    assert None not in results


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_blank_text_is_never_perturbed(kind: str) -> None:
    assert perturb("", kind) is None
    assert perturb("   ", kind) is None


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_perturbations_keep_line_breaks(kind: str) -> None:
    # Conversation-level callers join messages with newlines and split them again afterwards.
    conversation = "\n".join(text for text, _ in SENTENCES)
    for seed in range(10):
        result = perturb(conversation, kind, language="en", seed=seed)
        assert result is not None
        assert result.count("\n") == conversation.count("\n")


# --- typos ---------------------------------------------------------------------------------------


def test_typos_change_about_one_word_in_five() -> None:
    # 15 words of four letters or more -> 3 typos; short words are never touched.
    text = (
        "Tomorrow morning we should probably practise together before school starts again "
        "because teachers want everything finished"
    )
    for seed in SEEDS:
        result = perturb(text, "typos", seed=seed)
        assert result is not None
        changed = [
            (before, after)
            for before, after in zip(text.split(), result.split(), strict=True)
            if before != after
        ]
        assert len(changed) == 3
        for before, after in changed:
            assert len(before) >= 4
            assert after in _typo_variants(before)


def test_typos_make_at_least_one_and_work_in_any_script() -> None:
    # Two long words ("Γεια", "κάνεις") -> one typo.
    words = ["Γεια", "σου,", "τι", "κάνεις;"]
    for seed in SEEDS:
        greek = perturb(" ".join(words), "typos", language="el", seed=seed)
        assert greek is not None
        changed = [(a, b) for a, b in zip(words, greek.split(), strict=True) if a != b]
        assert len(changed) == 1
        assert changed[0][1].rstrip(";") in _typo_variants(changed[0][0].rstrip(";"))


def test_typos_need_a_word_of_four_letters() -> None:
    assert perturb("ok ja 12345 lol", "typos") is None
    assert perturb(f"ok {REDACTED_SEXUAL} @anna_2010", "typos") is None


def test_typos_leave_contact_details_and_the_redaction_token_alone() -> None:
    text = f"mail me at emma.rose@example.com about {REDACTED_SEXUAL} tomorrow please"
    for seed in SEEDS:
        result = perturb(text, "typos", seed=seed)
        assert result is not None
        assert "emma.rose@example.com" in result
        assert REDACTED_SEXUAL in result


# --- leetspeak -----------------------------------------------------------------------------------


def test_leetspeak_replaces_latin_letters() -> None:
    assert perturb("Lets meet at the station", "leetspeak") == "L375 m337 47 7h3 574710n"
    assert perturb("STOP IT", "leetspeak") == "570P 17"
    # Accented letters are other letters: only a, e, i, o, s, t change.
    assert perturb("café crème", "leetspeak", language="fr") == "c4fé crèm3"


def test_leetspeak_leaves_greek_untouched() -> None:
    # Greek ο, ι, α look like Latin letters but are not.
    assert perturb("Τι κάνεις; Είμαι στο σπίτι", "leetspeak", language="el") is None
    assert perturb("Παίζω Minecraft απόψε", "leetspeak", language="el") == "Παίζω M1n3cr4f7 απόψε"


def test_leetspeak_does_not_apply_without_those_letters() -> None:
    assert perturb("hmm ok lol", "leetspeak") == "hmm 0k l0l"
    assert perturb("hmm xD", "leetspeak") is None
    result = perturb(f"see {REDACTED_SEXUAL} at https://example.org/join/Astos", "leetspeak")
    assert result == f"533 {REDACTED_SEXUAL} 47 https://example.org/join/Astos"


# --- emoji ---------------------------------------------------------------------------------------


def _without_emoji(text: str) -> str:
    for emoji in NEUTRAL_EMOJI:
        text = text.replace(f" {emoji}", "")
    return text


def test_emoji_inserts_one_or_two_neutral_emoji_between_words_or_at_the_end() -> None:
    text = "see you at the park later"
    counts = set()
    for seed in SEEDS:
        result = perturb(text, "emoji", seed=seed)
        assert result is not None
        assert _without_emoji(result) == text
        assert result.startswith("see ")
        count = sum(result.count(emoji) for emoji in NEUTRAL_EMOJI)
        assert count in (1, 2)
        counts.add(count)
    assert counts == {1, 2}


def test_emoji_on_one_word_goes_at_the_end() -> None:
    result = perturb("hello", "emoji", seed=3)
    assert result is not None
    assert result.startswith("hello ")
    assert _without_emoji(result) == "hello"


def test_emoji_never_splits_a_phone_number() -> None:
    for seed in SEEDS:
        result = perturb("call me on +30 690 555 1234 later", "emoji", seed=seed)
        assert result is not None
        assert "+30 690 555 1234" in result


# --- casing --------------------------------------------------------------------------------------


def test_casing_picks_upper_lower_or_alternating_words() -> None:
    text = "See you at Training"
    results = {perturb(text, "casing", seed=seed) for seed in SEEDS}
    assert results == {"SEE YOU AT TRAINING", "see you at training", "SEE you AT training"}


def test_casing_only_picks_variants_that_change_the_text() -> None:
    results = {perturb("we play later tonight", "casing", seed=seed) for seed in SEEDS}
    assert results == {"WE PLAY LATER TONIGHT", "WE play LATER tonight"}
    assert {perturb("Τι κάνεις;", "casing", language="el", seed=seed) for seed in SEEDS} <= {
        "ΤΙ ΚΆΝΕΙΣ;",
        "τι κάνεις;",
        "ΤΙ κάνεις;",
    }


def test_casing_does_not_apply_to_text_without_letters() -> None:
    assert perturb("123 456 !!", "casing") is None
    assert perturb("👍👍", "casing") is None


def test_casing_keeps_the_redaction_token_and_links() -> None:
    text = f"OK {REDACTED_SEXUAL} LATER https://example.org/join/AbCdEf"
    for seed in SEEDS:
        result = perturb(text, "casing", seed=seed)
        assert result is not None
        assert REDACTED_SEXUAL in result
        assert result.endswith("https://example.org/join/AbCdEf")


# --- missing_accents -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language", "expected"),
    [
        ("Je suis à la maison, ça va", "fr", "Je suis a la maison, ca va"),
        ("Können wir morgen üben?", "de", "Konnen wir morgen uben?"),
        ("¿Qué tal el examen de mañana?", "es", "¿Que tal el examen de manana?"),
        ("Τι κάνεις; Είμαι στο σπίτι", "el", "Τι κανεις; Ειμαι στο σπιτι"),
        ("Το προϊόν, οι Άρτεμις και ΐσως", "el", "Το προιον, οι Αρτεμις και ισως"),
        ("ą č ę ė į š ų ū ž Ą Č Ę Ė Į Š Ų Ū Ž", "lt", "a c e e i s u u z A C E E I S U U Z"),
        ("cafe\u0301 ok", "fr", "cafe ok"),  # a decomposed accent counts too
    ],
)
def test_missing_accents_strips_diacritics(text: str, language: str, expected: str) -> None:
    result = perturb(text, "missing_accents", language=language)
    assert result == expected
    assert unicodedata.is_normalized("NFC", result)


def test_missing_accents_does_not_apply_without_accents() -> None:
    assert perturb("See you tomorrow", "missing_accents") is None
    assert perturb("Γεια σου", "missing_accents", language="el") is None
    assert perturb("안녕 오늘 뭐 해", "missing_accents") is None  # Hangul is not an accent


# --- name_swap -----------------------------------------------------------------------------------


def test_name_swap_replaces_a_name_with_another_of_the_same_language_and_gender() -> None:
    text = "I am going to the cinema with Jessica later"
    seen = set()
    for seed in SEEDS:
        result = perturb(text, "name_swap", language="en", seed=seed)
        assert result is not None
        before, after = result.split(" with ")
        assert before == "I am going to the cinema"
        name, rest = after.split(" ")
        assert rest == "later"
        assert name in _names("en", "f") - {"Jessica"}
        seen.add(name)
    assert len(seen) > 5


def test_name_swap_preserves_case_and_word_boundaries() -> None:
    upper = perturb("JESSICA is here", "name_swap", seed=2)
    lower = perturb("jessica is here", "name_swap", seed=2)
    assert upper is not None and lower is not None
    assert upper.endswith(" is here") and upper.split()[0].isupper()
    assert lower.endswith(" is here") and lower.split()[0].islower()
    possessive = perturb("Jessica's phone is dead", "name_swap", seed=2)
    assert possessive is not None and possessive.endswith("'s phone is dead")
    assert perturb("Jessicas and Emmanuel", "name_swap") is None


def test_name_swap_keeps_one_person_one_name() -> None:
    for seed in SEEDS:
        result = perturb("Lucy told Daniel that Lucy is late", "name_swap", seed=seed)
        assert result is not None
        first, told, second, that, third, *rest = result.split()
        assert (told, that, rest) == ("told", "that", ["is", "late"])
        assert first == third != "Lucy"
        assert first in _names("en", "f")
        assert second in _names("en", "m") - {"Daniel"}


def test_name_swap_keeps_the_greek_vocative_and_the_accent_style() -> None:
    for seed in SEEDS:
        vocative = perturb("Γεια σου Γιώργο, τι κάνεις;", "name_swap", language="el", seed=seed)
        assert vocative is not None
        name = vocative.removeprefix("Γεια σου ").removesuffix(", τι κάνεις;")
        assert name in _names("el", "m", vocative=True) - {"Γιώργο"}

        nominative = perturb("Ο Νίκος ήρθε", "name_swap", language="el", seed=seed)
        assert nominative is not None
        name = nominative.removeprefix("Ο ").removesuffix(" ήρθε")
        assert name in _names("el", "m") - {"Νίκος"}

        bare = perturb("γεια σου γιωργο", "name_swap", language="el", seed=seed)
        assert bare is not None
        name = bare.removeprefix("γεια σου ")
        vocatives = {strip_accents(voc).lower() for voc in _names("el", "m", vocative=True)}
        assert name in vocatives - {"γιωργο"}


def test_name_swap_uses_the_synthetic_corpus_names() -> None:
    assert not any(entry.startswith("Fien") for entry in FIRST_NAMES["nl"]["f"])
    result = perturb("Fien komt ook", "name_swap", language="nl")
    assert result is not None
    assert result.endswith(" komt ook")
    assert result.split()[0] in _names("nl", "f") - {"Fien"}
    lithuanian = perturb("Labas, Lukai!", "name_swap", language="lt")
    assert lithuanian is not None
    assert lithuanian.removeprefix("Labas, ").removesuffix("!") in _names(
        "lt", "m", vocative=True
    ) - {"Lukai"}


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Ik ben thuis", "nl"),
        ("la mia amica arriva", "it"),
        ("ar matai?", "lt"),
        ("Leo un libro", "es"),
        ("Η σοφία των αρχαίων", "el"),
        ("See you tomorrow at the station", "en"),
        ("write to emma.rose@example.com or @lucy_2010", "en"),
    ],
)
def test_name_swap_does_not_apply_without_a_listed_name(text: str, language: str) -> None:
    assert perturb(text, "name_swap", language=language) is None


def test_first_names_cover_every_language() -> None:
    assert set(FIRST_NAMES) == set(SUPPORTED_LANGUAGES)
    common_words = {strip_accents(word).casefold() for word in ALSO_COMMON_WORDS}
    for language, genders in FIRST_NAMES.items():
        assert len(genders["f"]) + len(genders["m"]) >= 10, language
        for entry in (*genders["f"], *genders["m"]):
            assert strip_accents(entry.partition("|")[0]).casefold() not in common_words
    greek = "".join(entry.replace("|", "") for entry in FIRST_NAMES["el"]["f"])
    assert all("GREEK" in unicodedata.name(letter) for letter in greek)


# --- code_switch ---------------------------------------------------------------------------------


def test_code_switch_phrases_name_their_language() -> None:
    assert set(CODE_SWITCH_PHRASES) == set(SUPPORTED_LANGUAGES)
    phrases = [phrase for table in CODE_SWITCH_PHRASES.values() for phrase in table]
    assert len(phrases) == len(set(phrases))


@pytest.mark.parametrize(("text", "language"), SENTENCES)
def test_code_switch_adds_a_phrase_of_another_language(text: str, language: str) -> None:
    positions = set()
    languages = set()
    for seed in SEEDS:
        result = perturb(text, "code_switch", language=language, seed=seed)
        assert result is not None
        if result.startswith(text):
            phrase, position = result.removeprefix(text + " "), "end"
        else:
            assert result.endswith(text)
            phrase, position = result.removesuffix(" " + text), "start"
        source = [code for code, table in CODE_SWITCH_PHRASES.items() if phrase in table]
        assert len(source) == 1
        assert source[0] != language
        positions.add(position)
        languages.add(source[0])
    assert positions == {"start", "end"}
    assert len(languages) > 2


# --- run_suite -----------------------------------------------------------------------------------

SUITE_TEXTS = [
    "Do you want to meet after school?",
    "I finished my homework",
    "Ça va, on se voit demain ?",
    "Τι κάνεις;",
    "Emma says hi",
]
SUITE_LANGUAGES = ["en", "en", "fr", "el", "en"]


class KeywordRule:
    """A fake model: flags a text when it contains "meet" (any case); records its calls."""

    def __init__(self, *, columns: int = 1) -> None:
        self.columns = columns
        self.calls: list[tuple[list[int], list[str]]] = []

    def __call__(self, indices: npt.NDArray[np.int64], texts: list[str]) -> npt.NDArray[Any]:
        assert indices.dtype == np.int64
        self.calls.append((indices.tolist(), list(texts)))
        meet = np.array([int("meet" in text.lower()) for text in texts])
        if self.columns == 1:
            return meet
        question = np.array([int("?" in text) for text in texts])
        return np.column_stack([meet, question])


# Hand-computed with the keyword rule above:
#   leetspeak: applies to 0, 1, 2, 4 (Greek 3 has no Latin letter); 0 becomes "m337" -> 3 of 4
#   emoji, casing, code_switch: apply to all five and never hide "meet" -> 5 of 5
#   missing_accents: applies to "Ça va" (2) and "κάνεις" (3) -> 2 of 2
#   name_swap: applies to "Emma" (4) only -> 1 of 1
EXPECTED = {
    "leetspeak": (4, 3),
    "emoji": (5, 5),
    "casing": (5, 5),
    "missing_accents": (2, 2),
    "name_swap": (1, 1),
    "code_switch": (5, 5),
}


@pytest.mark.parametrize("columns", [1, 2])
def test_run_suite_counts_match_hand_computation(columns: int) -> None:
    rule = KeywordRule(columns=columns)
    results = run_suite(SUITE_TEXTS, SUITE_LANGUAGES, rule)
    assert list(results) == list(PERTURBATIONS)
    for kind, (applicable, passed) in EXPECTED.items():
        assert results[kind] == PerturbationResult(kind, applicable, passed, passed / applicable)
    # Typos: every text has a word of four letters; only a typo inside "meet" can flip text 0.
    typo = perturb(SUITE_TEXTS[0], "typos", language="en")
    assert typo is not None
    assert results["typos"].applicable == 5
    assert results["typos"].passed == 4 + ("meet" in typo.lower())


def test_run_suite_sends_only_the_applicable_texts() -> None:
    rule = KeywordRule()
    run_suite(SUITE_TEXTS, SUITE_LANGUAGES, rule, kinds=("leetspeak", "missing_accents"), seed=3)
    assert rule.calls[0] == ([0, 1, 2, 3, 4], SUITE_TEXTS)
    assert [indices for indices, _ in rule.calls[1:]] == [[0, 1, 2, 4], [2, 3]]
    for (indices, texts), kind in zip(
        rule.calls[1:], ("leetspeak", "missing_accents"), strict=True
    ):
        assert texts == [
            perturb(SUITE_TEXTS[i], kind, language=SUITE_LANGUAGES[i], seed=3) for i in indices
        ]
    assert len(rule.calls) == 3


def test_run_suite_reports_nan_when_nothing_applies() -> None:
    rule = KeywordRule()
    results = run_suite(["see you later", "ok"], ["en", "en"], rule, kinds=["name_swap"])
    result = results["name_swap"]
    assert (result.kind, result.applicable, result.passed) == ("name_swap", 0, 0)
    assert math.isnan(result.pass_rate)
    assert len(rule.calls) == 1  # the originals only
    as_dict = result.to_dict()
    assert as_dict["kind"] == "name_swap" and as_dict["applicable"] == 0
    assert math.isnan(float(as_dict["pass_rate"]))


def test_run_suite_compares_whole_rows_for_multi_label_decisions() -> None:
    def decide(indices: npt.NDArray[np.int64], texts: list[str]) -> npt.NDArray[Any]:
        # Column 0 never changes; column 1 is lost when accents go.
        return np.array([[1, int(text != strip_accents(text))] for text in texts])

    results = run_suite(SUITE_TEXTS, SUITE_LANGUAGES, decide, kinds=["missing_accents", "emoji"])
    assert results["missing_accents"] == PerturbationResult("missing_accents", 2, 0, 0.0)
    assert results["emoji"] == PerturbationResult("emoji", 5, 5, 1.0)


def test_run_suite_logs_counts_but_no_text(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cesagram.evaluation.robustness"):
        run_suite(SUITE_TEXTS, SUITE_LANGUAGES, KeywordRule())
    assert "leetspeak: 3 of 4" in caplog.text
    for text in SUITE_TEXTS:
        for word in text.split():
            if len(word) > 3:
                assert word not in caplog.text


def test_run_suite_rejects_bad_input() -> None:
    rule = KeywordRule()
    with pytest.raises(ValueError, match="shouting"):
        run_suite(SUITE_TEXTS, SUITE_LANGUAGES, rule, kinds=["typos", "shouting"])
    assert rule.calls == []
    with pytest.raises(ValueError, match="5 texts, 4 languages"):
        run_suite(SUITE_TEXTS, SUITE_LANGUAGES[:4], rule)
    with pytest.raises(ValueError, match="empty"):
        run_suite([], [], rule)
    with pytest.raises(ValueError, match="not one string"):
        run_suite("hello", ["en"] * 5, rule)


def test_run_suite_rejects_decisions_of_the_wrong_shape() -> None:
    def too_many(indices: npt.NDArray[np.int64], texts: list[str]) -> npt.NDArray[Any]:
        return np.zeros(len(texts) + 1)

    with pytest.raises(ValueError, match="returned shape"):
        run_suite(SUITE_TEXTS, SUITE_LANGUAGES, too_many)

    def changing(indices: npt.NDArray[np.int64], texts: list[str]) -> npt.NDArray[Any]:
        return np.zeros((len(texts), 2 if len(texts) == len(SUITE_TEXTS) else 3))

    with pytest.raises(ValueError, match="shape"):
        run_suite(SUITE_TEXTS, SUITE_LANGUAGES, changing, kinds=["missing_accents"])
