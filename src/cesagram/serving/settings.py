"""What the service reads at start-up: the exported model tags and the serving settings.

``cesagram bento`` writes ``serving/serving.yaml``: the ``serving`` section of ``params.yaml``
(``configs/serving/``) and the tags of the models it exported. The service reads it before its
class is defined, since BentoML takes batching and resources from the decorators.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cesagram.config import ConfigError, validated

SERVICE_FILE_ENV = "CESAGRAM_SERVING_FILE"


class Batching(BaseModel):
    """Adaptive batching of ``classify_messages``."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=64, ge=1)
    max_latency_ms: int = Field(default=10000, ge=1)


class Limits(BaseModel):
    """Per-request input limits; each is named in the 400 a request over it gets."""

    model_config = ConfigDict(extra="forbid")

    max_messages_per_request: int = Field(default=64, ge=1)
    max_chars_per_message: int = Field(default=2000, ge=1)
    max_context_messages: int = Field(default=20, ge=0)
    max_conversation_messages: int = Field(default=500, ge=1)
    max_author_chars: int = Field(default=64, ge=1)
    evidence_messages: int = Field(default=5, ge=1)


class Auth(BaseModel):
    """API keys: required unless explicitly switched off for local development."""

    model_config = ConfigDict(extra="forbid")

    required: bool = True
    header: str = "X-API-Key"
    keys_env: str = "CESAGRAM_API_KEYS"

    def keys(self) -> list[str]:
        """The accepted keys, from the environment variable ``keys_env`` (comma-separated)."""
        return [key.strip() for key in os.environ.get(self.keys_env, "").split(",") if key.strip()]


class ServingSettings(BaseModel):
    """The ``serving`` section of ``params.yaml`` (``configs/serving/``)."""

    model_config = ConfigDict(extra="forbid")

    device: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    use_onnx: bool = True
    threads: int | None = Field(default=None, ge=1)
    workers: int = Field(default=1, ge=1)
    resources: dict[str, str | int] = Field(default_factory=lambda: dict[str, str | int](cpu="2"))
    timeout_s: int = Field(default=120, ge=1)
    batching: Batching = Field(default_factory=Batching)
    limits: Limits = Field(default_factory=Limits)
    auth: Auth = Field(default_factory=Auth)

    @model_validator(mode="after")
    def _half_precision_needs_cuda(self) -> ServingSettings:
        if self.device == "cpu" and self.precision != "fp32":
            raise ValueError(f"precision {self.precision} needs device cuda; use fp32 on cpu")
        return self


class ServiceFile(BaseModel):
    """``serving/serving.yaml``: which exported models to serve, and how."""

    model_config = ConfigDict(extra="forbid")

    models: dict[Literal["indicators", "risk"], str] = Field(
        description="BentoML model tag per task, e.g. cesagram-risk:abc123"
    )
    settings: ServingSettings = Field(default_factory=ServingSettings)

    def write(self, path: Path) -> None:
        """Write the file, with a header saying where it came from."""
        path.parent.mkdir(parents=True, exist_ok=True)
        body = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        path.write_text("# Written by `cesagram bento`; read by serving/service.py.\n" + body)


def load_service_file(default: Path) -> ServiceFile:
    """Read and validate ``$CESAGRAM_SERVING_FILE``, else ``default``; errors name the file."""
    override = os.environ.get(SERVICE_FILE_ENV)
    path = Path(override) if override else default
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(
            f"{path}: not found; run `cesagram bento` (or `dvc repro`) to export the champion "
            f"models and write it, or set {SERVICE_FILE_ENV}"
        ) from error
    return validated(ServiceFile, loaded, origin=f"{path}: ")
