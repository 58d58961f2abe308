"""``cesagram evaluate``: measure a model on the test split and record it everywhere.

One call evaluates one model (a registered version, a run, or the pipeline's local model) and
writes the same numbers to three places:

- ``reports/<task>/report.json`` with figures (PNG) and DVC plot data beside it;
- ``metrics/eval_<task>.json``, the flat summary that ``dvc metrics diff`` compares and that the
  gates read;
- the model's own MLflow run: ``test/...`` metrics and the report folder as ``evaluation/``
  artifacts, so the MLflow UI compares runs and the model card reads what was recorded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cesagram.config import ConfigError, validated
from cesagram.data.schema import read_corpus_table
from cesagram.evaluation import plots
from cesagram.evaluation.conversations import data_provenance
from cesagram.evaluation.gates import check_gates
from cesagram.evaluation.latency import measure_latency
from cesagram.evaluation.scorers import (
    BaselineScorer,
    ModelUnderTest,
    TransformerScorer,
    resolve_model,
)
from cesagram.evaluation.settings import EvaluationSettings
from cesagram.evaluation.tasks import evaluate_indicators, evaluate_risk
from cesagram.taxonomy import INDICATOR_IDS
from cesagram.training.tracking import git_commit, log_metrics, tracking_uri, write_metrics_file

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
EVALUATION_ARTIFACT = "evaluation"


def evaluation_settings(cfg: DictConfig) -> EvaluationSettings:
    """The validated ``evaluation`` section of a run config."""
    values = OmegaConf.to_container(cfg.get("evaluation") or {}, resolve=True)
    return validated(EvaluationSettings, values, origin="evaluation.")


def _split(cfg: DictConfig, name: str) -> Any:
    path = Path(cfg.paths.splits_dir) / f"{name}.parquet"
    if not path.exists():
        raise ConfigError(f"{path}: not found; run the data stages first (`dvc repro split`)")
    return read_corpus_table(path)


def summarise(report: dict[str, Any]) -> dict[str, float]:
    """The flat numbers of a report: DVC metrics, MLflow metrics and what gates read."""
    summary: dict[str, float] = {}
    for name, interval in report.get("metrics", {}).items():
        summary[f"test/{name}"] = interval["estimate"]
        summary[f"test/{name}_low"] = interval["low"]
        summary[f"test/{name}_high"] = interval["high"]
    for language, metrics in report.get("per_language", {}).items():
        for name, interval in metrics.items():
            summary[f"language/{language}/{name}"] = interval["estimate"]
    calibration = report.get("calibration", {})
    for name in ("ece_before", "ece_after", "temperature"):
        if name in calibration:
            summary[f"calibration/{name}"] = calibration[name]
    by_language = report.get("language_calibration") or {}
    for language, measured in by_language.get("test", {}).items():
        for name in ("f_global", "f_language", "ece_global", "ece_language"):
            summary[f"language_calibration/{language}/{name}"] = measured[name]
    for strategy, entry in (report.get("cross_lingual") or {}).get("strategies", {}).items():
        for name, value in (entry.get("summary") or {}).items():
            if isinstance(value, float):
                summary[f"cross_lingual/{strategy}/{name}"] = value
    for column, section in report.get("fairness", {}).items():
        for name in (
            "equalized_odds_difference",
            "demographic_parity_difference",
            "tpr_gap",
            "min_tpr",
        ):
            if name in section:
                summary[f"fairness/{column}/{name}"] = section[name]
    rates = []
    for kind, result in report.get("robustness", {}).items():
        summary[f"robustness/{kind}"] = result["pass_rate"]
        if math.isfinite(result["pass_rate"]):
            rates.append(result["pass_rate"])
    if rates:
        summary["robustness/min_pass_rate"] = min(rates)
    for name in ("p50_ms", "p95_ms", "p99_ms", "throughput_per_s"):
        if name in report.get("latency", {}):
            summary[f"latency/{name}"] = report["latency"][name]
    for name, value in report.get("baseline", {}).items():
        summary[f"baseline/test/{name}"] = value
    return summary


def evaluate(
    cfg: DictConfig,
    task: str,
    *,
    version: str | None = None,
    run_id: str | None = None,
    log_to_mlflow: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate the ``task`` model; returns ``(report, objects)``.

    Without ``version``/``run_id`` the model the pipeline trained (``models/<task>``) is
    evaluated. The baseline of the same task (``models/baseline_<task>``), when present, is
    scored on the same inputs for comparison.
    """
    settings = evaluation_settings(cfg)
    uri = tracking_uri(cfg.logger.tracking_uri)
    models_dir = Path(cfg.paths.models_dir)
    reports_dir = Path(settings.reports_dir) / task
    with tempfile.TemporaryDirectory() as scratch:
        model = resolve_model(
            tracking_uri=uri,
            registered_model=cfg[task].registered_model,
            local_dir=models_dir / task,
            version=version,
            run_id=run_id,
            download_dir=Path(scratch),
        )
        scorer = TransformerScorer(model.directory)
    if scorer.info.task != task:
        raise ConfigError(
            f"{model.directory}: holds a {scorer.info.task} model, not a {task} model"
        )
    expected = list(INDICATOR_IDS) if task == "indicators" else ["risk"]
    if scorer.label_names != expected:
        raise ConfigError(
            f"{model.directory}: the model's label map {scorer.label_names} is not the "
            f"taxonomy's {expected}; retrain it on this taxonomy before evaluating"
        )
    baseline_dir = models_dir / f"baseline_{task}"
    baseline = BaselineScorer(baseline_dir, task) if baseline_dir.exists() else None
    val_table, test_table = _split(cfg, "val"), _split(cfg, settings.split)

    logger.info("evaluating %s (run %s, version %s)", task, model.run_id, model.version)
    if task == "indicators":
        section = evaluate_indicators(
            scorer,
            val_table,
            test_table,
            context_messages=int(scorer.info.context_messages or 0),
            settings=settings,
            baseline=baseline,
        )
    else:
        section = evaluate_risk(
            scorer,
            val_table,
            test_table,
            window=int(scorer.info.window or 50),
            settings=settings,
            baseline=baseline,
        )
    latency_inputs = section.pop("latency_inputs")
    latency = measure_latency(
        lambda texts: scorer.scores(texts, batch_size=settings.latency.batch_size),
        latency_inputs,
        calls=settings.latency.calls,
        warmup=settings.latency.warmup,
        batch_size=settings.latency.batch_size,
        batches=settings.latency.batches,
    )
    report: dict[str, Any] = {
        "task": task,
        "model": _model_section(model, scorer),
        "data": {
            **data_provenance(test_table, settings.split),
            "examples": section["examples"]["test"],
        },
        "train_data": _train_provenance(cfg),
        **section,
        "latency": latency,
        "evaluation": {"git_commit": git_commit(), "seed": settings.seed},
    }
    matrix = _cross_lingual(settings.reports_dir, task)
    if matrix is not None:
        report["cross_lingual"] = matrix
    summary = summarise(report)
    report["gates"] = check_gates(summary, settings.gates.get(task, []))
    summary["gates/passed"] = float(report["gates"]["passed"])
    report["plots"] = _draw(report, reports_dir)
    _write(report, summary, reports_dir, Path(cfg.paths.metrics_dir) / f"eval_{task}.json")
    if log_to_mlflow and model.run_id:
        _log(uri, model.run_id, summary, reports_dir, report["gates"]["passed"])
    if log_to_mlflow and baseline is not None and "baseline" in report:
        _log_baseline(
            uri, Path(cfg.paths.metrics_dir) / f"baseline_{task}.json", report["baseline"]
        )
    return report, {"summary": summary, "model": model, "reports_dir": reports_dir}


