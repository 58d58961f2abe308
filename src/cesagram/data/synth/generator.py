"""The seeded generator: configuration in, a stream of labelled ``Conversation`` objects out.

Every conversation draws from its own ``random.Random`` seeded with (seed, position), so the
corpus never depends on global state, the clock or set order, and the first N conversations of
a larger corpus are the same as a corpus of N. A second generator of the same kind drives the
noise, so changing ``noise`` rewrites text but never the labels, authors or timestamps.
The only state carried between conversations is the list of offender usernames (for reuse) and
the usernames already taken (so no two people share one by accident).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from cesagram.data.schema import Conversation, Message
from cesagram.data.synth import identities
from cesagram.data.synth.config import SynthConfig
from cesagram.data.synth.dialogue import OTHER, YOUNG, Dialogue, GenderForm
from cesagram.data.synth.noise import add_noise, draw_style
from cesagram.data.synth.phrasebook import Phrasebook, load_phrasebook
from cesagram.data.synth.scenarios import (
    ADULT_SCENARIOS,
    HARD_NEGATIVES,
    Scenario,
    write_scenario,
)
from cesagram.taxonomy import AuthorRole

SOURCE = "synthetic"

_AGE_BANDS = (("10-12", 10, 12), ("13-15", 13, 15), ("16-17", 16, 17))
# The same age, gender and platform mix in both classes where it can be, so metadata alone does
# not give the label away.
_AGE_BAND_WEIGHTS = (3, 5, 2)
_GENDERS = ("f", "m", "x")
_GENDER_WEIGHTS = (48, 46, 6)
_PLATFORMS = ("game_chat", "social_app", "messenger", "forum")
_PLATFORM_WEIGHTS: Mapping[Scenario, tuple[int, ...]] = {
    Scenario.GROOMING: (35, 35, 15, 15),
    Scenario.SMALL_TALK: (25, 25, 25, 25),
    Scenario.PEER_DATING: (0, 55, 45, 0),
    Scenario.FRIEND_VISIT: (0, 40, 60, 0),
    Scenario.PARENT_LOGISTICS: (0, 0, 100, 0),
    Scenario.HEALTH_EDUCATION: (0, 0, 30, 70),
    Scenario.HEALTH_CLASS_CHAT: (0, 50, 50, 0),
    Scenario.GAME_TRADE: (80, 0, 0, 20),
}
# Slots whose value depends on the language a line is written in (case, article, country).
_GRAMMATICAL_SLOTS = {
    "town": "towns",
    "school": "schools",
    "gift": "gifts",
    "amount": "amounts",
    "place": "places",
    "time": "times",
    "hobby": "hobbies",
}
_EPOCH = datetime(2023, 1, 1, tzinfo=UTC)


class SyntheticConversation(NamedTuple):
    """A generated conversation with what the generator knows about it beyond the schema."""

    conversation: Conversation
    scenario: Scenario
    switched_language: str | None  # the second language mixed in, if any


def generate_corpus(config: SynthConfig) -> Iterator[Conversation]:
    """Yield ``config.conversations`` labelled synthetic conversations, deterministically."""
    for record in generate_annotated_corpus(config):
        yield record.conversation


def generate_annotated_corpus(config: SynthConfig) -> Iterator[SyntheticConversation]:
    """Like ``generate_corpus``, with each conversation's scenario and code-switch language.

    The scenario lets evaluation slice results by hard-negative kind (false positives on peer
    dating talk, on gaming trades, ...) without adding fields to the corpus schema.
    """
    people = _People()
    for index in range(config.conversations):
        yield _conversation(config, index, people)


class _People:
    """Usernames handed out so far, so they stay unique unless an offender recurs on purpose."""

    def __init__(self) -> None:
        self.taken: set[str] = set()  # membership tests only
        self.offenders: list[str] = []  # in order of first appearance, for seeded reuse

    def claim(self, draw: Callable[[], str]) -> str:
        """A username from ``draw`` that nobody has yet; redraws a few times, then numbers it."""
        wanted = draw()
        for _ in range(4):
            if wanted not in self.taken:
                break
            wanted = draw()
        candidate, number = wanted, 1
        while candidate in self.taken:
            number += 1
            candidate = f"{wanted}_{number}"
        self.taken.add(candidate)
        return candidate


def _conversation(config: SynthConfig, index: int, people: _People) -> SyntheticConversation:
    rng = random.Random(f"cesagram.synth/{config.seed}/{index}")
    language = config.languages[index % len(config.languages)]
    book = load_phrasebook(language)

    grooming = rng.random() < config.grooming_fraction
    if grooming:
        scenario = Scenario.GROOMING
    elif rng.random() < 0.5:
        scenario = Scenario.SMALL_TALK
    else:
        scenario = rng.choice(HARD_NEGATIVES)
    age_band, youngest, oldest = rng.choices(_AGE_BANDS, _AGE_BAND_WEIGHTS)[0]
    age = rng.randint(youngest, oldest)
    gender = rng.choices(_GENDERS, _GENDER_WEIGHTS)[0]
    platform = rng.choices(_PLATFORMS, _PLATFORM_WEIGHTS[scenario])[0]
    if grooming:
        roles = (AuthorRole.VICTIM, AuthorRole.OFFENDER)
    elif scenario in ADULT_SCENARIOS:
        roles = (AuthorRole.PEER, AuthorRole.ADULT)
    else:
        roles = (AuthorRole.PEER, AuthorRole.PEER)
    switched = None
    if rng.random() < config.code_switch_fraction:
        switched = rng.choice(book.code_switch_partners)

    # Gender "x": names and grammatical forms follow one of the two; either is plausible.
    perceived = gender if gender in ("f", "m") else rng.choice(("f", "m"))
    young_name = rng.choice(book.names[perceived])
    other_name = rng.choice(book.names[rng.choice(("f", "m"))])
    friends = [name for name in book.names[rng.choice(("f", "m"))] if name != young_name]
    friend = rng.choice(friends)
    young_user = people.claim(
        lambda: identities.username(rng, book, young_name.nominative, adult=False)
    )
    if grooming and people.offenders and rng.random() < config.offender_reuse:
        other_user = rng.choice(people.offenders)
    else:
        adult = roles[OTHER] is not AuthorRole.PEER
        other_user = people.claim(
            lambda: identities.username(rng, book, other_name.nominative, adult)
        )
        if grooming:
            people.offenders.append(other_user)
    users = (young_user, other_user)

    shared: dict[str, object] = {
        "friend": friend.nominative,
        "age": age,
        "other_age": _other_age(rng, roles[OTHER], age),
        "g": GenderForm(perceived),
        "app": rng.choice(book.slot_values["apps"]),
        "game": rng.choice(book.slot_values["games"]),
    }
    # Per speaker: their own contact details, and the name of the one they talk to.
    personal = tuple(
        {
            "name": addressee.nominative,
            "name_voc": addressee.vocative,
            "handle": identities.handle(rng, book, user),
            "phone": identities.phone(rng, book),
            "email": identities.email(rng, user),
            "url": identities.url(rng, user),
        }
        for user, addressee in ((young_user, other_name), (other_user, young_name))
    )
    books = {language: book}
    if switched is not None:
        books[switched] = load_phrasebook(switched)
    slots = {
        code: _slot_tables(rng, written_in, shared, personal) for code, written_in in books.items()
    }
    dialogue = Dialogue(
        rng,
        book,
        slots,
        secondary=books.get(switched) if switched else None,
        switch_rate=rng.uniform(0.15, 0.4),
        adult_other=roles[OTHER] is AuthorRole.ADULT,
    )
    write_scenario(scenario, dialogue, rng)

    noise_rng = random.Random(f"cesagram.synth/{config.seed}/{index}/noise")
    styles = tuple(draw_style(noise_rng, config.noise, role) for role in roles)
    moment = _EPOCH + timedelta(days=rng.randrange(730), seconds=rng.randrange(7 * 3600, 22 * 3600))
    messages = []
    for position, turn in enumerate(dialogue.turns):
        if position:
            moment += timedelta(seconds=_gap(rng, turn.pause))
        messages.append(
            Message(
                index=position,
                author=users[turn.speaker],
                author_role=roles[turn.speaker],
                timestamp=moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
                text=add_noise(turn.text, styles[turn.speaker], books[turn.language], noise_rng),
                labels=turn.labels,
            )
        )
    conversation = Conversation(
        conversation_id=f"syn-{language}-{index:06d}",
        source=SOURCE,
        language=language,
        risk=1 if grooming else 0,
        age_band=age_band,
        gender=gender,
        platform=platform,
        messages=tuple(messages),
    )
    return SyntheticConversation(conversation, scenario, switched)


def _other_age(rng: random.Random, role: AuthorRole, age: int) -> int:
    if role is AuthorRole.OFFENDER:
        # Offenders mostly pose as a slightly older teenager, sometimes as a young adult.
        return age + rng.randint(1, 3) if rng.random() < 0.6 else rng.randint(18, 24)
    if role is AuthorRole.ADULT:
        return rng.randint(30, 55)
    return min(17, max(10, age + rng.randint(-1, 1)))


def _slot_tables(
    rng: random.Random,
    book: Phrasebook,
    shared: Mapping[str, object],
    personal: tuple[Mapping[str, str], ...],
) -> tuple[dict[str, object], dict[str, object]]:
    grammar: dict[str, object] = {
        slot: rng.choice(book.slot_values[values]) for slot, values in _GRAMMATICAL_SLOTS.items()
    }
    grammar["item"], grammar["item2"] = rng.sample(book.slot_values["items"], 2)
    return (
        {**shared, **grammar, **personal[YOUNG]},
        {**shared, **grammar, **personal[OTHER]},
    )


def _gap(rng: random.Random, pause: bool) -> int:
    """Seconds between two messages: quick replies, the odd wait, days between sessions."""
    if pause:
        return rng.randint(2 * 3600, 3 * 86400)
    if rng.random() < 0.1:
        return rng.randint(120, 1800)
    return rng.randint(4, 90)
