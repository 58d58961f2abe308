"""The ``evaluation`` section of the configuration (``configs/evaluation/default.yaml``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from cesagram.evaluation.gates import Gate


class BootstrapSettings(BaseModel):
    """Bootstrap intervals: resamples of conversations, interval width."""

    model_config = ConfigDict(extra="forbid")

    resamples: Annotated[int, Field(ge=1)] = 1000
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95


class LatencySettings(BaseModel):
    """How latency is measured."""

    model_config = ConfigDict(extra="forbid")

    calls: Annotated[int, Field(ge=1)] = 100
    warmup: Annotated[int, Field(ge=0)] = 5
    batch_size: Annotated[int, Field(ge=1)] = 32
    batches: Annotated[int, Field(ge=1)] = 5


class LanguageCalibrationSettings(BaseModel):
    """Per-language thresholds and temperatures, and the fallback for languages without labels."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    min_positives: Annotated[int, Field(ge=1)] = 5
    min_examples: Annotated[int, Field(ge=2)] = 30


class CrossLingualSettings(BaseModel):
    """The train-on-A / test-on-B matrix (``cesagram evaluate <task> --cross-lingual``)."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(default_factory=lambda: ["en"])
    targets: list[str] | None = None
    strategies: list[str] = Field(default_factory=lambda: ["full", "linear_probe", "lp_ft"])


class EvaluationSettings(BaseModel):
    """What ``cesagram evaluate`` measures and the gates a champion must pass."""

    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    threshold_beta: Annotated[float, Field(gt=0)] = 0.5
    indicator_threshold_beta: Annotated[float, Field(gt=0)] = 1.0
    max_messages: Annotated[int, Field(ge=1)] | None = 3000
    max_val_messages: Annotated[int, Field(ge=1)] | None = 3000
    early_conversations: Annotated[int, Field(ge=2)] | None = 30
    skepticism: Annotated[int, Field(ge=1, le=10)] = 5
    curve_conversations: Annotated[int, Field(ge=0)] = 6
    robustness_samples: Annotated[int, Field(ge=1)] = 200
    risk_robustness_samples: Annotated[int, Field(ge=1)] = 40
    min_group_size: Annotated[int, Field(ge=1)] = 10
    bootstrap: BootstrapSettings = BootstrapSettings()
    latency: LatencySettings = LatencySettings()
    language_calibration: LanguageCalibrationSettings = LanguageCalibrationSettings()
    cross_lingual: CrossLingualSettings = CrossLingualSettings()
    reports_dir: str = "reports"
    seed: int = 0
    gates: dict[str, list[Gate]] = Field(default_factory=dict)
