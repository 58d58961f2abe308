from __future__ import annotations

from pathlib import Path

import pytest

from cesagram.config import ConfigError, compose, load_params, section
from cesagram.data.sources import DataParams, SyntheticSource, TabularSource

ROOT = Path(__file__).resolve().parents[1]
DATA_CONFIGS = sorted(path.stem for path in (ROOT / "configs" / "data").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _at_project_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def test_params_yaml_is_the_composed_default_config() -> None:
    # params.yaml is generated from configs/; a stale copy would make dvc repro and
    # `cesagram train` disagree.
    assert load_params(ROOT / "params.yaml") == compose([]), (
        "params.yaml is stale: run `cesagram config > params.yaml`"
    )


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_data_config_composes_and_validates(name: str) -> None:
    params = compose([f"data={name}"])
    data = section(params, "data", DataParams, Path(f"configs/data/{name}.yaml"))
    assert isinstance(data.sources["synthetic"], SyntheticSource)


def test_partner_example_adds_its_source_to_the_synthetic_one() -> None:
    data = section(compose(["data=partner_csv"]), "data", DataParams, Path("x"))
    assert list(data.sources) == ["synthetic", "partner"]
    partner = data.sources["partner"]
    assert isinstance(partner, TabularSource) and partner.label_map == {
        "predator": 1,
        "non-predator": 0,
    }


def test_overrides_reach_the_params() -> None:
    params = compose(["data.sources.synthetic.conversations=50", "data.split.seed=3"])
    data = section(params, "data", DataParams, Path("x"))
    assert data.split.seed == 3
    assert data.sources["synthetic"].conversations == 50  # type: ignore[union-attr]


def test_invalid_values_name_the_file_and_key() -> None:
    params = compose(["data.split.group_authors=everyone"])
    with pytest.raises(ConfigError) as raised:
        section(params, "data", DataParams, Path("params.yaml"))
    assert str(raised.value).startswith("params.yaml: data.split.group_authors: Input should be")


def test_unknown_source_format_is_named() -> None:
    params = compose(["data.sources.synthetic.format=xls"])
    with pytest.raises(ConfigError, match=r"params.yaml: data.sources.synthetic: Input tag 'xls'"):
        section(params, "data", DataParams, Path("params.yaml"))


def test_unknown_config_group_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nosuch"):
        compose(["data=nosuch"])


GROUPS = sorted(
    path.name for path in (ROOT / "configs").iterdir() if path.is_dir() and any(path.glob("*.yaml"))
)


@pytest.mark.parametrize(
    "override",
    [
        f"{group}={option.stem}" if group != "model" else f"model@indicators={option.stem}"
        for group in GROUPS
        for option in sorted((ROOT / "configs" / group).glob("*.yaml"))
    ],
)
def test_every_option_of_every_config_group_composes(override: str) -> None:
    extra = ["backbone.name_or_path=/some/folder"] if override == "backbone=hf" else []
    params = compose([override, *extra])
    assert {"data", "backbone", "indicators", "risk", "trainer", "logger", "paths"} <= set(params)
    assert params["trainer"]["_target_"] == "lightning.Trainer"
    assert params["indicators"]["optimizer"]["_partial_"] is True


def test_trainer_variants_say_what_they_are() -> None:
    assert compose(["trainer=gpu"])["trainer"]["precision"] == "bf16-mixed"
    ddp = compose(["trainer=ddp"])["trainer"]
    assert (ddp["strategy"], ddp["accelerator"]) == ("ddp", "gpu")


def test_experiment_overrides_groups_and_values() -> None:
    params = compose(["experiment=minilm_en_quick"])
    assert params["backbone"]["name"] == "minilm_en"
    assert params["indicators"]["max_examples"] == 6000
