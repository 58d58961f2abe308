from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from cesagram.config import ConfigError, compose, validated
from cesagram.tuning.export import experiment_config, nested
from cesagram.tuning.search_space import (
    SearchSettings,
    check_keys,
    hydra_value,
    override_key,
    overrides,
    suggest,
)
from cesagram.tuning.study import load_settings
from tests.tiny import ROOT

SHIPPED = sorted(path.stem for path in (ROOT / "configs" / "hparams_search").glob("*.yaml"))


def _settings(**changes: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "study_name": "unit",
        "task": "indicators",
        "objectives": [{"metric": "val/macro_f1", "direction": "maximize"}],
        "n_trials": 2,
        "params": {"indicators.dropout": {"type": "float", "low": 0.0, "high": 0.3}},
    }
    settings.update(changes)
    return settings


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_search_space_validates(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    settings, composed = load_settings([f"hparams_search={name}"])
    assert settings.study_name == name
    assert settings.trials_dir == f"{composed['paths']['output_dir']}/tuning"


def test_without_a_search_space_the_error_says_which_to_choose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match=r"no search space chosen: add hparams_search=NAME"):
        load_settings([])


def test_a_bad_parameter_type_names_the_key() -> None:
    bad = _settings(params={"indicators.dropout": {"type": "floaty", "low": 0, "high": 1}})
    with pytest.raises(ConfigError) as raised:
        validated(SearchSettings, bad, origin="hparams_search.")
    message = str(raised.value)
    assert message.startswith("hparams_search.params.indicators.dropout: Input tag 'floaty'")
    assert "'float', 'int', 'categorical'" in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {
                "params": {
                    "indicators.optimizer.lr": {
                        "type": "float",
                        "low": 0,
                        "high": 1e-3,
                        "log": True,
                    }
                }
            },
            r"params.indicators.optimizer.lr.*log: true needs low > 0",
        ),
        (
            {"params": {"indicators.batch_size": {"type": "int", "low": 32, "high": 8}}},
            r"params.indicators.batch_size.*low \(32\) must not exceed high \(8\)",
        ),
        (
            {
                "objectives": [
                    {"metric": "val/macro_f1"},
                    {"metric": "val/latency_ms", "direction": "minimize"},
                ],
                "pruner": {"name": "median"},
            },
            r"hparams_search.pruner: .*multi-objective studies cannot prune",
        ),
        ({"objectives": [{"metric": "test/macro_f1"}]}, r"objectives.0.metric: .*val/"),
        ({"sampler": {"name": "grid"}}, r"sampler.name: Input should be 'tpe', 'nsga2'"),
    ],
)
def test_invalid_settings_are_named(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        validated(SearchSettings, _settings(**changes), origin="hparams_search.")


def test_unknown_keys_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    composed = compose([])
    check_keys(["indicators.dropout", "backbone"], composed, ROOT / "configs")
    with pytest.raises(ConfigError, match=r"'indicators.dropuot' is neither a config group"):
        check_keys(["indicators.dropuot"], composed, ROOT / "configs")


def test_suggestions_become_overrides_hydra_reads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    settings = validated(
        SearchSettings,
        _settings(
            params={
                "indicators.optimizer.lr": {
                    "type": "float",
                    "low": 1e-6,
                    "high": 1e-3,
                    "log": True,
                },
                "indicators.context_messages": {"type": "int", "low": 0, "high": 4},
                "indicators.freeze_word_embeddings": {
                    "type": "categorical",
                    "choices": [True, False],
                },
                "backbone": {"type": "categorical", "choices": ["tiny", "minilm_en"]},
            }
        ),
        origin="",
    )
    fixed = {
        "indicators.optimizer.lr": 1.5e-05,
        "indicators.context_messages": 3,
        "indicators.freeze_word_embeddings": False,
        "backbone": "minilm_en",
    }
    values = suggest(optuna.trial.FixedTrial(fixed), settings.params)
    assert values == fixed
    composed = compose(overrides(values))
    assert composed["indicators"]["optimizer"]["lr"] == 1.5e-05
    assert composed["indicators"]["context_messages"] == 3
    assert composed["indicators"]["freeze_word_embeddings"] is False
    assert composed["backbone"]["name"] == "minilm_en"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (None, "null"),
        (3, "3"),
        (1e-05, "1e-05"),
        ("true", "'true'"),
        ("a b", "'a b'"),
        ("it's", "'it\\'s'"),
        ("minilm_en", "minilm_en"),
    ],
)
def test_hydra_values(value: Any, text: str) -> None:
    assert hydra_value(value) == text


def test_override_keys() -> None:
    assert override_key("++trainer.max_epochs=3") == "trainer.max_epochs"
    assert override_key("backbone=tiny") == "backbone"


def test_exported_experiment_config_nests_keys_and_overrides_groups(tmp_path: Path) -> None:
    (tmp_path / "backbone").mkdir()
    text = experiment_config(
        {"trainer.max_epochs": 2, "indicators.optimizer.lr": 0.001, "backbone": "tiny"},
        tmp_path,
        ["a header"],
    )
    assert text.startswith("# @package _global_\n# a header\n")
    assert "defaults:\n- override /backbone: tiny\n" in text
    assert nested({"a.b.c": 1, "a.d": 2}) == {"a": {"b": {"c": 1}, "d": 2}}
