"""Evaluation, promotion, cards and comparison on really trained tiny models and real MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from omegaconf import DictConfig

from cesagram.cards.recorded import recorded_card_inputs
from cesagram.config import ConfigError
from cesagram.evaluation.compare import comparison_rows, to_csv, to_markdown
from cesagram.evaluation.evaluate import evaluate
from cesagram.evaluation.promotion import CHAMPION, promote
from cesagram.training.train import train, train_baseline
from tests.tiny import tiny_config

TASKS = ("indicators", "risk")

# Gates every tiny model passes, and one no model can pass.
LENIENT = {
    "indicators": "evaluation.gates.indicators=[{name: quality, metric: test/macro_f1, min: 0.0}]",
    "risk": "evaluation.gates.risk=[{name: quality, metric: test/auprc, min: 0.0}]",
}
IMPOSSIBLE_LATENCY = "[{name: latency, metric: latency/p95_ms, max: 0.0}]"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_workspace: Path) -> dict[str, Any]:
    """Both tiny models and their baselines trained once, then each evaluated once."""
    run_dir = tmp_path_factory.mktemp("evaluation")
    result: dict[str, Any] = {"run_dir": run_dir}
    for task in TASKS:
        cfg = tiny_config(tiny_workspace, run_dir, LENIENT[task])
        train_baseline(cfg, task)
        _, objects = train(cfg, task)
        report, evaluated = evaluate(cfg, task)
        result[task] = {"cfg": cfg, "report": report, "objects": objects, **evaluated}
    return result


def _client(cfg: DictConfig) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.logger.tracking_uri)


@pytest.mark.parametrize("task", TASKS)
def test_report_has_every_section_and_matches_the_metrics_file(
    trained: dict[str, Any], task: str
) -> None:
    report = trained[task]["report"]
    for key in (
        "model",
        "data",
        "train_data",
        "threshold",
        "metrics",
        "per_language",
        "calibration",
        "fairness",
        "robustness",
        "latency",
        "gates",
        "baseline",
        "plots",
    ):
        assert key in report, key
    headline = "macro_f1" if task == "indicators" else "auprc"
    interval = report["metrics"][headline]
    assert interval["low"] <= interval["estimate"] <= interval["high"]
    assert set(report["per_language"]) == set(report["data"]["languages"])
    assert "language" in report["fairness"]
    assert report["latency"]["p50_ms"] > 0 and "cpu" in report["latency"]["hardware"]
    assert report["model"]["run_id"] == trained[task]["objects"]["run_id"]
    by_language = report["language_calibration"]
    assert by_language["fallback"]["method"] in ("pooled", "language_balanced")
    assert set(by_language["test"]) == set(report["data"]["languages"])
    for entry in (*by_language["languages"].values(), by_language["fallback"]):
        # Thresholds keep the global threshold's shape: by indicator, or one number for risk.
        assert isinstance(entry["thresholds"], dict if task == "indicators" else float)
        assert entry["temperature"] > 0

    written = json.loads(
        (Path(trained[task]["cfg"].paths.metrics_dir) / f"eval_{task}.json").read_text()
    )
    assert written["mlflow_run_id"] == report["model"]["run_id"]
    assert written[f"test/{headline}"] == pytest.approx(interval["estimate"])
    language = sorted(report["data"]["languages"])[0]
    assert f"language_calibration/{language}/f_language" in written
    on_disk = json.loads((trained[task]["reports_dir"] / "report.json").read_text())
    assert on_disk["metrics"][headline]["estimate"] == pytest.approx(interval["estimate"])
    for name in report["plots"].values():
        assert (trained[task]["reports_dir"] / name).read_bytes().startswith(b"\x89PNG")


def test_risk_report_has_early_detection_for_every_skepticism(trained: dict[str, Any]) -> None:
    early = trained["risk"]["report"]["early_detection"]
    assert sorted(int(s) for s in early["by_skepticism"]) == list(range(1, 11))
    assert early["skepticism"] == 5
    assert early["f_latency"] == pytest.approx(early["by_skepticism"]["5"]["f_latency"])
    assert 0 < early["conversations"] <= 8
    assert all(len(curve["scores"]) > 0 for curve in early["curves"])
    assert "f_latency" in trained["risk"]["report"]["metrics"]


def test_indicator_report_has_per_indicator_counts_and_thresholds(trained: dict[str, Any]) -> None:
    report = trained["indicators"]["report"]
    rows = report["per_indicator"]
    assert [row["indicator"] for row in rows] == report["model"]["label_names"]
    examples = report["examples"]["test"]
    assert all(row["tp"] + row["fp"] + row["fn"] + row["tn"] == examples for row in rows)
    assert all(row["tp"] + row["fn"] == row["support"] for row in rows)
    assert set(report["threshold"]["value"]) == set(report["model"]["label_names"])


@pytest.mark.parametrize("task", TASKS)
def test_everything_is_logged_to_the_models_run(trained: dict[str, Any], task: str) -> None:
    cfg, report = trained[task]["cfg"], trained[task]["report"]
    run = _client(cfg).get_run(report["model"]["run_id"])
    headline = "test/macro_f1" if task == "indicators" else "test/auprc"
    assert run.data.metrics[headline] == pytest.approx(trained[task]["summary"][headline])
    assert run.data.tags["gates_passed"] == "true"
    artifacts = {a.path for a in _client(cfg).list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/report.json" in artifacts


def test_evaluating_a_registered_version_downloads_it_and_gives_the_same_scores(
    trained: dict[str, Any],
) -> None:
    cfg = trained["risk"]["cfg"]
    version = trained["risk"]["objects"]["registered_version"]
    again, _ = evaluate(cfg, "risk", version=version, log_to_mlflow=False)
    assert again["model"]["version"] == version
    assert again["metrics"]["auprc"]["estimate"] == pytest.approx(
        trained["risk"]["report"]["metrics"]["auprc"]["estimate"]
    )


def test_unknown_version_fails_with_a_clear_message(trained: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="version 99: not found"):
        evaluate(trained["risk"]["cfg"], "risk", version="99", log_to_mlflow=False)


def test_promotion_both_ways_and_the_decision_is_recorded(
    trained: dict[str, Any], tiny_workspace: Path
) -> None:
    cfg = trained["indicators"]["cfg"]
    uri, name = cfg.logger.tracking_uri, cfg.indicators.registered_model
    first = trained["indicators"]["objects"]["registered_version"]
    record = promote(uri, name, "indicators", first)
    assert record["decision"] == "promoted" and "no champion yet" in record["reason"]
    assert str(_client(cfg).get_model_version_by_alias(name, CHAMPION).version) == first

    # The same model again is not better than itself: the alias stays.
    assert promote(uri, name, "indicators", first)["decision"] == "kept"

    # A second version that fails a gate is rejected, with the gate and the miss named.
    strict = tiny_config(
        tiny_workspace,
        trained["run_dir"],
        f"evaluation.gates.indicators={IMPOSSIBLE_LATENCY}",
    )
    _, objects = train(strict, "indicators")
    evaluate(strict, "indicators")
    rejected = promote(uri, name, "indicators", objects["registered_version"])
    assert rejected["decision"] == "rejected"
    assert "latency: latency/p95_ms" in rejected["reason"] and "missed by" in rejected["reason"]
    assert str(_client(cfg).get_model_version_by_alias(name, CHAMPION).version) == first
    tags = _client(cfg).get_model_version(name, objects["registered_version"]).tags
    assert tags["promotion_decision"] == "rejected"
    assert tags["promotion_reason"] == rejected["reason"]


def test_card_holds_the_recorded_numbers(trained: dict[str, Any], tmp_path: Path) -> None:
    from cesagram.cards import write_card

    cfg, report = trained["risk"]["cfg"], trained["risk"]["report"]
    version = trained["risk"]["objects"]["registered_version"]
    recorded, run, plots = recorded_card_inputs(
        cfg.logger.tracking_uri, cfg.risk.registered_model, version
    )
    assert recorded["metrics"]["auprc"] == pytest.approx(report["metrics"]["auprc"])
    assert set(plots) == set(report["plots"])
    markdown_path, html_path = write_card(recorded, run, plots, tmp_path, "risk")
    markdown = markdown_path.read_text()
    auprc = report["metrics"]["auprc"]["estimate"]
    assert f"{auprc:.3f}" in markdown
    assert report["model"]["run_id"] in markdown
    assert "data:image/png;base64," in html_path.read_text()


def test_compare_lists_evaluated_runs_with_the_baseline(trained: dict[str, Any]) -> None:
    cfg = trained["risk"]["cfg"]
    rows = comparison_rows(
        cfg.logger.tracking_uri, cfg.logger.experiment_name, "risk", cfg.risk.registered_model
    )
    models = {row["model"] for row in rows}
    assert "baseline:tfidf" in models and "transformer:tiny" in models
    transformer = next(row for row in rows if row["model"] == "transformer:tiny")
    assert transformer["primary"] == pytest.approx(trained["risk"]["summary"]["test/auprc"])
    assert math.isfinite(transformer["p95_ms"])
    assert transformer["strategy"] == "full"  # the training strategy, tagged on the run
    assert "| run |" in to_markdown(rows, "risk") and to_csv(rows).startswith("run,model,strategy")


def test_compare_shows_a_probe_head_with_its_strategy(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("compare", artifact_location=str(tmp_path / "art"))
    tags = [
        {"strategy": "linear_probe", "probe_head": "mlp"},
        {"strategy": "lp_ft", "probe_head": "logistic"},
        {"strategy": "linear_probe"},  # a run from before the MLP head
    ]
    run_ids = [client.create_run(experiment, tags={"task": "risk", **t}).info.run_id for t in tags]
    rows = comparison_rows(uri, "compare", "risk", "cesagram-risk", run_ids=run_ids)
    assert [row["strategy"] for row in rows] == [
        "linear_probe:mlp",
        "lp_ft:logistic",
        "linear_probe",
    ]


def test_a_measured_cross_lingual_matrix_joins_the_report(trained: dict[str, Any]) -> None:
    from cesagram.evaluation.crosslingual import REPORT_FILE, matrix_dir

    cfg = trained["risk"]["cfg"]
    folder = matrix_dir(cfg.evaluation.reports_dir, "risk")
    folder.mkdir(parents=True)
    cell = {"source": "en", "target": "de", "in_language": False, "f1_source_threshold": 0.5}
    recorded = {
        "metric": "f1",
        "sources": ["en"],
        "winner": {"strategy": "linear_probe", "criterion": "highest mean transfer F1"},
        "strategies": {
            "linear_probe": {
                "summary": {"mean_transfer_f1": 0.5, "in_language_f1": None},
                "cells": [{**cell, "val_metrics": {"val/f1": 0.9}}],
            }
        },
    }
    (folder / REPORT_FILE).write_text(json.dumps(recorded))
    try:
        report, objects = evaluate(cfg, "risk", log_to_mlflow=False)
    finally:
        (folder / REPORT_FILE).unlink()
    matrix = report["cross_lingual"]
    assert matrix["winner"]["strategy"] == "linear_probe"
    assert matrix["strategies"]["linear_probe"]["cells"][0]["f1_source_threshold"] == 0.5
    assert "val_metrics" not in matrix["strategies"]["linear_probe"]["cells"][0]
    assert len(matrix["sha256"]) == 64
    # Summary numbers reach the metrics file and MLflow; undefined ones are left out.
    assert objects["summary"]["cross_lingual/linear_probe/mean_transfer_f1"] == 0.5
    assert "cross_lingual/linear_probe/in_language_f1" not in objects["summary"]
