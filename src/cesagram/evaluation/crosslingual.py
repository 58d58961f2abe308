"""The cross-lingual matrix: train on language A, test on language B.

A partner agency with labelled data in one language must know what a model trained on it is
worth in the others before deploying it there. ``cesagram evaluate <task> --cross-lingual``
answers that for every training strategy in ``evaluation.cross_lingual.strategies``:

- for each source language A, a model is trained on A's training conversations only (A's
  validation conversations give its validation metrics), through the same
  `train_with_strategy` as ``cesagram train``;
- its decision threshold(s) are chosen on A's validation conversations, exactly as
  ``cesagram evaluate`` chooses them;
- each target language B's test conversations are scored, giving one cell: F1 at A's threshold
  (what a partner gets deploying without labels in B), F1 at B's own validation threshold (what
  per-language thresholds recover), and the threshold-free AUROC and AUPRC.

Each strategy is summarised by its mean transfer F1 (cells whose target is not the source) and
the strategy that transfers best is named, with the rule that chose it. The matrix goes to
``reports/cross_lingual/<task>/cross_lingual.json`` and ``cross_lingual.png`` (outside the
evaluate stage's ``reports/<task>/``, which DVC replaces on every run) and to one MLflow parent
run, each trained model being a child run. Nothing here logs message text.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf, open_dict
from sklearn.metrics import average_precision_score, roc_auc_score

from cesagram.config import CONFIG_DIR, ConfigError, compose
from cesagram.data.schema import read_corpus_table
from cesagram.evaluation import plots
from cesagram.evaluation.conversations import conversations_by_id, data_provenance
from cesagram.evaluation.evaluate import evaluation_settings, json_ready
from cesagram.evaluation.metrics import (
    best_threshold,
    best_thresholds_per_indicator,
    indicator_metrics,
    risk_metrics,
)
from cesagram.evaluation.scorers import TransformerScorer
from cesagram.evaluation.settings import EvaluationSettings
from cesagram.models.encoder_classifier import Task
from cesagram.training.examples import indicator_examples, render_messages
from cesagram.training.strategies import STRATEGIES, train_with_strategy
from cesagram.training.tracking import (
    data_fingerprint,
    experiment_id,
    git_commit,
    log_metrics,
    tracking_uri,
)
from cesagram.training.train import checked_backbone, flatten_params

logger = logging.getLogger(__name__)

REPORT_FILE = "cross_lingual.json"
PLOT_FILE = "cross_lingual.png"


def matrix_dir(reports_dir: str | Path, task: str) -> Path:
    """Where the ``task`` matrix is written: ``<reports_dir>/cross_lingual/<task>/``."""
    return Path(reports_dir) / "cross_lingual" / task


ARTIFACT_PATH = "cross_lingual"
METRIC_PREFIX = "xling"
# Tags: the parent run names its task here, not in `task`, which `cesagram compare` lists.
TASK_TAG = "cross_lingual_task"
SOURCE_TAG = "cross_lingual_source"
WINNER_CRITERION = (
    "highest mean_transfer_f1 (F1, macro-F1 for indicators, at the source-language threshold, "
    "mean over the cells whose target language is not the source); a tie goes to the higher "
    "mean_transfer_auprc, then to the strategy listed first in evaluation.cross_lingual.strategies"
)
# Differences below this are float noise, not a better strategy (as in metrics.best_threshold).
_TIE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class LanguageExamples:
    """One language's rendered model inputs and their labels ([n, labels] or [n])."""

    texts: list[str]
    labels: npt.NDArray[np.int8]


# --------------------------------------------------------------------------------------------
# The public surface


