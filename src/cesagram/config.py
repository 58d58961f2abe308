"""Loading ``params.yaml`` (the composed Hydra config) and validating its sections.

Errors name the file and the dotted key that is wrong, so a user knows what to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

DEFAULT_PARAMS = Path("params.yaml")

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or holds invalid values."""


def load_params(path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read a params file as plain data."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: file not found (run from the project root?)") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return loaded


def section(params: dict[str, Any], key: str, model: type[ModelT], path: Path) -> ModelT:
    """Validate ``params[key]`` (a dotted key) against ``model``."""
    value: Any = params
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(f"{path}: missing key {key!r}")
        value = value[part]
    return validated(model, value, origin=f"{path}: {key}.")


def validated(model: type[ModelT], value: Any, *, origin: str) -> ModelT:
    """Validate ``value`` against ``model``; errors start with ``origin`` (where it came from)."""
    try:
        return model.model_validate(value)
    except ValidationError as error:
        problems = "; ".join(
            f"{origin}{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}"
            for problem in error.errors(include_url=False, include_input=False)
        )
        raise ConfigError(problems) from error


CONFIG_DIR = Path("configs")


def compose(overrides: list[str], config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """Compose ``configs/config.yaml`` with Hydra overrides, as ``dvc exp run -S`` does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    if not (config_dir / "config.yaml").exists():
        raise ConfigError(f"{config_dir / 'config.yaml'}: not found (run from the project root?)")
    try:
        with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
            composed = hydra_compose(config_name="config", overrides=overrides)
    except HydraException as error:
        raise ConfigError(f"{config_dir}: {error}") from error
    container = OmegaConf.to_container(composed, resolve=True)
    assert isinstance(container, dict)
    return {str(key): value for key, value in container.items()}


def dump_params(params: dict[str, Any]) -> str:
    """``params`` as YAML in the layout of params.yaml."""
    return yaml.safe_dump(params, sort_keys=False, allow_unicode=True)


def run_config(params: Path | None, overrides: list[str]) -> Any:
    """The configuration of a run, as an OmegaConf ``DictConfig``.

    With ``params`` (what DVC stages pass) the composed ``params.yaml`` is the config; otherwise
    ``configs/`` is composed with the Hydra ``overrides``. Mixing both would silently ignore the
    group overrides, so it is an error.
    """
    from omegaconf import OmegaConf

    if params is not None and overrides:
        raise ConfigError(
            f"give either --params {params} or overrides {overrides}, not both: params.yaml is "
            "already composed (re-compose it with `cesagram config OVERRIDES > params.yaml`)"
        )
    values = load_params(params) if params is not None else compose(overrides)
    return OmegaConf.create(values)
