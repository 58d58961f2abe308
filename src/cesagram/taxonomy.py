"""The message-level grooming-indicator taxonomy and the author roles.

The indicators follow Olson et al. (2007) luring communication theory, Lorenzo-Dus et al. (2016)
and O'Connell (2003); see DOMAIN.md. Their order is the column order of every label matrix,
so it must never change silently: add new indicators at the end and bump the schema version.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class Indicator:
    """One grooming indicator: a stable id, a display name and what it covers."""

    id: str
    name: str
    description: str


INDICATORS: tuple[Indicator, ...] = (
    Indicator("access", "Gathering personal information", "age, school, town, contact details"),
    Indicator("risk_assessment", "Checking supervision", "are parents home, who reads the phone"),
    Indicator("trust_building", "Deceptive trust and flattery", "mature for your age, romance"),
    Indicator("isolation", "Wedge from family and friends", "they don't understand you like I do"),
    Indicator("secrecy", "Keeping it secret", "don't tell anyone, delete this chat"),
    Indicator("desensitisation", "Sexual topics introduced", "category level only"),
    Indicator("image_request", "Asks for photos or video", "send me a pic, turn on your camera"),
    Indicator("platform_switch", "Move to a private channel", "add me on another app"),
    Indicator("gifts_offers", "Gifts, money, game credits", "I can buy you skins"),
    Indicator("meeting", "Approach and offline contact", "let's meet, I can pick you up"),
)

INDICATOR_IDS: tuple[str, ...] = tuple(indicator.id for indicator in INDICATORS)

# Stands for anything beyond category-level sexual content (the content rule in DOMAIN.md).
REDACTED_SEXUAL = "[REDACTED-SEXUAL]"


class AuthorRole(StrEnum):
    """Who wrote a message, when the source says so."""

    OFFENDER = "offender"
    VICTIM = "victim"
    DECOY = "decoy"
    PEER = "peer"
    ADULT = "adult"
    UNKNOWN = "unknown"
