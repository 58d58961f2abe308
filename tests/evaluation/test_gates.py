from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from cesagram.evaluation.gates import Gate, check_gates, describe_failures

GATES = [
    Gate(name="quality", metric="test/auprc", min=0.8),
    Gate(
        name="language_equalized_odds",
        metric="fairness/language/equalized_odds_difference",
        max=0.3,
    ),
]


def test_all_gates_pass_with_their_margins() -> None:
    result = check_gates(
        {"test/auprc": 0.9, "fairness/language/equalized_odds_difference": 0.1}, GATES
    )
    assert result["passed"] and result["failed"] == []
    margins = {row["gate"]: row["margin"] for row in result["results"]}
    assert margins["quality"] == pytest.approx(0.1)  # 0.9 - 0.8
    assert margins["language_equalized_odds"] == pytest.approx(0.2)  # 0.3 - 0.1
    assert describe_failures(result) == []


def test_a_value_exactly_at_the_limit_passes() -> None:
    result = check_gates(
        {"test/auprc": 0.8, "fairness/language/equalized_odds_difference": 0.3}, GATES
    )
    assert result["passed"]


def test_failed_gates_say_which_and_by_how_much() -> None:
    result = check_gates(
        {"test/auprc": 0.75, "fairness/language/equalized_odds_difference": 0.42}, GATES
    )
    assert not result["passed"]
    assert result["failed"] == ["quality", "language_equalized_odds"]
    lines = describe_failures(result)
    assert lines[0] == "quality: test/auprc = 0.7500, needs >= 0.8000 (missed by 0.0500)"
    assert lines[1].endswith("needs <= 0.3000 (missed by 0.1200)")


def test_an_unmeasured_or_nan_value_fails() -> None:
    result = check_gates({"test/auprc": math.nan}, GATES)
    assert result["failed"] == ["quality", "language_equalized_odds"]
    assert describe_failures(result)[0] == "quality: test/auprc was not measured"


def test_no_gates_means_passed() -> None:
    assert check_gates({}, [])["passed"]


def test_a_gate_needs_exactly_one_bound() -> None:
    with pytest.raises(ValidationError, match="exactly one of min or max"):
        Gate(name="both", metric="x", min=0.1, max=0.2)
    with pytest.raises(ValidationError, match="exactly one of min or max"):
        Gate(name="neither", metric="x")
