"""Studies of the tiny indicator model, in-process: pruning, export, multi-objective choice."""

from __future__ import annotations

import shlex

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from cesagram.config import ConfigError, compose, validated
from cesagram.training.train import train
from cesagram.tuning import run_study
from cesagram.tuning.search_space import SearchSettings
from cesagram.tuning.study import choose
from tests.tuning.conftest import TuningProject


def _child_runs(project: TuningProject, parent_run_id: str) -> dict[int, object]:
    client = MlflowClient(tracking_uri=project.tracking_uri)
    experiment = client.get_experiment_by_name("cesagram")
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
    return {int(run.data.tags["optuna_trial"]): run for run in runs}


def test_pruning_stops_trials_and_tags_their_runs(tuning_project: TuningProject) -> None:
    # A threshold no F1 reaches: every trial is pruned after its first validation epoch.
    result = run_study(
        [
            *tuning_project.overrides,
            "hparams_search.n_trials=2",
            "hparams_search.pruner.name=threshold",
            "++hparams_search.pruner.lower=1.1",
        ],
        config_dir=tuning_project.config_dir,
    )
    study = optuna.load_study(study_name="tiny_study", storage=tuning_project.storage)
    assert [trial.state for trial in study.trials] == [TrialState.PRUNED] * 2
    assert all(list(trial.intermediate_values) == [0] for trial in study.trials)
    assert result.decision == {"trial": None, "reason": "no trial completed"}
    assert result.experiment_config is None

    runs = _child_runs(tuning_project, result.parent_run_id)
    assert sorted(runs) == [0, 1]
    for run in runs.values():
        assert run.data.tags["trial_state"] == "PRUNED"  # type: ignore[attr-defined]
        assert run.info.status == "KILLED"  # type: ignore[attr-defined]
        assert "epoch 0: val/auprc" in run.data.tags["trial_message"]  # type: ignore[attr-defined]
    parent = MlflowClient(tracking_uri=tuning_project.tracking_uri).get_run(result.parent_run_id)
    assert parent.data.tags["optuna_study"] == "tiny_study"
    assert parent.data.params["pruner.name"] == "threshold"


def test_exported_best_config_reproduces_the_best_trial(tuning_project: TuningProject) -> None:
    result = run_study(tuning_project.overrides, config_dir=tuning_project.config_dir)
    assert result.counts["COMPLETE"] == 3
    chosen = result.decision
    assert chosen["trial"] is not None and chosen["reason"] == "best val/auprc of all trials"

    # The study's files: definition, decision and the Hydra experiment config.
    study_dir = tuning_project.root / "experiments" / "tiny_study"
    definition = yaml.safe_load((study_dir / "study.yaml").read_text())
    assert definition["hparams_search"]["n_trials"] == 3
    best = yaml.safe_load((study_dir / "best.yaml").read_text())
    assert best["trial"] == chosen["trial"] and best["params"] == chosen["params"]
    exported = tuning_project.config_dir / "experiment" / "tiny_study.yaml"
    assert result.experiment_config == exported
    assert exported.read_text().startswith("# @package _global_\n")

    # The trials are child runs of the study's run, which holds the summary and figures.
    client = MlflowClient(tracking_uri=tuning_project.tracking_uri)
    runs = _child_runs(tuning_project, result.parent_run_id)
    assert sorted(runs) == [0, 1, 2]
    best_run = runs[chosen["trial"]]
    assert best_run.data.tags["trial_state"] == "COMPLETE"  # type: ignore[attr-defined]
    lr = best_run.data.params["risk.optimizer.lr"]  # type: ignore[attr-defined]
    assert float(lr) == pytest.approx(chosen["params"]["risk.optimizer.lr"])
    artifacts = {item.path for item in client.list_artifacts(result.parent_run_id, "study")}
    assert {"study/summary.json", "study/optimization_history.png"} <= artifacts
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["best.trial"] == str(chosen["trial"])
    assert not client.search_registered_models()  # trials never register versions

    # `cesagram train risk experiment=tiny_study ...` as best.yaml records it.
    command = shlex.split(best["reproduce"])
    assert command[:4] == ["cesagram", "train", "risk", "experiment=tiny_study"]
    cfg = OmegaConf.create(compose(command[3:], tuning_project.config_dir))
    assert cfg.trainer.max_epochs == 2
    metrics, _ = train(cfg, "risk")
    study = optuna.load_study(study_name="tiny_study", storage=tuning_project.storage)
    assert len({trial.value for trial in study.trials}) > 1  # matching the best means something
    assert metrics["val/auprc_best"] == pytest.approx(chosen["values"]["val/auprc"], abs=1e-6)


