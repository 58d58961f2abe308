"""``cesagram promote``: give the ``champion`` alias to a model that earned it.

A candidate version becomes champion when its evaluation passed every gate and it beats the
current champion on the task's primary test metric (or there is none yet). Otherwise the alias
stays where it is and the reason says which gate failed and by how much, or by how much the
champion is ahead. Every decision is recorded on the candidate version (tags
``promotion_decision`` and ``promotion_reason``) and returned for the pipeline's report.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cesagram.config import ConfigError
from cesagram.evaluation.gates import describe_failures

logger = logging.getLogger(__name__)

CHAMPION = "champion"
PRIMARY_METRIC = {"indicators": "test/macro_f1", "risk": "test/auprc"}


def _evaluation_of(
    client: Any, uri: str, run_id: str | None
) -> tuple[dict[str, float], dict[str, Any] | None]:
    """The run's recorded test metrics and its gate results (from the evaluation report)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    if run_id is None:
        return {}, None
    run = client.get_run(run_id)
    metrics = dict(run.data.metrics)
    try:
        path = download_artifacts(
            run_id=run_id,
            artifact_path="evaluation/report.json",
            tracking_uri=uri,
        )
    except (MlflowException, OSError):
        return metrics, None
    report = json.loads(Path(path).read_text())
    return metrics, report.get("gates")


def promote(
    uri: str, registered_model: str, task: str, version: str, *, dry_run: bool = False
) -> dict[str, Any]:
    """Decide whether ``version`` becomes the champion; record and return the decision.

    Returns ``{"model", "version", "decision": promoted|kept|rejected, "reason", "metric",
    "candidate", "champion_version", "champion", "decided_at"}``.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    metric = PRIMARY_METRIC[task]
    try:
        candidate = client.get_model_version(registered_model, version)
    except MlflowException as error:
        raise ConfigError(f"{registered_model} version {version}: not found in {uri}") from error
    metrics, gates = _evaluation_of(client, uri, candidate.run_id)
    score = metrics.get(metric, float("nan"))
    try:
        champion = client.get_model_version_by_alias(registered_model, CHAMPION)
    except MlflowException:
        champion = None
    champion_score = float("nan")
    if champion is not None:
        champion_score = _evaluation_of(client, uri, champion.run_id)[0].get(metric, float("nan"))

    if gates is None or not math.isfinite(score):
        decision, reason = (
            "rejected",
            (
                f"version {version} has no recorded evaluation; run `cesagram evaluate {task} "
                f"--version {version}` first"
            ),
        )
    elif not gates.get("passed", False):
        decision, reason = "rejected", "failed gates: " + "; ".join(describe_failures(gates))
    elif champion is not None and str(champion.version) == str(version):
        decision, reason = "kept", f"version {version} is already the champion"
    elif champion is not None and not score > champion_score:
        decision, reason = (
            "kept",
            (
                f"passed every gate but {metric} = {score:.4f} does not beat champion version "
                f"{champion.version} ({champion_score:.4f}, ahead by {champion_score - score:.4f})"
            ),
        )
    else:
        previous = (
            f"beats champion version {champion.version} ({champion_score:.4f}) by "
            f"{score - champion_score:.4f}"
            if champion is not None
            else "no champion yet"
        )
        decision, reason = "promoted", f"passed every gate; {metric} = {score:.4f}, {previous}"

    record = {
        "model": registered_model,
        "version": str(version),
        "decision": decision,
        "reason": reason,
        "metric": metric,
        # null, not NaN, for "not measured": the record is strict JSON.
        "candidate": score if math.isfinite(score) else None,
        "champion_version": str(champion.version) if champion is not None else None,
        "champion": champion_score if math.isfinite(champion_score) else None,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if not dry_run:
        if decision == "promoted":
            client.set_registered_model_alias(registered_model, CHAMPION, str(version))
        client.set_model_version_tag(registered_model, str(version), "promotion_decision", decision)
        client.set_model_version_tag(registered_model, str(version), "promotion_reason", reason)
        if candidate.run_id is not None:
            client.set_tag(candidate.run_id, "promotion_decision", decision)
            client.set_tag(candidate.run_id, "promotion_reason", reason)
    logger.info("%s version %s: %s (%s)", registered_model, version, decision, reason)
    return record


def current_champion(uri: str, registered_model: str) -> str | None:
    """The version holding the ``champion`` alias, if any."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        found = MlflowClient(tracking_uri=uri).get_model_version_by_alias(
            registered_model, CHAMPION
        )
    except MlflowException:
        return None
    return str(found.version)
