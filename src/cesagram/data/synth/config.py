"""What the synthetic corpus should look like: the one configuration object and its checks."""

from __future__ import annotations

from dataclasses import dataclass

# The CESAGRAM pilot languages (Belgium nl/fr, Greece el, Italy it, Lithuania lt) plus en, de, es.
# Each has a phrasebook in phrasebooks/<code>.yaml.
SUPPORTED_LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "nl", "es", "it", "el", "lt")

_FRACTIONS = ("grooming_fraction", "code_switch_fraction", "noise", "offender_reuse")


@dataclass(frozen=True)
class SynthConfig:
    """How many synthetic conversations to write, in which languages, and how they should look.

    Attributes:
        conversations: how many conversations to generate; at least 1.
        languages: the main languages, each written from its own phrasebook. Conversations are
            dealt out round-robin in this order, so every language gets an equal share (within
            one conversation) and per-language metrics compare like with like. Lists are accepted
            (Hydra hands over lists) and stored as a tuple.
        seed: the only source of randomness; the same config always yields the same corpus.
        grooming_fraction: probability that a conversation is grooming (risk = 1). The rest are
            benign (risk = 0): half ordinary small talk, half hard negatives.
        code_switch_fraction: probability that a conversation mixes in lines written in a second
            language (nl/fr in Belgium, el/en, lt/en, ...); its ``language`` stays the main one.
        noise: strength of the writing noise, 0 (clean phrasebook text) to 1: typos, slang,
            emoji, casing, missing accents, Greeklish. Noise changes text only, never labels.
        offender_reuse: probability that a grooming conversation reuses the username of an
            offender from an earlier conversation (any language), as real offenders recur.
    """

    conversations: int
    languages: tuple[str, ...] = SUPPORTED_LANGUAGES
    seed: int = 0
    grooming_fraction: float = 0.35
    code_switch_fraction: float = 0.1
    noise: float = 0.15
    offender_reuse: float = 0.2

    def __post_init__(self) -> None:
        # A tuple keeps the frozen config hashable when callers pass a list.
        object.__setattr__(self, "languages", tuple(self.languages))
        # bool is an int subclass: True conversations is a mistake, not a count of one.
        if (
            not isinstance(self.conversations, int)
            or isinstance(self.conversations, bool)
            or self.conversations < 1
        ):
            raise ValueError(
                f"SynthConfig.conversations must be a whole number of at least 1; "
                f"got {self.conversations!r}"
            )
        if not self.languages:
            raise ValueError(
                "SynthConfig.languages is empty; list at least one of "
                f"{', '.join(SUPPORTED_LANGUAGES)}"
            )
        unknown = [language for language in self.languages if language not in SUPPORTED_LANGUAGES]
        if unknown:
            raise ValueError(
                f"SynthConfig.languages has unsupported language(s) {unknown}; "
                f"choose from {', '.join(SUPPORTED_LANGUAGES)}"
            )
        repeated = sorted({lang for lang in self.languages if self.languages.count(lang) > 1})
        if repeated:
            raise ValueError(
                f"SynthConfig.languages lists {repeated} more than once; list each language once"
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"SynthConfig.seed must be an integer; got {self.seed!r}")
        for name in _FRACTIONS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(
                    f"SynthConfig.{name} must be a number between 0 and 1; got {value!r}"
                )
