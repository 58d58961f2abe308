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