def _cross_lingual(reports_dir: str, task: str) -> dict[str, Any] | None:
    """The task's cross-lingual matrix, when one was measured (``--cross-lingual``): what the
    card shows, with the file's SHA-256 so a reader can tell which measurement it was."""
    from cesagram.evaluation.crosslingual import REPORT_FILE, matrix_dir

    path = matrix_dir(reports_dir, task) / REPORT_FILE
    if not path.exists():
        return None
    recorded = json.loads(path.read_text())
    cell_keys = (
        "source",
        "target",
        "in_language",
        "f1_source_threshold",
        "f1_target_threshold",
        "auroc",
        "auprc",
        "test_examples",
    )
    return {
        "file": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "metric": recorded.get("metric"),
        "sources": recorded.get("sources"),
        "targets": recorded.get("targets"),
        "winner": recorded.get("winner"),
        "provenance": recorded.get("provenance"),
        "strategies": {
            name: {
                "summary": entry.get("summary"),
                "cells": [
                    {key: cell.get(key) for key in cell_keys} for cell in entry.get("cells", [])
                ],
            }
            for name, entry in (recorded.get("strategies") or {}).items()
        },
    }


def _model_section(model: ModelUnderTest, scorer: TransformerScorer) -> dict[str, Any]:
    provenance = scorer.info.provenance
    return {
        "name": model.registered_model,
        "version": model.version,
        "run_id": model.run_id,
        "model_type": "transformer",
        "backbone": scorer.info.backbone.get("name"),
        "label_names": scorer.label_names,
        "git_commit": provenance.get("git_commit"),
        "data_sha256": provenance.get("data_sha256"),
        "dvc_data_md5": provenance.get("dvc_data_md5"),
        "max_length": scorer.info.max_length,
        "context_messages": scorer.info.context_messages,
        "window": scorer.info.window,
    }


