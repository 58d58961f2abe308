"""What happens in a synthetic conversation: the scenario scripts, independent of language.

A grooming script walks the offender through the indicator stages of the taxonomy (after
O'Connell 2003 and Olson et al. 2007) at a varied pace, interleaved with victim replies and
small talk, and often stops before the last stage. Benign scripts are small talk or a hard
negative: peer chat that shares surface forms with the indicators but carries no labels.
"""

from __future__ import annotations

import random
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

from cesagram.data.synth.dialogue import OTHER, YOUNG

if TYPE_CHECKING:
    from cesagram.data.synth.dialogue import Dialogue

# Grooming chats grow longer than benign ones, up to about this many messages.
MAX_MESSAGES = 80
MIN_MESSAGES = 8


class Scenario(StrEnum):
    """The kind of conversation a synthetic chat is; hard negatives are all but two."""

    GROOMING = "grooming"
    SMALL_TALK = "small_talk"
    PEER_DATING = "peer_dating"  # compliments and dating talk between teens
    FRIEND_VISIT = "friend_visit"  # "are your parents home? can I come over?"
    PARENT_LOGISTICS = "parent_logistics"  # a parent arranging pick-up with their child
    HEALTH_EDUCATION = "health_education"  # a school nurse or teacher answering a student
    HEALTH_CLASS_CHAT = "health_class_chat"  # classmates after the puberty or consent lesson
    GAME_TRADE = "game_trade"  # legitimate in-game trades between players


HARD_NEGATIVES: tuple[Scenario, ...] = (
    Scenario.PEER_DATING,
    Scenario.FRIEND_VISIT,
    Scenario.PARENT_LOGISTICS,
    Scenario.HEALTH_EDUCATION,
    Scenario.HEALTH_CLASS_CHAT,
    Scenario.GAME_TRADE,
)

# Hard negatives where the other participant is an adult rather than a peer.
ADULT_SCENARIOS: frozenset[Scenario] = frozenset(
    {Scenario.PARENT_LOGISTICS, Scenario.HEALTH_EDUCATION}
)

# Offender lines that carry two indicators at once ("add me on X, and don't tell anyone").
INDICATOR_PAIRS: tuple[tuple[str, str], ...] = (
    ("secrecy", "platform_switch"),
    ("gifts_offers", "secrecy"),
    ("image_request", "secrecy"),
    ("meeting", "secrecy"),
    ("access", "platform_switch"),
)

# Stages in the order offenders move through them; indicators in one stage come in any order.
_STAGES: tuple[tuple[str, ...], ...] = (
    ("access", "trust_building"),
    ("risk_assessment",),
    ("isolation", "secrecy"),
    ("desensitisation",),
    ("image_request", "platform_switch"),
    ("gifts_offers",),
    ("meeting",),
)
# How many stages a chat gets through: at least two, and the full arc most often.
_REACHED = tuple(range(2, len(_STAGES) + 1))
_REACHED_WEIGHTS = (1, 1, 1, 1, 1, 3)


class Move(NamedTuple):
    """One offender line: its main indicator (what the victim answers to) and its labels."""

    indicator: str
    labels: tuple[str, ...]
    pause: bool  # the move opens a new session, hours or days later


def plan_grooming(rng: random.Random) -> list[Move]:
    """The offender's moves in order: a varied walk through the stages, often cut short."""
    stages = [list(stage) for stage in _STAGES[: rng.choices(_REACHED, _REACHED_WEIGHTS)[0]]]
    # Game credits and gifts are often the hook, offered right after the first contact.
    if ["gifts_offers"] in stages and rng.random() < 0.3:
        stages.remove(["gifts_offers"])
        stages.insert(1, ["gifts_offers"])
    moves: list[Move] = []
    said: set[str] = set()  # membership tests only, so set order never matters
    for number, stage in enumerate(stages):
        if stage == ["desensitisation"] and rng.random() < 0.35:
            continue
        # After the first stage, an offender often uses only one of a stage's two indicators.
        chosen = stage
        if number > 0 and len(stage) > 1 and rng.random() < 0.5:
            chosen = [rng.choice(stage)]
        indicators = [indicator for indicator in chosen for _ in range(rng.randint(1, 2))]
        rng.shuffle(indicators)
        # Flattery keeps coming back between the later stages.
        if number > 1 and rng.random() < 0.3:
            indicators.insert(0, "trust_building")
        pause = number > 0 and rng.random() < 0.4
        for indicator in indicators:
            labels: tuple[str, ...] = (indicator,)
            partners = [
                pair
                for pair in INDICATOR_PAIRS
                if indicator in pair and (set(pair) - {indicator}) <= (said | set(chosen))
            ]
            if partners and rng.random() < 0.25:
                labels = rng.choice(partners)
            moves.append(Move(indicator, labels, pause))
            said.update(labels)
            pause = False
    return moves


def write_scenario(scenario: Scenario, dialogue: Dialogue, rng: random.Random) -> None:
    """Write the whole conversation for ``scenario`` into ``dialogue``."""
    if scenario is Scenario.GROOMING:
        _write_grooming(dialogue, rng)
    elif scenario is Scenario.SMALL_TALK:
        _write_small_talk(dialogue, rng)
    else:
        _write_hard_negative(dialogue, rng, scenario)
    while len(dialogue) < MIN_MESSAGES:
        dialogue.chat(1)
    # A long grooming chat may overshoot by a few lines; real logs also just stop.
    dialogue.cut(MAX_MESSAGES)


def _write_grooming(dialogue: Dialogue, rng: random.Random) -> None:
    dialogue.open(OTHER if rng.random() < 0.8 else YOUNG)
    dialogue.chat(rng.randint(0, 2))
    # Small talk between moves: some offenders rush, others take their time.
    pace = rng.choice((0, 1, 1, 2, 3))
    for move in plan_grooming(rng):
        if len(dialogue) >= MAX_MESSAGES - 2:
            break
        if move.pause:
            dialogue.pause()
            dialogue.open(OTHER)
        if len(move.labels) > 1:
            pool = f"indicator_pairs.{'+'.join(move.labels)}"
        else:
            pool = f"indicators.{move.indicator}"
        dialogue.say(OTHER, pool, move.labels)
        if rng.random() < 0.85:
            dialogue.say(YOUNG, f"victim_replies.{move.indicator}")
        dialogue.chat(min(rng.randint(0, pace), (MAX_MESSAGES - len(dialogue)) // 3))
    dialogue.close()


def _write_small_talk(dialogue: Dialogue, rng: random.Random) -> None:
    target = rng.randint(MIN_MESSAGES, 50)
    dialogue.open(rng.randrange(2))
    while len(dialogue) < target - 1:
        dialogue.chat(1)
    dialogue.close()


def _write_hard_negative(dialogue: Dialogue, rng: random.Random, scenario: Scenario) -> None:
    # A parent or a teacher keeps it short.
    target = rng.randint(MIN_MESSAGES, 24 if scenario in ADULT_SCENARIOS else 50)
    pool = f"hard_negatives.{scenario.value}"
    dialogue.open(OTHER if rng.random() < 0.7 else YOUNG)
    dialogue.chat(rng.randint(0, 1))
    for _ in range(rng.randint(2, 5)):
        dialogue.say(OTHER, f"{pool}.initiator")
        if rng.random() < 0.9:
            dialogue.say(YOUNG, f"{pool}.responder")
        dialogue.chat(rng.randint(0, 2))
    while len(dialogue) < target - 1:
        dialogue.chat(1)
    dialogue.close()
