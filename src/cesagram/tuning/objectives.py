"""A finished trial's numbers: its validation metrics, the fairness gap and the latency.

Every training strategy returns the same metric names (``val/<metric>``,
``val/<objective>_best``) and saves an ordinary classifier folder, so fine-tuning, linear-probe
and LP-FT trials are measured alike.

The trainer logs quality every epoch (``val/macro_f1``, ``val/auprc``, with the best epoch's
value as ``..._best``). Two objectives are measured afterwards on the saved model and the
same validation examples:

- ``val/language_recall_gap``: the largest difference in recall (TPR) between languages, at
  the trained threshold 0.5 (indicators: the message-level decision "any indicator"; risk: the
  segment's flag), over languages with at least ``evaluation.min_group_size`` examples. With
  no language holding a positive the gap is undefined and counts as 1.0, the worst possible.
- ``val/latency_ms``: p95 milliseconds per message at batch 1, tokenisation included, with
  ``evaluation.latency`` settings (`cesagram.evaluation.latency`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cesagram.config import ConfigError
from cesagram.evaluation.fairness import group_metrics
from cesagram.evaluation.latency import measure_latency
from cesagram.evaluation.scorers import TransformerScorer
from cesagram.training.inputs import Example, label_matrix
from cesagram.tuning.search_space import LANGUAGE_RECALL_GAP, LATENCY_MS, SearchSettings

logger = logging.getLogger(__name__)

DECISION_THRESHOLD = 0.5
UNDEFINED_GAP = 1.0


def objective_value(metrics: Mapping[str, float], metric: str) -> float:
    """The value an objective takes: the best epoch's when the trainer tracks it, else the last."""
    if f"{metric}_best" in metrics:
        return metrics[f"{metric}_best"]
    if metric in metrics:
        return metrics[metric]
    logged = sorted(name for name in metrics if name.startswith("val/"))
    raise ConfigError(f"objective {metric} was not logged; the trial logged {logged}")


def trial_metrics(
    settings: SearchSettings, cfg: Any, metrics: Mapping[str, float], objects: Mapping[str, Any]
) -> dict[str, float]:
    """The trial's validation metrics plus the derived ones its objectives and gates need."""
    measured = {name: float(value) for name, value in metrics.items() if name.startswith("val/")}
    derived = settings.derived_metrics()
    if not derived:
        return measured
    if "model_dir" not in objects:
        raise ConfigError(
            f"{', '.join(derived)} need the trained model, but the run exported none "
            "(debug=fast_dev_run?)"
        )
    scorer = TransformerScorer(Path(objects["model_dir"]))
    examples = _validation_examples(objects)
    texts = [example.text for example in examples]
    if LANGUAGE_RECALL_GAP in derived:
        probabilities = scorer.scores(texts, batch_size=cfg[settings.task].eval_batch_size)
        measured[LANGUAGE_RECALL_GAP] = language_recall_gap(
            label_matrix(examples),
            probabilities,
            [example.language for example in examples],
            min_group_size=int(cfg.evaluation.min_group_size),
        )
    if LATENCY_MS in derived:
        latency = cfg.evaluation.latency
        timing = measure_latency(
            lambda batch: scorer.scores(batch, batch_size=len(batch)),
            texts,
            calls=int(latency.calls),
            warmup=int(latency.warmup),
            batch_size=int(latency.batch_size),
            batches=int(latency.batches),
        )
        measured[LATENCY_MS] = float(timing["p95_ms"])
    return measured


def _validation_examples(objects: Mapping[str, Any]) -> list[Example]:
    # Fine-tuning (full, lp_ft) returns its datamodule, the linear probe the inputs it fitted on:
    # the same validation examples either way (`task_inputs`).
    if "datamodule" in objects:
        return list(objects["datamodule"].val_examples)
    return list(objects["inputs"].val)


def language_recall_gap(
    labels: np.ndarray,
    probabilities: np.ndarray,
    languages: Sequence[str],
    *,
    min_group_size: int,
) -> float:
    """Largest minus smallest per-language recall of the "any label" decision at 0.5."""
    truth = labels.reshape(len(languages), -1).any(axis=1).astype(int)
    decided = (probabilities.reshape(len(languages), -1) >= DECISION_THRESHOLD).any(axis=1)
    table = group_metrics(truth, decided.astype(int), np.asarray(languages, dtype=object))
    recalls = table.loc[table["count"] >= min_group_size, "tpr"].dropna()
    if recalls.empty:
        logger.warning("no language has positives: recall gap undefined, counted as 1.0")
        return UNDEFINED_GAP
    gap = float(recalls.max() - recalls.min())
    return gap if math.isfinite(gap) else UNDEFINED_GAP