def test_multi_objective_study_chooses_from_the_pareto_front_by_the_gates(
    tuning_project: TuningProject,
) -> None:
    result = run_study(
        [
            *tuning_project.overrides,
            "hparams_search.n_trials=2",
            "hparams_search.fixed={}",
            "hparams_search.objectives=[{metric: val/auprc, direction: maximize},"
            "{metric: val/language_recall_gap, direction: minimize},"
            "{metric: val/latency_ms, direction: minimize}]",
            "hparams_search.sampler.name=nsga2",
            "++hparams_search.sampler.population_size=2",
            "++hparams_search.gates=[{name: latency, metric: val/latency_ms, max: 10000}]",
        ],
        config_dir=tuning_project.config_dir,
    )
    study = optuna.load_study(study_name="tiny_study", storage=tuning_project.storage)
    front = {trial.number for trial in study.best_trials}
    chosen = result.decision
    assert chosen["trial"] in front
    assert chosen["reason"].startswith(
        f"best val/auprc of the {len(front)} Pareto-optimal trials that pass every gate"
    )
    assert 0.0 <= chosen["values"]["val/language_recall_gap"] <= 1.0
    assert chosen["values"]["val/latency_ms"] > 0
    client = MlflowClient(tracking_uri=tuning_project.tracking_uri)
    artifacts = {item.path for item in client.list_artifacts(result.parent_run_id, "study")}
    assert "study/pareto_front.png" in artifacts

    # The same front under a gate nobody passes: no trial is chosen, and the reason says why.
    strict = validated(
        SearchSettings,
        {
            **result_settings(study),
            "gates": [{"name": "latency", "metric": "val/latency_ms", "max": 0.0}],
        },
        origin="",
    )
    refused = choose(study, strict)
    assert refused["trial"] is None
    assert (
        "passes the gates" in refused["reason"] and "latency: val/latency_ms" in refused["reason"]
    )


def result_settings(study: optuna.Study) -> dict[str, object]:
    """Minimal settings of a three-objective study over the tiny study's parameters."""
    return {
        "study_name": study.study_name,
        "task": "risk",
        "objectives": [
            {"metric": "val/auprc"},
            {"metric": "val/language_recall_gap", "direction": "minimize"},
            {"metric": "val/latency_ms", "direction": "minimize"},
        ],
        "n_trials": 2,
        "pruner": {"name": "none"},
        "params": {"risk.dropout": {"type": "float", "low": 0.0, "high": 0.3}},
    }


def test_a_study_of_other_directions_is_refused(tuning_project: TuningProject) -> None:
    (tuning_project.root / "experiments" / "tiny_study").mkdir(parents=True)
    optuna.create_study(
        study_name="tiny_study", storage=tuning_project.storage, direction="minimize"
    )
    with pytest.raises(ConfigError, match=r"optimises \['minimize'\], the config asks for"):
        run_study(tuning_project.overrides, config_dir=tuning_project.config_dir)


def test_the_wall_time_budget_stops_the_worker_after_its_running_trial(
    tuning_project: TuningProject,
) -> None:
    result = run_study(
        [*tuning_project.overrides, "hparams_search.timeout_s=0.5"],
        config_dir=tuning_project.config_dir,
    )
    assert result.stop_reason == "wall-time budget reached (0.5 s)"
    assert result.counts["COMPLETE"] == 1  # started within the budget, never cut short
