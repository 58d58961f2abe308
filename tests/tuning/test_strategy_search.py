"""A study over training strategies: full fine-tuning, the linear probe and LP-FT as trials.

The tiny risk model again; the trials' strategies and parameters are queued (enqueue_trial), so
the study runs one trial of each strategy whatever the sampler would have drawn.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from omegaconf import OmegaConf

from cesagram.config import compose
from cesagram.training.strategies import train_with_strategy
from cesagram.tuning import run_study
from cesagram.tuning.export import experiment_config
from tests.tiny import ROOT
from tests.tuning.conftest import TuningProject

# The study tiny_study of the tuning project, searching strategies. The latency gate makes
# every trial measure its saved model (trial_metrics), whichever strategy trained it.
STRATEGY_STUDY = """\
study_name: tiny_study
task: risk
objectives:
  - {metric: val/auprc, direction: maximize}
n_trials: 3
timeout_s: null
sampler: {name: tpe, seed: 0, n_startup_trials: 3}
pruner: {name: none}
heartbeat: {interval_s: 1, grace_s: 3, max_retry: 1}
gates:
  - {name: latency, metric: val/latency_ms, max: 100000}
fixed:
  trainer.max_epochs: 1
params:
  strategy: {type: categorical, choices: [full, linear_probe, lp_ft]}
  strategy.C:
    {type: float, low: 1.0e-2, high: 10.0, log: true, when: {strategy: [linear_probe, lp_ft]}}
  strategy.learning_rate:
    {type: float, low: 1.0e-5, high: 1.0e-2, log: true, when: {strategy: lp_ft}}
trials_dir: ${paths.output_dir}/tuning
"""

# LP-FT first: it fills the shared embedding cache that the probe trial then reads.
QUEUED = [
    {"strategy": "lp_ft", "strategy.C": 0.5, "strategy.learning_rate": 3.0e-3},
    {"strategy": "linear_probe", "strategy.C": 0.05},
    {"strategy": "full"},
]


def test_a_study_over_strategies_tracks_exports_and_reproduces_them(
    tuning_project: TuningProject,
) -> None:
    (tuning_project.config_dir / "hparams_search" / "tiny_study.yaml").write_text(STRATEGY_STUDY)
    (tuning_project.root / "experiments" / "tiny_study").mkdir(parents=True)
    queued = optuna.create_study(
        study_name="tiny_study", storage=tuning_project.storage, direction="maximize"
    )
    for params in QUEUED:
        queued.enqueue_trial(params)

    result = run_study(tuning_project.overrides, config_dir=tuning_project.config_dir)
    assert result.counts["COMPLETE"] == 3, result.counts

    # Each trial sampled only the parameters its strategy has.
    study = optuna.load_study(study_name="tiny_study", storage=tuning_project.storage)
    assert [trial.params for trial in study.trials] == QUEUED
    assert all("val/latency_ms" in trial.user_attrs["metrics"] for trial in study.trials)

    # Each trial's run, probe included, is a child of the study's run tagged with its strategy.
    client = MlflowClient(tracking_uri=tuning_project.tracking_uri)
    experiment = client.get_experiment_by_name("cesagram")
    assert experiment is not None
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
    )
    runs = {int(run.data.tags["optuna_trial"]): run for run in children}
    assert sorted(runs) == [0, 1, 2]
    for trial in study.trials:
        run = runs[trial.number]
        assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert run.data.tags["strategy"] == trial.params["strategy"]
        assert run.data.tags["trial_state"] == "COMPLETE" and run.info.status == "FINISHED"
    # The conditional values reached training: LP-FT's learning rate, the probe's C.
    assert float(runs[0].data.params["risk.optimizer.lr"]) == pytest.approx(3.0e-3)
    assert float(runs[1].data.params["probe.C"]) == pytest.approx(0.05)
    # Trials share one embedding cache: the probe embedded nothing LP-FT had not already.
    assert runs[1].data.params["embedding_cache.misses"] == "0"

    # The exported experiment chooses the strategy's config and sets its parameters. Which
    # strategy wins varies with the tiny backbone's tokenizer (rebuilt each session); each
    # strategy's export is also checked on its own below.
    chosen = result.decision
    strategy = chosen["params"]["strategy"]
    exported = yaml.safe_load(result.experiment_config.read_text())  # type: ignore[union-attr]
    assert {"override /strategy": strategy} in exported["defaults"]
    best = yaml.safe_load((result.study_dir / "best.yaml").read_text())
    assert best["params"] == chosen["params"]
    command = shlex.split(best["reproduce"])
    assert command[:4] == ["cesagram", "train", "risk", "experiment=tiny_study"]
    cfg = OmegaConf.create(compose(command[3:], tuning_project.config_dir))
    assert cfg.strategy.name == strategy
    for key, value in chosen["params"].items():
        if key.startswith("strategy."):
            assert OmegaConf.select(cfg, key) == pytest.approx(value)
    # `cesagram train` trains through the same entry point, to the trial's value.
    metrics, _ = train_with_strategy(cfg, "risk")
    assert metrics["val/auprc_best"] == pytest.approx(chosen["values"]["val/auprc"], abs=1e-6)


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"strategy": "lp_ft", "strategy.C": 0.5, "strategy.learning_rate": 2.0e-5}, "lp_ft"),
        ({"strategy": "linear_probe", "strategy.C": 0.25}, "linear_probe"),
        ({"strategy": "full"}, "full"),
    ],
)
def test_an_exported_strategy_choice_composes_back(
    params: dict[str, object], name: str, tmp_path: Path
) -> None:
    config_dir = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", config_dir)
    text = experiment_config({"trainer.max_epochs": 2, **params}, config_dir, ["exported"])
    (config_dir / "experiment" / "chosen.yaml").write_text(text)
    cfg = OmegaConf.create(compose(["experiment=chosen"], config_dir))
    assert cfg.strategy.name == name and cfg.trainer.max_epochs == 2
    for key, value in params.items():
        if key.startswith("strategy."):
            assert OmegaConf.select(cfg, key) == value
    # Keys of the chosen strategy that were not tuned keep their defaults.
    if name != "full":
        assert cfg.strategy.class_weight == "balanced"
