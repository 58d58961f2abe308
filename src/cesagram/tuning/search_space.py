"""A study's definition (``configs/hparams_search/<name>.yaml``) and its search space.

The ``hparams_search`` section names the task, the objectives, the budgets, the sampler and
pruner, and one distribution per config key to tune. A trial's sampled values become Hydra
overrides (``indicators.optimizer.lr=0.00012``, ``backbone=minilm_en``, ``strategy=lp_ft``), the
same strings ``cesagram train`` takes, so a trial is an ordinary training run of the composed
config. A key naming a config group (``backbone``, ``strategy``) chooses one of its files.

A parameter may apply only under some choices of a categorical parameter listed before it::

    strategy: {type: categorical, choices: [full, linear_probe, lp_ft]}
    strategy.C:
      {type: float, low: 1.0e-3, high: 10.0, log: true, when: {strategy: [linear_probe, lp_ft]}}

Optuna samples the search space trial by trial (define-by-run), so a trial that chose
``strategy=full`` neither samples nor overrides ``strategy.C``, a key its config does not have.
Several ``when`` keys must all hold; a single choice may be written without the list.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import optuna
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from cesagram.config import ConfigError, compose
from cesagram.evaluation.gates import Gate

Task = Literal["indicators", "risk"]
Direction = Literal["maximize", "minimize"]
Choice = bool | int | float | str | None

# Measured after training on the validation split (not logged by the trainer itself).
LANGUAGE_RECALL_GAP = "val/language_recall_gap"
LATENCY_MS = "val/latency_ms"
DERIVED_METRICS = (LANGUAGE_RECALL_GAP, LATENCY_MS)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Param(_Strict):
    # Condition key -> the choices of that categorical parameter under which this one applies.
    when: dict[str, list[Choice]] = {}

    @field_validator("when", mode="before")
    @classmethod
    def _choice_lists(cls, when: Any) -> Any:
        # `when: {strategy: lp_ft}` reads as `when: {strategy: [lp_ft]}`.
        if isinstance(when, Mapping):
            return {
                key: list(value) if isinstance(value, list | tuple) else [value]
                for key, value in when.items()
            }
        return when

    @field_validator("when")
    @classmethod
    def _some_choices(cls, when: dict[str, list[Choice]]) -> dict[str, list[Choice]]:
        empty = [key for key, choices in when.items() if not choices]
        if empty:
            raise ValueError(f"{empty[0]}: give the choices under which the parameter applies")
        return when

    @model_serializer(mode="wrap")
    def _conditions_if_any(self, handler: SerializerFunctionWrapHandler) -> Any:
        # An unconditional parameter's definition (study.yaml, the parent run) has no `when`.
        data = handler(self)
        if not self.when and isinstance(data, dict):
            data.pop("when", None)
        return data

    def applies(self, values: Mapping[str, Any]) -> bool:
        """Whether the parameter is sampled, given the values sampled before it."""
        return all(key in values and values[key] in choices for key, choices in self.when.items())


class FloatParam(_Param):
    """A float between ``low`` and ``high`` (log-uniform with ``log: true``)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> FloatParam:
        _check_bounds(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("give either log: true or a step, not both")
        return self


class IntParam(_Param):
    """An integer between ``low`` and ``high`` inclusive."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _bounds(self) -> IntParam:
        _check_bounds(self.low, self.high, self.log)
        return self


class CategoricalParam(_Param):
    """One of ``choices`` (numbers, strings, booleans or null; a config group's options)."""

    type: Literal["categorical"]
    choices: list[Choice] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


def _check_bounds(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    if log and low <= 0:
        raise ValueError(f"log: true needs low > 0, got {low}")


class Objective(_Strict):
    """A validation metric to maximise or minimise."""

    metric: str
    direction: Direction = "maximize"

    @field_validator("metric")
    @classmethod
    def _validation_metric(cls, metric: str) -> str:
        if not metric.startswith("val/"):
            raise ValueError(f"objectives are validation metrics (val/...), got {metric!r}")
        return metric


class SamplerSettings(_Strict):
    """Optuna's sampler: TPE (default), NSGA-II (multi-objective) or random search."""

    name: Literal["tpe", "nsga2", "random"] = "tpe"
    seed: int | None = 0
    n_startup_trials: int = Field(default=5, ge=0)  # tpe: random trials before modelling
    population_size: int = Field(default=8, ge=2)  # nsga2: trials per generation


class PrunerSettings(_Strict):
    """Optuna's pruner, fed the first objective after every validation epoch."""

    name: Literal["none", "median", "percentile", "hyperband", "threshold"] = "median"
    n_startup_trials: int = Field(default=2, ge=0)  # median/percentile: trials never pruned
    n_warmup_steps: int = Field(default=0, ge=0)  # epochs before a trial may be pruned
    percentile: float = Field(default=25.0, gt=0, lt=100)
    min_resource: int = Field(default=1, ge=1)  # hyperband: epochs of the smallest bracket
    reduction_factor: int = Field(default=3, ge=2)
    lower: float | None = None  # threshold: prune below this value
    upper: float | None = None  # threshold: prune above this value

    @model_validator(mode="after")
    def _threshold_bound(self) -> PrunerSettings:
        if self.name == "threshold" and self.lower is None and self.upper is None:
            raise ValueError("pruner threshold needs lower or upper")
        return self


class HeartbeatSettings(_Strict):
    """How a killed worker's running trial is noticed: no heartbeat for ``grace_s`` -> FAIL."""

    interval_s: int = Field(default=30, ge=1)
    grace_s: int = Field(default=90, ge=1)
    max_retry: int | None = Field(default=1, ge=0)  # re-runs of a killed trial's parameters


class SearchSettings(_Strict):
    """The ``hparams_search`` section: what to tune, towards what, within which budget."""

    study_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: Task
    objectives: list[Objective] = Field(min_length=1)
    n_trials: int = Field(ge=1)
    timeout_s: float | None = Field(default=None, gt=0)
    storage: str | None = None
    sampler: SamplerSettings = SamplerSettings()
    pruner: PrunerSettings = PrunerSettings()
    heartbeat: HeartbeatSettings = HeartbeatSettings()
    gates: list[Gate] = []
    fixed: dict[str, Any] = {}
    params: dict[str, Param] = Field(min_length=1)
    backbone_dirs: dict[str, str] = {}
    export_dir: str = "experiments"
    experiment_config_dir: str | None = None
    trials_dir: str = "outputs/tuning"
    keep_trial_files: bool = False
    max_failures: int = Field(default=3, ge=1)

    @field_validator("objectives")
    @classmethod
    def _quality_first(cls, objectives: list[Objective]) -> list[Objective]:
        metrics = [objective.metric for objective in objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"objectives repeat a metric: {metrics}")
        if metrics[0] in DERIVED_METRICS:
            raise ValueError(
                "the first objective is the model's quality, a metric logged every epoch; "
                f"got {metrics[0]}"
            )
        return objectives

    @field_validator("pruner")
    @classmethod
    def _single_objective_pruning(
        cls, pruner: PrunerSettings, info: ValidationInfo
    ) -> PrunerSettings:
        if len(info.data.get("objectives") or []) > 1 and pruner.name != "none":
            raise ValueError(
                "multi-objective studies cannot prune (Optuna's Trial.report takes one value); "
                "set pruner.name: none"
            )
        return pruner

    @field_validator("params")
    @classmethod
    def _tuned_or_fixed(cls, params: dict[str, Param], info: ValidationInfo) -> dict[str, Param]:
        overlap = set(info.data.get("fixed") or {}) & set(params)
        if overlap:
            raise ValueError(f"keys both fixed and tuned: {sorted(overlap)}")
        return params

    @field_validator("params")
    @classmethod
    def _conditions_name_earlier_choices(cls, params: dict[str, Param]) -> dict[str, Param]:
        # Define-by-run samples in the listed order: a condition must already have its value.
        earlier: dict[str, Param] = {}
        for name, param in params.items():
            for key, choices in param.when.items():
                condition = earlier.get(key)
                if condition is None:
                    where = "not a parameter of this study"
                    if key == name:
                        where = "the parameter itself"
                    elif key in params:
                        where = "listed after it"
                    _raise_at(
                        name,
                        f"{key!r} is {where}; `when` names categorical parameters listed "
                        f"before {name!r}",
                    )
                if not isinstance(condition, CategoricalParam):
                    _raise_at(
                        name,
                        f"{key!r} is a {condition.type} parameter; `when` names categorical "
                        "parameters",
                    )
                unknown = [choice for choice in choices if choice not in condition.choices]
                if unknown:
                    _raise_at(name, f"{key}: {unknown} not among its choices {condition.choices}")
            earlier[name] = param
        return params

    @property
    def directions(self) -> list[Direction]:
        """Optuna's study directions, one per objective."""
        return [objective.direction for objective in self.objectives]

    @property
    def multi_objective(self) -> bool:
        """Whether the study looks for a Pareto front."""
        return len(self.objectives) > 1

    def derived_metrics(self) -> list[str]:
        """The metrics measured after training that an objective or a gate needs."""
        wanted = {objective.metric for objective in self.objectives}
        wanted |= {gate.metric for gate in self.gates}
        return [metric for metric in DERIVED_METRICS if metric in wanted]


def _raise_at(name: str, message: str) -> NoReturn:
    # Raised inside the `params` validator, the error's location is params.<name>.when.
    error = PydanticCustomError("condition", "{message}", {"message": message})
    details = InitErrorDetails(type=error, loc=(name, "when"), input=None)
    raise ValidationError.from_exception_data("SearchSettings", [details])


def suggest(trial: optuna.trial.BaseTrial, params: Mapping[str, Param]) -> dict[str, Any]:
    """Sample, in order, every parameter of the search space whose ``when`` holds."""
    values: dict[str, Any] = {}
    for name, param in params.items():
        if not param.applies(values):
            continue
        if isinstance(param, FloatParam):
            values[name] = trial.suggest_float(
                name, param.low, param.high, log=param.log, step=param.step
            )
        elif isinstance(param, IntParam):
            values[name] = trial.suggest_int(
                name, param.low, param.high, log=param.log, step=param.step
            )
        else:
            values[name] = trial.suggest_categorical(name, param.choices)
    return values


_BARE = re.compile(r"[A-Za-z_][\w./-]*")
_RESERVED = {"true", "false", "null", "none", "nan", "inf"}


def hydra_value(value: Any) -> str:
    """``value`` as Hydra's override grammar reads it back unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot pass the non-finite value {value} as an override")
        return repr(value)
    text = str(value)
    if _BARE.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    escaped = text.replace("'", "\\'")
    return f"'{escaped}'"


def overrides(values: Mapping[str, Any]) -> list[str]:
    """Hydra override strings (``key=value``) for sampled or fixed values."""
    return [f"{key}={hydra_value(value)}" for key, value in values.items()]


def override_key(override: str) -> str:
    """The key an override string sets (``+a.b=1`` -> ``a.b``, ``~a`` -> ``a``)."""
    key = override.split("=", 1)[0]
    return key.lstrip("+~")


def check_keys(keys: list[str], composed: Mapping[str, Any], config_dir: Path) -> None:
    """Every tuned or fixed key must be a config group or an existing config value."""
    for key in keys:
        if not (config_dir / key).is_dir() and not _has_key(composed, key):
            raise ConfigError(
                f"hparams_search: {key!r} is neither a config group in {config_dir} nor a key "
                "of the composed config (see `cesagram config`)"
            )


def _has_key(composed: Mapping[str, Any], key: str) -> bool:
    value: Any = composed
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    return True


def check_conditional_keys(
    params: Mapping[str, Param], base_overrides: list[str], config_dir: Path
) -> None:
    """Every conditional key must exist in the config composed under each of its conditions.

    ``strategy.C`` with ``when: {strategy: [linear_probe, lp_ft]}`` is checked in the configs
    composed with ``strategy=linear_probe`` and with ``strategy=lp_ft``.
    """
    composed_under: dict[tuple[str, ...], dict[str, Any]] = {}
    for name, param in params.items():
        if not param.when:
            continue
        for combination in itertools.product(*param.when.values()):
            chosen = overrides(dict(zip(param.when, combination, strict=True)))
            key = tuple(chosen)
            if key not in composed_under:
                composed_under[key] = compose([*base_overrides, *chosen], config_dir)
            if not _has_key(composed_under[key], name):
                raise ConfigError(
                    f"hparams_search.params.{name}: not a key of the config composed with "
                    f"{' '.join(chosen)} (see `cesagram config {' '.join(chosen)}`); "
                    "narrow its `when`"
                )


def check_group_choices(params: Mapping[str, Param], config_dir: Path) -> None:
    """A categorical parameter over a config group chooses among that group's files."""
    for name, param in params.items():
        if not isinstance(param, CategoricalParam) or not is_group(name, config_dir):
            continue
        options = sorted(path.stem for path in (config_dir / name).glob("*.yaml"))
        missing = [choice for choice in param.choices if str(choice) not in options]
        if missing:
            raise ConfigError(
                f"hparams_search.params.{name}: {missing} not among the options of config "
                f"group {name} ({', '.join(options)} in {config_dir / name})"
            )


def is_group(key: str, config_dir: Path) -> bool:
    """Whether ``key`` names a config group (``backbone``) rather than a value."""
    return "." not in key and (config_dir / key).is_dir()
