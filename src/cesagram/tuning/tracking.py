"""MLflow for a study: one parent run per study, one child run per trial.

The parent run is found by its tags (``optuna_study=<name>``, ``optuna_role=study``), so a
resumed study and every extra worker log under the same parent. Two workers starting at once
may both create one; each then keeps the oldest and deletes its own, so they agree. A trial's
run is the ordinary training run of its strategy (``train_with_strategy``: fine-tuning, linear
probe or LP-FT, tagged ``strategy``) made a child through the ``mlflow.parentRunId`` tag, with the
trial's outcome as the ``trial_state`` tag.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cesagram.training.tracking import experiment_id, git_commit

logger = logging.getLogger(__name__)

STUDY_TAG = "optuna_study"
ROLE_TAG = "optuna_role"
TRIAL_TAG = "optuna_trial"
STATE_TAG = "trial_state"
SUMMARY_FOLDER = "study"

# How a trial's outcome shows in MLflow's run status.
_RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class StudyRuns:
    """The parent run of study ``study_name`` in ``experiment_name`` and its child runs."""

    def __init__(
        self,
        uri: str,
        experiment_name: str,
        artifact_location: str | None,
        study_name: str,
        definition: Mapping[str, Any],
    ) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = experiment_id(uri, experiment_name, artifact_location)
        self.study_name = study_name
        self.run_id = self._find_or_create(definition)

    def _study_runs(self) -> list[Any]:
        from mlflow.entities import ViewType

        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.{STUDY_TAG} = '{self.study_name}' and tags.{ROLE_TAG} = 'study'",
            run_view_type=ViewType.ACTIVE_ONLY,
        )
        return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))

    def _find_or_create(self, definition: Mapping[str, Any]) -> str:
        existing = self._study_runs()
        if existing:
            run_id = str(existing[0].info.run_id)
            self.client.update_run(run_id, status="RUNNING")
            logger.info("Study %s: parent MLflow run %s (resumed)", self.study_name, run_id)
            return run_id
        tags = {STUDY_TAG: self.study_name, ROLE_TAG: "study", "git_commit": git_commit()}
        created = self.client.create_run(
            self.experiment_id, run_name=f"study-{self.study_name}", tags=tags
        ).info.run_id
        oldest = str(self._study_runs()[0].info.run_id)
        if oldest != created:
            # Another worker created the study's run first: use that one.
            self.client.delete_run(created)
            return oldest
        from mlflow.entities import Param

        params = [Param(key, value) for key, value in _flat(definition).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 per batch
            self.client.log_batch(created, params=params[start : start + 100])
        logger.info("Study %s: parent MLflow run %s", self.study_name, created)
        return str(created)

    def record_trial(
        self,
        run_id: str | None,
        number: int,
        state: str,
        metrics: Mapping[str, float] | None = None,
        message: str | None = None,
    ) -> None:
        """Tag a trial's run with its outcome, log its measured metrics and close it."""
        if not run_id:
            return
        self.client.set_tag(run_id, STUDY_TAG, self.study_name)
        self.client.set_tag(run_id, TRIAL_TAG, str(number))
        self.client.set_tag(run_id, STATE_TAG, state)
        self.client.set_tag(run_id, "mlflow.runName", f"{self.study_name}-trial-{number}")
        if message:
            self.client.set_tag(run_id, "trial_message", message[:4000])
        for name, value in (metrics or {}).items():
            if math.isfinite(value):
                self.client.log_metric(run_id, name, value)
        self.client.set_terminated(run_id, status=_RUN_STATUS[state])

    def close_orphans(self, trials: list[Any]) -> None:
        """Mark the runs of trials that died with their worker (still RUNNING) as failed."""
        for trial in trials:
            run_id = trial.user_attrs.get("mlflow_run_id")
            if trial.state.name != "FAIL" or not run_id:
                continue
            run = self.client.get_run(run_id)
            if run.info.status == "RUNNING" or STATE_TAG not in run.data.tags:
                self.record_trial(
                    run_id, trial.number, "FAIL", message="the worker stopped during the trial"
                )

    def summarise(
        self,
        summary: Mapping[str, Any],
        files: list[Path],
        best_tags: Mapping[str, Any],
        best_metrics: Mapping[str, float],
    ) -> None:
        """Attach the study summary, figures and best parameters to the parent run."""
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "summary.json"
            path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
            self.client.log_artifact(self.run_id, str(path), SUMMARY_FOLDER)
        for file in files:
            self.client.log_artifact(self.run_id, str(file), SUMMARY_FOLDER)
        for key, value in best_tags.items():
            self._set_parent_tag(f"best.{key}", str(value))
        for name, value in best_metrics.items():
            if math.isfinite(value):
                _retrying(self.client.log_metric, self.run_id, name, value)
        _retrying(self.client.set_terminated, self.run_id, "FINISHED")

    def _set_parent_tag(self, key: str, value: str) -> None:
        _retrying(self.client.set_tag, self.run_id, key, value)


def _retrying(call: Any, *arguments: Any, attempts: int = 5) -> None:
    """Write to the study's run, which other workers may be writing at the same moment.

    MLflow's SQL store inserts a new tag or latest metric after checking it is absent, so two
    workers finishing together can both try the insert; the loser's retry is then an update.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            call(*arguments)
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flat(value, f"{name}."))
        else:
            text = json.dumps(value, default=str) if not isinstance(value, str) else value
            flat[name] = text[:6000]
    return flat