def _train_provenance(cfg: DictConfig) -> dict[str, Any]:
    path = Path(cfg.paths.splits_dir) / "train.parquet"
    return data_provenance(read_corpus_table(path), "train") if path.exists() else {}


def _draw(report: dict[str, Any], folder: Path) -> dict[str, str]:
    drawn = {}
    calibration = report["calibration"]
    plots.reliability_plot(
        {
            "before": calibration["reliability_before"],
            f"after (T={calibration['temperature']:.2f})": calibration["reliability_after"],
        },
        folder / "reliability.png",
    )
    drawn["reliability"] = "reliability.png"
    headline = "macro_f1" if report["task"] == "indicators" else "auprc"
    languages = sorted(report["per_language"])
    plots.group_metric_plot(
        languages,
        [report["per_language"][language][headline] for language in languages],
        headline,
        folder / "per_language.png",
    )
    drawn["per_language"] = "per_language.png"
    if "per_indicator" in report:
        plots.confusion_plot(report["per_indicator"], folder / "confusion.png")
        drawn["confusion"] = "confusion.png"
    if "early_detection" in report:
        early = report["early_detection"]
        plots.risk_curves_plot(
            early["curves"],
            report["threshold"]["value"],
            early["skepticism"],
            folder / "risk_over_messages.png",
        )
        drawn["risk_over_messages"] = "risk_over_messages.png"
    return drawn


def _plot_data(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Tables for `dvc plots`: reliability (after calibration) and, for risk, the curves."""
    curve = report["calibration"]["reliability_after"]
    data = {
        "reliability.json": [
            {"mean_probability": p, "fraction_positive": f}
            for p, f in zip(curve["mean_probability"], curve["fraction_positive"], strict=True)
        ]
    }
    if "early_detection" in report:
        data["risk_over_messages.json"] = [
            {"conversation": c["conversation"], "message": i + 1, "score": score}
            for c in report["early_detection"]["curves"]
            for i, score in enumerate(c["scores"])
        ]
    return data


def json_ready(value: Any) -> Any:
    """NaN becomes null: JSON has no NaN, and null reads as "not defined"; NumPy scalars
    become Python numbers."""
    if isinstance(value, np.generic):
        return json_ready(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def _write(
    report: dict[str, Any], summary: dict[str, float], folder: Path, metrics_path: Path
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REPORT_FILE).write_text(json.dumps(json_ready(report), indent=2) + "\n")
    for name, rows in _plot_data(report).items():
        (folder / name).write_text(json.dumps(rows, indent=1) + "\n")
    write_metrics_file(metrics_path, summary, report["model"]["run_id"])


def _log(uri: str, run_id: str, summary: dict[str, float], folder: Path, passed: bool) -> None:
    from mlflow import MlflowClient

    log_metrics(uri, run_id, summary)
    client = MlflowClient(tracking_uri=uri)
    client.set_tag(run_id, "evaluated", "true")
    client.set_tag(run_id, "gates_passed", str(passed).lower())
    client.log_artifacts(run_id, str(folder), EVALUATION_ARTIFACT)


def _log_baseline(uri: str, baseline_metrics: Path, scores: dict[str, float]) -> None:
    """The baseline's test scores go to its own run too, so `cesagram compare` lists them."""
    if not baseline_metrics.exists():
        return
    run_id = json.loads(baseline_metrics.read_text()).get("mlflow_run_id")
    if run_id:
        log_metrics(uri, run_id, {f"test/{k}": v for k, v in scores.items()})
