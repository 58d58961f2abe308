"""Writing one conversation, turn by turn, from phrasebook templates.

A ``Dialogue`` knows the two participants' slot values and which phrasebooks it may write from;
the scenario scripts (``scenarios.py``) decide what is said and with which labels.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    # Only for annotations: phrasebook.py imports the scenario list, which imports this module.
    from cesagram.data.synth.phrasebook import Phrasebook

YOUNG = 0  # the young participant: the victim in grooming chats, a peer otherwise
OTHER = 1  # the offender, a peer, or an adult (parent, school nurse)


class Turn(NamedTuple):
    """One message before noise, authors and timestamps are attached."""

    speaker: int
    text: str
    labels: tuple[str, ...]
    language: str  # the phrasebook the line came from; differs from the main one when switched
    pause: bool  # hours or days pass before this message (grooming runs over days)


class GenderForm:
    """Formats ``{g:female|male}`` to the form agreeing with the young participant."""

    __slots__ = ("_position",)

    def __init__(self, gender: str) -> None:
        self._position = 0 if gender == "f" else 1

    def __format__(self, spec: str) -> str:
        return spec.split("|")[self._position]


class Dialogue:
    """Accumulates the turns of one conversation.

    ``slots`` maps each language the dialogue may write in to one slot table per speaker
    (``YOUNG``, ``OTHER``); each line is formatted with the table of its language and speaker.
    With a ``secondary`` phrasebook, each line is written in it with probability ``switch_rate``.
    When ``adult_other`` is set, the other participant makes small talk the way parents and
    teachers do rather than from the teenagers' pools.
    """

    def __init__(
        self,
        rng: random.Random,
        primary: Phrasebook,
        slots: Mapping[str, tuple[Mapping[str, object], Mapping[str, object]]],
        secondary: Phrasebook | None = None,
        switch_rate: float = 0.0,
        adult_other: bool = False,
    ) -> None:
        self.turns: list[Turn] = []
        self._rng = rng
        self._primary = primary
        self._secondary = secondary
        self._switch_rate = switch_rate
        self._slots = slots
        self._adult_other = adult_other
        # Templates are dealt without replacement per pool, so a chat does not repeat itself
        # until a pool runs dry.
        self._decks: dict[tuple[str, str], list[int]] = {}
        self._pause_next = False

    def __len__(self) -> int:
        return len(self.turns)

    def say(
        self, speaker: int, pool: str, labels: tuple[str, ...] = (), unnamed: bool = False
    ) -> None:
        """Append one line from ``pool`` said by ``speaker``, carrying ``labels``.

        ``unnamed`` skips templates that call the other one by name.
        """
        book = self._primary
        if self._secondary is not None and self._rng.random() < self._switch_rate:
            book = self._secondary
        template = self._draw(book, pool)
        # Bounded: every pool that is drawn from unnamed has lines without a name.
        for _ in range(2 * len(book.pools[pool])):
            if not (unnamed and "{name" in template):
                break
            template = self._draw(book, pool)
        text = template.format_map(self._slots[book.language][speaker])
        self.turns.append(Turn(speaker, text, labels, book.language, self._pause_next))
        self._pause_next = False

    def _draw(self, book: Phrasebook, pool: str) -> str:
        templates = book.pools[pool]
        deck = self._decks.get((book.language, pool))
        if not deck:
            deck = list(range(len(templates)))
            self._rng.shuffle(deck)
            self._decks[(book.language, pool)] = deck
        return templates[deck.pop()]

    def cut(self, limit: int) -> None:
        """Drop every turn after the first ``limit``."""
        del self.turns[limit:]

    def pause(self) -> None:
        """Let hours or days pass before the next line."""
        if self.turns:
            self._pause_next = True

    def open(self, first: int) -> None:
        """Greetings: ``first`` opens, the other one usually answers."""
        self._small_talk(first, "openers")
        if self._rng.random() < 0.8:
            self._small_talk(1 - first, "openers")

    def chat(self, exchanges: int) -> None:
        """Small talk: ``exchanges`` times, one says something and the other reacts."""
        for _ in range(exchanges):
            speaker = self._rng.randrange(2)
            self._small_talk(speaker, "lines")
            if self._rng.random() < 0.7:
                self._small_talk(1 - speaker, "replies")
            elif self._rng.random() < 0.5:
                self._small_talk(1 - speaker, "lines")

    def close(self) -> None:
        """Often a goodbye, sometimes answered; chats also just stop."""
        if self._rng.random() < 0.6:
            speaker = self._rng.randrange(2)
            self._small_talk(speaker, "closers")
            if self._rng.random() < 0.5:
                self._small_talk(1 - speaker, "closers")

    def _small_talk(self, speaker: int, kind: str) -> None:
        if speaker == OTHER and self._adult_other:
            self.say(speaker, f"small_talk.adult_{kind}")
        else:
            # Children do not greet a parent or a teacher by first name.
            self.say(speaker, f"small_talk.{kind}", unnamed=self._adult_other)
