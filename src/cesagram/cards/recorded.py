"""What a model card is built from: only what the model's MLflow run recorded.

The evaluation report (``evaluation/report.json``), its figures, the run's parameters and tags,
and the promotion decision recorded on the registered version. Nothing is recomputed here.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cesagram.config import ConfigError
from cesagram.training.tracking import find_model_version


def recorded_card_inputs(
    uri: str, registered_model: str, version: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes]]:
    """``(report, run, plots)`` for a registered version (a number or an alias)."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    run_id, number = find_model_version(uri, registered_model, version)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_model_version(registered_model, number)
    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            folder = Path(
                download_artifacts(
                    run_id=run_id,
                    artifact_path="evaluation",
                    dst_path=scratch,
                    tracking_uri=uri,
                )
            )
        except (MlflowException, OSError) as error:
            raise ConfigError(
                f"{registered_model} version {found.version}: its run {run_id} has no "
                "evaluation; run `cesagram evaluate` first (a card shows only recorded numbers)"
            ) from error
        report = json.loads((folder / "report.json").read_text())
        plots = {
            key: (folder / name).read_bytes()
            for key, name in (report.get("plots") or {}).items()
            if (folder / name).exists()
        }
    decision = found.tags.get("promotion_decision")
    if decision:
        report["promotion"] = {
            "alias": "champion",
            "decision": decision,
            "reason": found.tags.get("promotion_reason", ""),
        }
    report.setdefault("model", {})["version"] = str(found.version)
    run_info = {
        "run_id": run.info.run_id,
        "experiment": run.info.experiment_id,
        "start_time": datetime.fromtimestamp(run.info.start_time / 1000, UTC).isoformat(
            timespec="seconds"
        ),
        "params": dict(run.data.params),
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
    }
    return report, run_info, plots
