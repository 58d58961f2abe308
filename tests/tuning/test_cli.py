from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cesagram.cli import app
from tests.tiny import ROOT


@pytest.fixture(autouse=True)
def _at_project_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def test_tune_without_a_search_space_says_how_to_choose_one() -> None:
    result = CliRunner().invoke(app, ["tune", "backbone=tiny"])
    assert result.exit_code == 2, result.output
    assert "no search space chosen: add hparams_search=NAME" in result.output
    assert "indicators_quick" in result.output and "Traceback" not in result.output


def test_tune_names_a_bad_search_space_key() -> None:
    result = CliRunner().invoke(
        app, ["tune", "hparams_search=indicators_quick", "hparams_search.n_trials=0"]
    )
    assert result.exit_code == 2, result.output
    assert "hparams_search.n_trials: Input should be greater than or equal to 1" in result.output
