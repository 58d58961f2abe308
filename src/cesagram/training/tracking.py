"""MLflow tracking: where runs go, what provenance they carry, and the model registry.

The default store is an embedded SQLite file in the project (``mlruns.db``) with artifacts
under ``mlartifacts/``; ``MLFLOW_TRACKING_URI`` points everything at a shared server instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

DEFAULT_STORE = "mlruns.db"
RUN_STATE_FILE = "mlflow_run.json"


def tracking_uri(configured: str | None) -> str:
    """The configured URI, else ``$MLFLOW_TRACKING_URI``, else the project's SQLite store."""
    if configured:
        return configured
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DEFAULT_STORE).resolve()}"


def experiment_id(uri: str, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created (with local artifact storage) when missing."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = Path(artifact_location).resolve().as_uri() if artifact_location else None
    return str(client.create_experiment(name, artifact_location=location))


def git_commit() -> str:
    """The current commit (``+dirty`` when the work tree has changes), or ``unknown``."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def data_fingerprint(folder: Path) -> str:
    """SHA-256 over the Parquet files of a splits folder (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.parquet")):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def dvc_output_md5(output: str, lock_file: Path = Path("dvc.lock")) -> str | None:
    """DVC's recorded hash of a pipeline output (from dvc.lock), when present."""
    import yaml

    if not lock_file.exists():
        return None
    lock = yaml.safe_load(lock_file.read_text()) or {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == output:
                return str(out.get("md5"))
    return None


def saved_run_id(output_dir: Path) -> str | None:
    """The MLflow run id an interrupted training in ``output_dir`` was logging to."""
    path = output_dir / RUN_STATE_FILE
    if not path.exists():
        return None
    state: dict[str, Any] = json.loads(path.read_text())
    return str(state["run_id"])


def save_run_id(output_dir: Path, run_id: str) -> None:
    """Remember the run id so ``ckpt_path=last`` resumes into the same MLflow run."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RUN_STATE_FILE).write_text(json.dumps({"run_id": run_id}) + "\n")


def register_model_version(uri: str, name: str, run_id: str, artifact_path: str) -> str:
    """Register the run's artifact folder as a new version of ``name``; returns the version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="CESAGRAM model: scores for trained human reviewers only."
        )
    run = client.get_run(run_id)
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/{artifact_path}", run_id=run_id
    )
    return str(version.version)


def find_model_version(uri: str, name: str, version: str) -> tuple[str, str]:
    """``(run_id, version number)`` of a registered version given as a number or an alias.

    Raises:
        ConfigError: when the version or alias does not exist or the version has no run.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from cesagram.config import ConfigError

    client = MlflowClient(tracking_uri=uri)
    try:
        found = (
            client.get_model_version(name, version)
            if version.isdigit()
            else client.get_model_version_by_alias(name, version)
        )
    except MlflowException as error:
        kind = "version" if version.isdigit() else "alias"
        raise ConfigError(f"{name} {kind} {version}: not found in {uri}") from error
    if found.run_id is None:
        raise ConfigError(f"{name} version {found.version}: has no MLflow run")
    return found.run_id, str(found.version)


def write_metrics_file(path: Path, metrics: dict[str, float], run_id: str | None) -> None:
    """A DVC metrics file: the finite metrics, sorted, and the MLflow run they came from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    finite = {name: value for name, value in sorted(metrics.items()) if math.isfinite(value)}
    path.write_text(json.dumps({"mlflow_run_id": run_id, **finite}, indent=2) + "\n")


def log_metrics(uri: str, run_id: str, metrics: dict[str, float]) -> None:
    """Log the finite metrics to a run in batches (MLflow takes at most 1000 per batch)."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    rows = [Metric(k, v, now, 0) for k, v in sorted(metrics.items()) if math.isfinite(v)]
    for start in range(0, len(rows), 500):
        client.log_batch(run_id, metrics=rows[start : start + 500])


def version_of_run(uri: str, name: str, run_id: str) -> str | None:
    """The newest registered version of ``name`` made from ``run_id``, if any."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        versions = MlflowClient(tracking_uri=uri).search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    matching = [int(v.version) for v in versions if v.run_id == run_id]
    return str(max(matching)) if matching else None
