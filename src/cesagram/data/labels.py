"""Explicit mapping of source label values to the conversation-level ``risk`` label.

Sources spell labels many ways (``predator``/``non-predator``, ``1``/``0``, ``true``/``false``).
Only values the map names are accepted; anything else is rejected, never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_RISK_LABELS: Mapping[str, int] = {
    "predator": 1,
    "non-predator": 0,
    "grooming": 1,
    "non-grooming": 0,
    "1": 1,
    "0": 0,
    "true": 1,
    "false": 0,
}


class UnknownLabelError(ValueError):
    """A label value that the label map does not name."""


class RiskLabelMap:
    """Maps raw label values (case- and space-insensitive) to risk 0/1."""

    def __init__(self, mapping: Mapping[str, int] = DEFAULT_RISK_LABELS) -> None:
        for value, risk in mapping.items():
            if risk not in (0, 1):
                raise ValueError(f"label {value!r} maps to {risk!r}; risk labels must be 0 or 1")
        self.mapping = {_normalise(value): risk for value, risk in mapping.items()}

    @classmethod
    def parse(cls, spec: str) -> RiskLabelMap:
        """Build a map from ``"predator=1,non-predator=0"`` (the command-line form)."""
        mapping: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            value, separator, risk = item.rpartition("=")
            if not separator or risk.strip() not in ("0", "1") or not value.strip():
                raise ValueError(
                    f"label map entry {item!r}: expected VALUE=0 or VALUE=1, "
                    "e.g. --label-map 'predator=1,non-predator=0'"
                )
            mapping[value] = int(risk)
        if not mapping:
            raise ValueError("label map is empty; expected e.g. 'predator=1,non-predator=0'")
        return cls(mapping)

    def risk(self, value: object) -> int:
        """The risk label of ``value``; raises ``UnknownLabelError`` for unmapped values."""
        if isinstance(value, bool):
            value = str(value)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        key = _normalise(str(value)) if value is not None else ""
        if key not in self.mapping:
            raise UnknownLabelError(
                f"unknown label {value!r}; expected one of {sorted(self.mapping)} "
                "(map other values explicitly with --label-map VALUE=0|1)"
            )
        return self.mapping[key]


def _normalise(value: str) -> str:
    return value.strip().lower()
