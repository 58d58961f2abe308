"""The models under evaluation, behind one interface, and where they come from.

A model to evaluate is a registered version (``cesagram-risk`` version 3), an MLflow run, or a
local folder (what the DVC pipeline just trained). Whatever the source, evaluation works on a
local copy of the run's ``model/`` artifact and knows the run it must log to.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from cesagram.config import ConfigError
from cesagram.models.encoder_classifier import CLASSIFIER_FILE, load_classifier, predict_proba
from cesagram.training.tracking import find_model_version, version_of_run

logger = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"


class Scorer(Protocol):
    """Anything that turns rendered inputs into probabilities ``[n, labels]``."""

    label_names: list[str]
    text_prefix: str
    max_length: int | None

    def scores(self, texts: list[str], *, batch_size: int = 32) -> npt.NDArray[np.float64]:
        """Probabilities, one row per text (tokenisation included)."""
        ...


class TransformerScorer:
    """A saved encoder classifier (``models/<task>/`` or a run's ``model/`` artifact)."""

    def __init__(self, directory: Path, *, device: str = "cpu", precision: str = "fp32") -> None:
        """Load the classifier onto ``device`` (``cpu``, ``cuda``) in ``precision``.

        ``fp16`` and ``bf16`` halve the weights on a GPU; logits are turned into probabilities
        in fp32 either way.
        """
        import torch

        dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        if precision not in dtypes:
            raise ValueError(f"precision {precision!r}: expected one of {sorted(dtypes)}")
        self.model, self.tokenizer, self.info = load_classifier(directory)
        self.device = torch.device(device)
        self.model.to(device=self.device, dtype=dtypes[precision])
        self.label_names = list(self.info.label_names)
        self.text_prefix = self.info.text_prefix
        self.max_length: int | None = self.info.max_length

    def scores(self, texts: list[str], *, batch_size: int = 32) -> npt.NDArray[np.float64]:
        """Sigmoid probabilities from the model's own tokenizer, batched by length."""
        assert self.max_length is not None
        return predict_proba(
            self.model, self.tokenizer, texts, max_length=self.max_length, batch_size=batch_size
        ).astype(np.float64)


class BaselineScorer:
    """A saved TF-IDF baseline; it reads the same rendered inputs without the E5 prefix."""

    def __init__(self, directory: Path, task: str) -> None:
        from cesagram.models.baselines import TfidfIndicatorBaseline, TfidfRiskBaseline

        kind = TfidfIndicatorBaseline if task == "indicators" else TfidfRiskBaseline
        self.baseline: Any = kind.load(directory)
        self.label_names = list(self.baseline.label_names) if task == "indicators" else ["risk"]
        self.text_prefix = ""
        self.max_length: int | None = None

    def scores(self, texts: list[str], *, batch_size: int = 32) -> npt.NDArray[np.float64]:
        """Logistic-regression probabilities (batch size is irrelevant here)."""
        probabilities = np.asarray(self.baseline.predict_proba(texts), dtype=np.float64)
        return probabilities.reshape(len(texts), -1)


@dataclass(frozen=True)
class ModelUnderTest:
    """A local copy of a model and the MLflow run and registered version it belongs to."""

    directory: Path
    run_id: str | None
    registered_model: str
    version: str | None


def resolve_model(
    *,
    tracking_uri: str,
    registered_model: str,
    local_dir: Path,
    version: str | None = None,
    run_id: str | None = None,
    download_dir: Path,
) -> ModelUnderTest:
    """Find the model to evaluate.

    ``version`` (a registered version number or an alias such as ``champion``) or ``run_id``
    download that model from MLflow into ``download_dir``; with neither, the local folder the
    pipeline trained (``models/<task>``) is used, with the run recorded in its provenance.
    """
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    if version is not None and run_id is not None:
        raise ConfigError("give either --version or --run-id, not both")
    if version is None and run_id is None:
        info_path = local_dir / CLASSIFIER_FILE
        if not info_path.exists():
            raise ConfigError(
                f"{local_dir}: no trained model ({CLASSIFIER_FILE} missing); train one first "
                "(`cesagram train <task>` or `dvc repro`) or pass --version / --run-id"
            )
        provenance = json.loads(info_path.read_text()).get("provenance") or {}
        recorded = provenance.get("mlflow_run_id")
        return ModelUnderTest(
            directory=local_dir,
            run_id=recorded,
            registered_model=registered_model,
            version=version_of_run(tracking_uri, registered_model, recorded) if recorded else None,
        )
    if version is not None:
        run_id, version = find_model_version(tracking_uri, registered_model, version)
    try:
        target = download_dir / f"{registered_model}-{version or run_id}"
        download_artifacts(
            run_id=run_id,
            artifact_path=MODEL_ARTIFACT,
            dst_path=str(target),
            tracking_uri=tracking_uri,
        )
    except MlflowException as error:
        wanted = f"version {version}" if version else f"run {run_id}"
        raise ConfigError(
            f"{registered_model} {wanted}: not found in {tracking_uri} ({error.message})"
        ) from error
    if version is None and run_id is not None:
        version = version_of_run(tracking_uri, registered_model, run_id)
    return ModelUnderTest(
        directory=target / MODEL_ARTIFACT,
        run_id=run_id,
        registered_model=registered_model,
        version=version,
    )
