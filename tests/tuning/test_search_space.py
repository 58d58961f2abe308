from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from cesagram.config import ConfigError, compose, validated
from cesagram.tuning.export import experiment_config, nested
from cesagram.tuning.search_space import (
    SearchSettings,
    check_conditional_keys,
    check_group_choices,
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


STRATEGY_PARAMS: dict[str, Any] = {
    "strategy": {"type": "categorical", "choices": ["full", "linear_probe", "lp_ft"]},
    "strategy.C": {
        "type": "float",
        "low": 1e-3,
        "high": 10.0,
        "log": True,
        "when": {"strategy": ["linear_probe", "lp_ft"]},
    },
    "strategy.learning_rate": {
        "type": "float",
        "low": 1e-6,
        "high": 1e-4,
        "log": True,
        "when": {"strategy": "lp_ft"},  # one choice needs no list
    },
}


@pytest.mark.parametrize(
    ("fixed", "applied"),
    [
        ({"strategy": "full"}, ["strategy=full"]),
        (
            {"strategy": "linear_probe", "strategy.C": 0.5},
            ["strategy=linear_probe", "strategy.C=0.5"],
        ),
        (
            {"strategy": "lp_ft", "strategy.C": 0.5, "strategy.learning_rate": 2e-05},
            ["strategy=lp_ft", "strategy.C=0.5", "strategy.learning_rate=2e-05"],
        ),
    ],
)
def test_conditional_parameters_apply_only_under_their_choices(
    fixed: dict[str, Any], applied: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    settings = validated(SearchSettings, _settings(params=STRATEGY_PARAMS), origin="")
    assert settings.params["strategy.learning_rate"].when == {"strategy": ["lp_ft"]}
    # A FixedTrial refuses a parameter it was not given: only the applicable ones are asked.
    values = suggest(optuna.trial.FixedTrial(fixed), settings.params)
    assert overrides(values) == applied
    composed = compose(applied)  # `strategy=...` chooses the group's file
    assert composed["strategy"]["name"] == fixed["strategy"]
    assert composed["strategy"].get("C") == fixed.get("strategy.C")
    # The study's definition (study.yaml, the parent run) keeps `when` only where it is set.
    dumped = settings.model_dump(mode="json")["params"]
    assert "when" not in dumped["strategy"] and dumped["strategy.C"]["when"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {
                **STRATEGY_PARAMS,
                "strategy.C": {**STRATEGY_PARAMS["strategy.C"], "when": {"strategy": ["probe"]}},
            },
            r"^hparams_search.params.strategy.C.when: strategy: \['probe'\] not among its choices",
        ),
        (
            {"strategy.C": STRATEGY_PARAMS["strategy.C"], "strategy": STRATEGY_PARAMS["strategy"]},
            r"^hparams_search.params.strategy.C.when: 'strategy' is listed after it; `when` names "
            r"categorical parameters listed before 'strategy.C'",
        ),
        (
            {"strategy.C": STRATEGY_PARAMS["strategy.C"]},
            r"^hparams_search.params.strategy.C.when: 'strategy' is not a parameter of this study",
        ),
        (
            {
                "indicators.dropout": {"type": "float", "low": 0.0, "high": 0.3},
                "strategy.C": {
                    **STRATEGY_PARAMS["strategy.C"],
                    "when": {"indicators.dropout": [0.1]},
                },
            },
            r"^hparams_search.params.strategy.C.when: 'indicators.dropout' is a float parameter",
        ),
        (
            {
                **STRATEGY_PARAMS,
                "strategy.C": {**STRATEGY_PARAMS["strategy.C"], "when": {"strategy": []}},
            },
            r"^hparams_search.params.strategy.C.float.when: .*strategy: give the choices",
        ),
    ],
)
def test_bad_conditions_name_the_parameter(params: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        validated(SearchSettings, _settings(params=params), origin="hparams_search.")


def test_conditional_keys_are_checked_in_the_configs_their_conditions_choose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    config_dir = ROOT / "configs"
    settings = validated(SearchSettings, _settings(params=STRATEGY_PARAMS), origin="")
    check_conditional_keys(settings.params, [], config_dir)
    check_group_choices(settings.params, config_dir)
    # full has no C: a condition that includes it is refused before any trial runs.
    too_wide = {
        **STRATEGY_PARAMS,
        "strategy.C": {**STRATEGY_PARAMS["strategy.C"], "when": {"strategy": ["full", "lp_ft"]}},
    }
    wide = validated(SearchSettings, _settings(params=too_wide), origin="")
    with pytest.raises(
        ConfigError,
        match=r"hparams_search.params.strategy.C: not a key of the config composed with "
        r"strategy=full",
    ):
        check_conditional_keys(wide.params, [], config_dir)
    misspelt = {"strategy": {"type": "categorical", "choices": ["full", "lp-ft"]}}
    with pytest.raises(
        ConfigError,
        match=r"hparams_search.params.strategy: \['lp-ft'\] not among the options of config group "
        r"strategy \(full, linear_probe, lp_ft in",
    ):
        check_group_choices(
            validated(SearchSettings, _settings(params=misspelt), origin="").params, config_dir
        )