def cross_lingual_matrix(
    cfg: DictConfig, task: Task, *, config_dir: Path = CONFIG_DIR
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train on each source language, test on each target language, for every strategy.

    ``config_dir`` is where a strategy other than ``cfg.strategy`` is composed from
    (``strategy=<name>``); ``cfg.strategy`` itself is used as configured, overrides included.
    Models are trained in a scratch folder, tracked as child runs of one parent run and never
    registered. Returns the report (what ``reports/cross_lingual/<task>/cross_lingual.json``
    holds, NaN as None) and the objects: ``reports_dir``, ``report_path``, ``plot_path``,
    ``parent_run_id`` and ``model_runs`` (``{strategy: {source: run_id}}``).
    """
    from mlflow import MlflowClient

    plan = _plan(cfg, task, config_dir)
    uri = tracking_uri(cfg.logger.tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = experiment_id(uri, cfg.logger.experiment_name, cfg.logger.artifact_location)
    parent_run_id: str = client.create_run(
        experiment, run_name=f"cross-lingual {task}", tags={TASK_TAG: task, **plan.provenance}
    ).info.run_id
    logger.info(
        "cross-lingual matrix of %s: strategies %s, sources %s, targets %s (MLflow run %s)",
        task,
        ", ".join(plan.strategies),
        ", ".join(plan.sources),
        ", ".join(plan.targets),
        parent_run_id,
    )
    try:
        results = _run_matrix(cfg, plan, client, parent_run_id)
        report = _report(cfg, plan, results, parent_run_id)
        reports_dir = matrix_dir(plan.settings.reports_dir, task)
        reports_dir.mkdir(parents=True, exist_ok=True)
        report_path = reports_dir / REPORT_FILE
        report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        plot_path = draw_matrix(report, reports_dir / PLOT_FILE)
        _log_parent(client, uri, parent_run_id, report, [report_path, plot_path])
    except BaseException:
        client.set_terminated(parent_run_id, status="FAILED")
        raise
    client.set_terminated(parent_run_id)
    return report, {
        "reports_dir": reports_dir,
        "report_path": report_path,
        "plot_path": plot_path,
        "parent_run_id": parent_run_id,
        "model_runs": {
            strategy: {run["source"]: run["run_id"] for run in result["runs"]}
            for strategy, result in results.items()
        },
    }


def summarise_cells(cells: Sequence[Mapping[str, Any]], train_seconds: float) -> dict[str, Any]:
    """One strategy's matrix in four numbers; undefined cells (None or NaN) are left out.

    ``mean_transfer_f1`` and ``mean_transfer_auprc`` average the cells whose target is not the
    source, ``in_language_f1`` the cells whose target is the source.
    """
    transfer = [cell for cell in cells if not cell["in_language"]]
    in_language = [cell for cell in cells if cell["in_language"]]
    return {
        "mean_transfer_f1": _mean(cell["f1_source_threshold"] for cell in transfer),
        "mean_transfer_f1_target_threshold": _mean(
            cell["f1_target_threshold"] for cell in transfer
        ),
        "mean_transfer_auprc": _mean(cell["auprc"] for cell in transfer),
        "in_language_f1": _mean(cell["f1_source_threshold"] for cell in in_language),
        "transfer_cells": len(transfer),
        "train_seconds": float(train_seconds),
    }


def choose_winner(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The strategy that transfers best, by `WINNER_CRITERION`, and what decided it.

    ``summaries`` maps strategy names, in their configured order, to `summarise_cells` results.
    ``decided_by`` is ``mean_transfer_f1``, ``mean_transfer_auprc`` (a tie on F1) or ``order``
    (a tie on both); ``strategy`` is None when no strategy has a defined mean transfer F1 (e.g.
    every target is a source language).
    """
    f1 = {name: _defined(summary.get("mean_transfer_f1")) for name, summary in summaries.items()}
    auprc = {
        name: _defined(summary.get("mean_transfer_auprc")) for name, summary in summaries.items()
    }
    candidates = [name for name, value in f1.items() if value is not None]
    if not candidates:
        return {
            "strategy": None,
            "criterion": WINNER_CRITERION,
            "decided_by": None,
            "reason": "no strategy has a transfer cell with a defined F1 "
            "(every target language is the source, or none could be scored)",
        }
    decided_by = "mean_transfer_f1"
    best_f1 = max(f1[name] or 0.0 for name in candidates)
    tied = [name for name in candidates if (f1[name] or 0.0) >= best_f1 - _TIE_TOLERANCE]
    if len(tied) > 1:
        decided_by = "mean_transfer_auprc"
        best_auprc = max(_or_minus_inf(auprc[name]) for name in tied)
        tied = [name for name in tied if _or_minus_inf(auprc[name]) >= best_auprc - _TIE_TOLERANCE]
        if len(tied) > 1:
            decided_by = "order"
    winner = tied[0]
    return {
        "strategy": winner,
        "criterion": WINNER_CRITERION,
        "decided_by": decided_by,
        "mean_transfer_f1": f1[winner],
        "mean_transfer_auprc": auprc[winner],
    }


def strategy_configs(
    cfg: DictConfig, names: Sequence[str], config_dir: Path = CONFIG_DIR
) -> dict[str, DictConfig]:
    """The ``strategy`` section of each named strategy, in order, duplicates dropped.

    ``cfg.strategy`` is kept as it is (with its overrides) when it is one of them; the others
    are composed from ``config_dir`` with ``strategy=<name>``.
    """
    chosen: dict[str, DictConfig] = {}
    current = cfg.get("strategy")
    for name in dict.fromkeys(names):
        if name not in STRATEGIES:
            raise ConfigError(
                f"evaluation.cross_lingual.strategies: {name!r} is not a strategy; expected "
                f"some of {', '.join(STRATEGIES)} (configs/strategy/)"
            )
        if current is not None and current.get("name") == name:
            section = OmegaConf.to_container(current, resolve=True)
        else:
            section = compose([f"strategy={name}"], config_dir)["strategy"]
        created = OmegaConf.create(section)
        assert isinstance(created, DictConfig)
        chosen[name] = created
    return chosen


def check_sources(sources: Sequence[str], train: pa.Table, val: pa.Table, splits_dir: Path) -> None:
    """Every source language needs training and validation conversations: say which are there."""
    for table, split in ((train, "train"), (val, "val")):
        present = _languages(table)
        for source in sources:
            if source not in present:
                raise ConfigError(
                    f"evaluation.cross_lingual.sources: no {split} conversations in language "
                    f"{source!r} in {splits_dir / f'{split}.parquet'}; languages present: "
                    f"{', '.join(present) or 'none'}"
                )


def write_language_splits(
    splits_dir: Path, tables: Mapping[str, pa.Table], language: str, out: Path
) -> Path:
    """``train.parquet`` and ``val.parquet`` of ``splits_dir`` holding ``language`` only."""
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        table = tables[split]
        kept = table.filter(pc.equal(table.column("language"), language))
        # The source file's schema (and its schema-version metadata) travels with the rows.
        pq.write_table(
            kept.cast(pq.read_schema(splits_dir / f"{split}.parquet")), out / f"{split}.parquet"
        )
    return out


def source_config(
    cfg: DictConfig, strategy: DictConfig, splits_dir: Path, run_dir: Path, scratch: Path
) -> DictConfig:
    """``cfg`` for one matrix model: ``strategy``, language splits, scratch outputs, no registry."""
    container = OmegaConf.to_container(cfg, resolve=True)
    run_cfg = OmegaConf.create(container)
    assert isinstance(run_cfg, DictConfig)
    with open_dict(run_cfg):
        run_cfg.strategy = strategy
        run_cfg.paths.splits_dir = str(splits_dir)
        run_cfg.paths.output_dir = str(run_dir / "outputs")
        run_cfg.paths.models_dir = str(run_dir / "models")
        run_cfg.paths.metrics_dir = str(run_dir / "metrics")
        # One cache for the whole matrix: the probe and LP-FT embed the same source texts.
        run_cfg.paths.embedding_cache_dir = cfg.paths.get("embedding_cache_dir") or str(
            scratch / "embedding_cache"
        )
        run_cfg.logger.register_models = False
        run_cfg.logger.log_model = False
        run_cfg.ckpt_path = None
    return run_cfg


def matrix_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The parent run's metrics: ``xling/<strategy>/<A>_to_<B>/<metric>`` and summaries.

    Never ``test/...``: `cesagram compare` lists runs by their test metrics.
    """
    metrics: dict[str, float] = {}
    for strategy, result in report["strategies"].items():
        for cell in result["cells"]:
            prefix = f"{METRIC_PREFIX}/{strategy}/{cell['source']}_to_{cell['target']}"
            for key, name in (
                ("f1_source_threshold", "f1"),
                ("f1_target_threshold", "f1_target_threshold"),
                ("auroc", "auroc"),
                ("auprc", "auprc"),
            ):
                if cell[key] is not None:
                    metrics[f"{prefix}/{name}"] = float(cell[key])
        for name, value in result["summary"].items():
            if value is not None:
                metrics[f"{METRIC_PREFIX}/{strategy}/{name}"] = float(value)
    return metrics


def draw_matrix(report: Mapping[str, Any], path: Path) -> Path:
    """One heatmap panel per strategy: F1 at the source threshold, sources x targets."""
    sources, targets = list(report["sources"]), list(report["targets"])
    panels = {}
    for strategy, result in report["strategies"].items():
        values = {
            (cell["source"], cell["target"]): cell["f1_source_threshold"]
            for cell in result["cells"]
        }
        transfer = result["summary"]["mean_transfer_f1"]
        title = f"{strategy} (mean transfer {transfer:.2f})" if transfer is not None else strategy
        panels[title] = [[values.get((s, t)) for t in targets] for s in sources]
    metric = "macro-F1" if report["task"] == "indicators" else "F1"
    return plots.cross_lingual_plot(
        panels, sources, targets, f"{report['task']}: {metric} at the source threshold", path
    )


# --------------------------------------------------------------------------------------------
# The steps of the matrix


@dataclass(frozen=True)
class _Plan:
    """What the matrix needs, checked before any model is trained."""

    task: Task
    settings: EvaluationSettings
    strategies: dict[str, DictConfig]
    sources: list[str]
    targets: list[str]
    splits_dir: Path
    tables: dict[str, pa.Table]
    val_examples: dict[str, LanguageExamples]
    test_examples: dict[str, LanguageExamples]
    provenance: dict[str, str]


def _plan(cfg: DictConfig, task: Task, config_dir: Path) -> _Plan:
    """Validate the settings, languages, trainer and backbone; render every language's inputs."""
    settings = evaluation_settings(cfg)
    _check_trainer(cfg)
    strategies = strategy_configs(cfg, settings.cross_lingual.strategies, config_dir)
    splits_dir = Path(cfg.paths.splits_dir)
    split = settings.split
    tables = {name: _read_split(splits_dir, name) for name in ("train", "val", split)}
    sources = list(dict.fromkeys(settings.cross_lingual.sources))
    check_sources(sources, tables["train"], tables["val"], splits_dir)
    targets = _targets(
        settings.cross_lingual.targets, tables[split], splits_dir / f"{split}.parquet"
    )
    _, backbone = checked_backbone(cfg)
    inputs = _Inputs(cfg, task, settings, str(backbone["text_prefix"]))
    val_examples = inputs.by_language(
        tables["val"], list(dict.fromkeys([*sources, *targets])), settings.max_val_messages
    )
    for source in sources:
        if source not in val_examples:
            raise ConfigError(
                f"{splits_dir / 'val.parquet'}: no labelled {task} examples in language "
                f"{source!r}, so no threshold can be chosen for it; drop it from "
                "evaluation.cross_lingual.sources"
            )
    test_examples = inputs.by_language(tables[split], targets, settings.max_messages)
    for language in targets:
        if language not in test_examples:
            raise ConfigError(
                f"{splits_dir / f'{split}.parquet'}: no labelled {task} examples in language "
                f"{language!r} (within evaluation.max_messages); drop it from "
                "evaluation.cross_lingual.targets"
            )
    provenance = {
        "git_commit": git_commit(),
        "backbone": str(backbone.get("name")),
        "backbone_weights_sha256": str(backbone.get("weights_sha256")),
        "data_sha256": data_fingerprint(splits_dir),
    }
    return _Plan(
        task,
        settings,
        strategies,
        sources,
        targets,
        splits_dir,
        tables,
        val_examples,
        test_examples,
        provenance,
    )


def _check_trainer(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    if trainer.get("fast_dev_run"):
        raise ConfigError(
            "trainer.fast_dev_run: the cross-lingual matrix scores saved models, and a "
            "fast_dev_run saves none; drop debug=fast_dev_run"
        )
    devices = trainer.get("devices", 1)
    if "ddp" in str(trainer.get("strategy")) or (isinstance(devices, int) and devices > 1):
        # Lightning's DDP launcher re-runs the command line: every rank would run the matrix.
        raise ConfigError(
            f"trainer.strategy={trainer.get('strategy')}, trainer.devices={devices}: the "
            "cross-lingual matrix trains on one device (trainer=cpu or trainer=gpu)"
        )


def _run_matrix(
    cfg: DictConfig, plan: _Plan, client: Any, parent_run_id: str
) -> dict[str, dict[str, Any]]:
    """Train and score every (strategy, source) model; its cells, runs and summary."""
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cesagram-cross-lingual-") as scratch_name:
        scratch = Path(scratch_name)
        source_splits = {
            source: write_language_splits(
                plan.splits_dir, plan.tables, source, scratch / "splits" / source
            )
            for source in plan.sources
        }
        for strategy, strategy_cfg in plan.strategies.items():
            runs: list[dict[str, Any]] = []
            cells: list[dict[str, Any]] = []
            for source in plan.sources:
                run_dir = scratch / "runs" / strategy / source
                run_cfg = source_config(cfg, strategy_cfg, source_splits[source], run_dir, scratch)
                run, source_cells = _train_and_score(run_cfg, plan, source, client, parent_run_id)
                runs.append(run)
                cells.extend(source_cells)
                shutil.rmtree(run_dir, ignore_errors=True)  # one saved model per run adds up
            results[strategy] = {
                "config": OmegaConf.to_container(strategy_cfg, resolve=True),
                "runs": runs,
                "cells": cells,
                "summary": summarise_cells(cells, sum(run["train_seconds"] for run in runs)),
            }
    return results


def _train_and_score(
    run_cfg: DictConfig, plan: _Plan, source: str, client: Any, parent_run_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train one model on ``source`` (a child run) and score every target with it."""
    task = plan.task
    logger.info("training %s on %s (%s)", task, source, run_cfg.strategy.name)
    started = time.perf_counter()
    metrics, objects = train_with_strategy(run_cfg, task, parent_run_id=parent_run_id)
    seconds = time.perf_counter() - started
    run_id = str(objects["run_id"])
    client.set_tag(run_id, SOURCE_TAG, source)
    scorer = TransformerScorer(Path(objects["model_dir"]), device=_scoring_device(run_cfg))
    cells = _score_cells(
        scorer,
        task,
        source,
        plan.targets,
        plan.val_examples,
        plan.test_examples,
        plan.settings,
        batch_size=int(run_cfg[task].eval_batch_size),
    )
    train_table = read_corpus_table(Path(run_cfg.paths.splits_dir) / "train.parquet")
    run = {
        "source": source,
        "run_id": run_id,
        "train_seconds": seconds,
        "val_metrics": {
            name: value for name, value in sorted(metrics.items()) if name.startswith("val/")
        },
        "train_data": data_provenance(train_table, "train"),
    }
    return run, cells


def _report(
    cfg: DictConfig, plan: _Plan, results: dict[str, dict[str, Any]], parent_run_id: str
) -> dict[str, Any]:
    split = plan.settings.split
    report: dict[str, Any] = json_ready(
        {
            "task": plan.task,
            "metric": "macro_f1" if plan.task == "indicators" else "f1",
            "sources": plan.sources,
            "targets": plan.targets,
            "strategies": results,
            "winner": choose_winner({name: result["summary"] for name, result in results.items()}),
            "thresholds": _threshold_rule(plan.task, plan.settings),
            "data": {
                "train": data_provenance(plan.tables["train"], "train"),
                "val": data_provenance(plan.tables["val"], "val"),
                "test": data_provenance(plan.tables[split], split),
            },
            "settings": _settings_used(cfg, plan.task, plan.settings),
            "provenance": {**plan.provenance, "mlflow_run_id": parent_run_id},
            "plots": {"matrix": PLOT_FILE},
        }
    )
    return report


def _log_parent(
    client: Any, uri: str, run_id: str, report: dict[str, Any], files: Sequence[Path]
) -> None:
    from mlflow.entities import Param

    params = flatten_params({"cross_lingual": report["settings"]})
    client.log_batch(
        run_id,
        # MLflow caps a parameter value at 6000 characters.
        params=[Param(key, str(value)[:6000]) for key, value in sorted(params.items())],
    )
    log_metrics(uri, run_id, matrix_metrics(report))
    client.set_tag(run_id, "winner", str(report["winner"]["strategy"]))
    for path in files:
        client.log_artifact(run_id, str(path), ARTIFACT_PATH)


# --------------------------------------------------------------------------------------------
# Inputs, thresholds and cells


class _Inputs:
    """Renders a split's rows as the evaluation does for this task, grouped by language."""

    def __init__(self, cfg: DictConfig, task: Task, settings: EvaluationSettings, prefix: str):
        self.task = task
        self.prefix = prefix
        self.seed = settings.seed
        self.context_messages = int(cfg[task].get("context_messages") or 0)
        self.window = int(cfg[task].get("window") or 50)

    def by_language(
        self, table: pa.Table, languages: Sequence[str], limit: int | None
    ) -> dict[str, LanguageExamples]:
        """The examples of ``languages`` in ``table``, by language; none: left out.

        Indicators: one example per message, at most ``limit`` over all these languages
        (seeded, as `evaluate` samples a split); risk: the last window of every labelled
        conversation, `evaluate`'s whole-conversation view.
        """
        rows = table.filter(pc.is_in(table.column("language"), pa.array(list(languages))))
        texts: dict[str, list[str]] = {}
        labels: dict[str, list[Any]] = {}
        if self.task == "indicators":
            for example in indicator_examples(
                rows,
                context_messages=self.context_messages,
                prefix=self.prefix,
                max_examples=limit,
                seed=self.seed,
            ):
                texts.setdefault(example.language, []).append(example.text)
                labels.setdefault(example.language, []).append(example.labels)
        else:
            for view in conversations_by_id(rows).values():
                if view.risk is None:
                    continue
                window = slice(-self.window, None)
                rendered = render_messages(
                    view.authors[window], view.texts[window], prefix=self.prefix
                )
                texts.setdefault(view.language, []).append(rendered)
                labels.setdefault(view.language, []).append(view.risk)
        return {
            language: LanguageExamples(texts[language], np.asarray(labels[language], np.int8))
            for language in languages
            if language in texts
        }


def _score_cells(
    scorer: TransformerScorer,
    task: Task,
    source: str,
    targets: Sequence[str],
    val_examples: Mapping[str, LanguageExamples],
    test_examples: Mapping[str, LanguageExamples],
    settings: EvaluationSettings,
    *,
    batch_size: int,
) -> list[dict[str, Any]]:
    """Score with one model what its cells need; one cell per target.

    Validation rows of the source (its threshold) and of each target (the target's own
    threshold), test rows of each target; one `scores` call, so batches stay full.
    """
    batches = {
        ("val", language): val_examples[language]
        for language in dict.fromkeys([source, *targets])
        if language in val_examples
    }
    batches.update({("test", language): test_examples[language] for language in targets})
    texts = [text for examples in batches.values() for text in examples.texts]
    logger.info("scoring %d inputs (%d languages)", len(texts), len(targets))
    every = scorer.scores(texts, batch_size=batch_size)
    scores: dict[tuple[str, str], npt.NDArray[np.float64]] = {}
    start = 0
    for key, examples in batches.items():
        chunk = every[start : start + len(examples.texts)]
        scores[key] = chunk if task == "indicators" else chunk[:, 0]
        start += len(examples.texts)

    names = scorer.label_names
    source_threshold = _threshold(
        task, val_examples[source].labels, scores[("val", source)], settings, names
    )
    cells = []
    for target in targets:
        test = test_examples[target]
        target_val = val_examples.get(target)
        if target == source:
            target_threshold: Any = source_threshold
        elif target_val is None:
            target_threshold = None  # no validation rows in B: no per-language threshold
        else:
            target_threshold = _threshold(
                task, target_val.labels, scores[("val", target)], settings, names
            )
        cells.append(
            {
                "source": source,
                "target": target,
                "in_language": target == source,
                **_cell_metrics(
                    task,
                    test.labels,
                    scores[("test", target)],
                    source_threshold,
                    target_threshold,
                    names,
                ),
                "source_threshold": _threshold_value(source_threshold, names),
                "target_threshold": _threshold_value(target_threshold, names),
                "test_examples": len(test.texts),
                "target_val_examples": len(target_val.texts) if target_val is not None else 0,
            }
        )
    return cells


def _threshold(
    task: Task,
    labels: npt.NDArray[np.int8],
    scores: npt.NDArray[np.float64],
    settings: EvaluationSettings,
    names: Sequence[str],
) -> Any:
    """What `evaluate` chooses on validation: per-label F-beta thresholds or one risk threshold."""
    if task == "indicators":
        return best_thresholds_per_indicator(
            labels, scores, beta=settings.indicator_threshold_beta, label_names=names
        )
    return best_threshold(labels, scores, beta=settings.threshold_beta)


def _cell_metrics(
    task: Task,
    labels: npt.NDArray[np.int8],
    scores: npt.NDArray[np.float64],
    source_threshold: Any,
    target_threshold: Any,
    names: Sequence[str],
) -> dict[str, Any]:
    if task == "indicators":
        at_source = indicator_metrics(labels, scores, source_threshold, label_names=names)
        at_target = (
            indicator_metrics(labels, scores, target_threshold, label_names=names)
            if target_threshold is not None
            else None
        )
        # Macro over the labels this target can rank: both classes present in its test rows.
        ranked = [j for j in range(labels.shape[1]) if 0 < labels[:, j].sum() < len(labels)]
        return {
            "f1_source_threshold": at_source["macro_f1"],
            "f1_target_threshold": at_target["macro_f1"] if at_target else None,
            "auroc": _mean(float(roc_auc_score(labels[:, j], scores[:, j])) for j in ranked),
            "auprc": _mean(
                float(average_precision_score(labels[:, j], scores[:, j])) for j in ranked
            ),
            "ranked_labels": len(ranked),
            "positives": int(labels.any(axis=1).sum()),
        }
    at_source = risk_metrics(labels, scores, float(source_threshold))
    at_target = (
        risk_metrics(labels, scores, float(target_threshold))
        if target_threshold is not None
        else None
    )
    return {
        "f1_source_threshold": at_source["f1"],
        "f1_target_threshold": at_target["f1"] if at_target else None,
        "auroc": at_source["auroc"],
        "auprc": at_source["auprc"],
        "ranked_labels": int(0 < labels.sum() < len(labels)),
        "positives": int(labels.sum()),
    }


def _threshold_value(threshold: Any, names: Sequence[str]) -> Any:
    if threshold is None:
        return None
    if isinstance(threshold, np.ndarray):
        return {name: float(value) for name, value in zip(names, threshold, strict=True)}
    return float(threshold)


def _threshold_rule(task: Task, settings: EvaluationSettings) -> dict[str, Any]:
    beta = settings.indicator_threshold_beta if task == "indicators" else settings.threshold_beta
    return {
        "objective": f"f{beta:g}",
        "per": "indicator" if task == "indicators" else "model",
        "source": "chosen on the source language's validation rows",
        "target": "chosen on the target language's validation rows (null: it has none)",
    }


# --------------------------------------------------------------------------------------------
# Small helpers


def _read_split(splits_dir: Path, name: str) -> pa.Table:
    path = splits_dir / f"{name}.parquet"
    if not path.exists():
        raise ConfigError(f"{path}: not found; run the data stages first (`dvc repro split`)")
    return read_corpus_table(path)


def _languages(table: pa.Table) -> list[str]:
    return sorted({str(code) for code in table.column("language").to_pylist()})


def _targets(requested: Sequence[str] | None, test: pa.Table, test_path: Path) -> list[str]:
    present = _languages(test)
    if requested is None:
        return present
    for language in requested:
        if language not in present:
            raise ConfigError(
                f"evaluation.cross_lingual.targets: no conversations in language {language!r} "
                f"in {test_path}; languages present: {', '.join(present) or 'none'}"
            )
    return list(dict.fromkeys(requested))


def _settings_used(cfg: DictConfig, task: Task, settings: EvaluationSettings) -> dict[str, Any]:
    section = OmegaConf.to_container(cfg[task], resolve=True)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(section, dict) and isinstance(trainer, dict)
    return {
        **settings.cross_lingual.model_dump(),
        "split": settings.split,
        "threshold_beta": settings.threshold_beta,
        "indicator_threshold_beta": settings.indicator_threshold_beta,
        "max_messages": settings.max_messages,
        "max_val_messages": settings.max_val_messages,
        "evaluation_seed": settings.seed,
        "seed": cfg.seed,
        "backbone": cfg.backbone.name,
        task: section,
        "trainer": {
            key: trainer.get(key)
            for key in ("accelerator", "devices", "precision", "max_epochs")
            if key in trainer
        },
    }


def _scoring_device(cfg: DictConfig) -> str:
    import torch

    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    return "cuda" if accelerator in {"gpu", "cuda", "auto"} and torch.cuda.is_available() else "cpu"


def _defined(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _or_minus_inf(value: float | None) -> float:
    return -math.inf if value is None else value


def _mean(values: Iterable[Any]) -> float | None:
    defined = [number for number in (_defined(value) for value in values) if number is not None]
    return float(np.mean(defined)) if defined else None
