"""Release gates: the minimum a model must reach before it may become the champion.

Gates live in ``params.yaml`` (``evaluation.gates.<task>``), each naming a value of the
evaluation summary (the flat ``metrics/eval_<task>.json`` keys) and a ``min`` or ``max``::

    - {name: quality, metric: test/auprc, min: 0.8}
    - {name: language_equalized_odds, metric: fairness/language/equalized_odds_difference, max: 0.3}

A gate whose value is missing or NaN fails: a model is not released on numbers nobody measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator


class Gate(BaseModel):
    """One gate: ``metric`` must be at least ``min`` or at most ``max``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    metric: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> Gate:
        if (self.min is None) == (self.max is None):
            raise ValueError(f"gate {self.name!r}: give exactly one of min or max")
        return self

    @property
    def kind(self) -> Literal["min", "max"]:
        """Whether the value must stay above (min) or below (max) the limit."""
        return "min" if self.min is not None else "max"

    @property
    def limit(self) -> float:
        """The bound."""
        bound = self.min if self.min is not None else self.max
        assert bound is not None
        return bound


def check_gates(summary: Mapping[str, float], gates: Sequence[Gate]) -> dict[str, Any]:
    """Each gate's value, limit, verdict and margin (positive = room to spare).

    Returns ``{"passed": all passed, "results": [...], "failed": [names]}``, JSON-ready.
    """
    results = []
    for gate in gates:
        value = summary.get(gate.metric)
        measured = value is not None and math.isfinite(value)
        if not measured:
            margin = float("nan")
            passed = False
        else:
            assert value is not None
            margin = value - gate.limit if gate.kind == "min" else gate.limit - value
            passed = margin >= 0
        results.append(
            {
                "gate": gate.name,
                "metric": gate.metric,
                "value": float(value) if measured and value is not None else float("nan"),
                "limit": gate.limit,
                "kind": gate.kind,
                "passed": passed,
                "margin": margin,
            }
        )
    failed = [result["gate"] for result in results if not result["passed"]]
    return {"passed": not failed, "results": results, "failed": failed}


def describe_failures(gate_results: Mapping[str, Any]) -> list[str]:
    """One line per failed gate: which, the value, the limit and by how much it missed."""
    lines = []
    for result in gate_results.get("results", []):
        if result["passed"]:
            continue
        if not math.isfinite(result["value"]):
            lines.append(f"{result['gate']}: {result['metric']} was not measured")
            continue
        relation = ">=" if result["kind"] == "min" else "<="
        lines.append(
            f"{result['gate']}: {result['metric']} = {result['value']:.4f}, needs "
            f"{relation} {result['limit']:.4f} (missed by {-result['margin']:.4f})"
        )
    return lines
