"""The seeded synthetic multilingual corpus: the platform's embedded default data.

Labelled chat conversations in en, de, fr, nl, es, it, el and lt, written from per-language
phrasebooks (``phrasebooks/<code>.yaml``): grooming conversations whose offender messages carry
indicator labels, benign small talk, and hard negatives that look like indicators but are not.
All text follows the content rule in DOMAIN.md: nothing sexually explicit, ever;
``desensitisation`` stays at category level with ``[REDACTED-SEXUAL]`` for anything beyond it.

    >>> from cesagram.data.synth import SynthConfig, generate_corpus
    >>> corpus = list(generate_corpus(SynthConfig(conversations=16, seed=7)))
"""

from cesagram.data.synth.config import SUPPORTED_LANGUAGES, SynthConfig
from cesagram.data.synth.generator import (
    SOURCE,
    SyntheticConversation,
    generate_annotated_corpus,
    generate_corpus,
)
from cesagram.data.synth.scenarios import HARD_NEGATIVES, Scenario

__all__ = [
    "HARD_NEGATIVES",
    "SOURCE",
    "SUPPORTED_LANGUAGES",
    "Scenario",
    "SynthConfig",
    "SyntheticConversation",
    "generate_annotated_corpus",
    "generate_corpus",
]
