"""`cesagram tune` as real processes: a killed study resumes, two workers share one study.

Each test runs the CLI in ``tmp_path`` (a copy of configs/ with the tiny study), so the study's
storage, experiments/ folder and MLflow store land there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from tests.tuning.conftest import TuningProject

BIN = Path(sys.executable).parent
# Far above the ~30 s a tiny study takes on 2 cores; a stuck worker must not hang the suite.
TIMEOUT_S = 300


def _start(project: TuningProject, name: str, *extra: str) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment.pop("MLFLOW_TRACKING_URI", None)
    log = (project.root / f"{name}.log").open("wb")
    return subprocess.Popen(
        [str(BIN / "cesagram"), "tune", *project.overrides, *extra],
        cwd=project.root,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _finish(project: TuningProject, process: subprocess.Popen[bytes], name: str) -> str:
    try:
        process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    log = (project.root / f"{name}.log").read_text(errors="replace")
    assert process.returncode == 0, log
    return log


def _trials(project: TuningProject) -> list[FrozenTrial]:
    return optuna.load_study(study_name="tiny_study", storage=project.storage).trials


def _poll(project: TuningProject) -> list[FrozenTrial]:
    # Read only: never create the tables a starting worker is about to create.
    try:
        storage = optuna.storages.RDBStorage(project.storage, skip_table_creation=True)
        return optuna.load_study(study_name="tiny_study", storage=storage).trials
    except Exception:  # no storage or no study yet
        return []


@pytest.mark.slow
def test_a_killed_study_resumes_without_losing_or_repeating_trials(
    tuning_project: TuningProject,
) -> None:
    first = _start(tuning_project, "first")
    deadline = time.monotonic() + TIMEOUT_S
    # Kill the worker (SIGKILL, no clean-up) once a trial has completed and the next one is
    # training in its MLflow run.
    while True:
        assert first.poll() is None, (tuning_project.root / "first.log").read_text()
        assert time.monotonic() < deadline, "no second trial started"
        trials = _poll(tuning_project)
        completed = [trial for trial in trials if trial.state == TrialState.COMPLETE]
        running = [
            trial
            for trial in trials
            if trial.state == TrialState.RUNNING and trial.user_attrs.get("mlflow_run_id")
        ]
        if completed and running:
            break
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed = running[0]
    before = {trial.number: trial.params for trial in completed}

    time.sleep(4)  # the tiny study's heartbeat grace period (3 s): the killed trial is stale
    log = _finish(tuning_project, _start(tuning_project, "resumed"), "resumed")
    assert "trial budget reached (3 of 3 finished)" in log, log

    study = {trial.number: trial for trial in _trials(tuning_project)}
    for number, params in before.items():  # finished trials kept, not run again
        assert study[number].state == TrialState.COMPLETE and study[number].params == params
    assert study[killed.number].state == TrialState.FAIL  # recorded, not lost
    retries = [t for t in study.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    finished = [t for t in study.values() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3
    ran = [json.dumps(trial.params, sort_keys=True) for trial in finished]
    assert len(set(ran)) == len(ran)  # no parameters ran to the end twice

    client = MlflowClient(tracking_uri=tuning_project.tracking_uri)
    experiment = client.get_experiment_by_name("cesagram")
    assert experiment is not None
    parents = client.search_runs(
        [experiment.experiment_id], filter_string="tags.optuna_study = 'tiny_study' "
        "and tags.optuna_role = 'study'",
    )  # fmt: skip
    assert len(parents) == 1  # the resumed worker logged under the same parent run
    orphan = client.get_run(killed.user_attrs["mlflow_run_id"])
    assert orphan.data.tags["trial_state"] == "FAIL" and orphan.info.status == "FAILED"


@pytest.mark.slow
def test_two_workers_share_one_study(tuning_project: TuningProject) -> None:
    workers = [_start(tuning_project, name, "hparams_search.n_trials=4") for name in ("one", "two")]
    logs = [
        _finish(tuning_project, process, name)
        for process, name in zip(workers, ("one", "two"), strict=True)
    ]
    trials = _trials(tuning_project)
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 4, logs
    contributors = {trial.user_attrs["worker"] for trial in trials}
    assert len(contributors) == 2, logs  # both processes ran trials of the one study
    assert all("trial budget reached (4 of 4 finished)" in log for log in logs), logs
