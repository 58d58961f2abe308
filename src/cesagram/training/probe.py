"""The linear probe: a frozen encoder's cached embeddings and a logistic-regression head.

With a few hundred labelled conversations in one language, a frozen multilingual encoder with
a linear head keeps more of its cross-lingual transfer than full fine-tuning, and trains in
seconds on CPU. Embeddings come from the ``EmbeddingCache``, so reruns and tuning trials on the
same backbone and inputs compute nothing.

The head is one scikit-learn logistic regression per label, on standardised features. Both
steps are affine, so they fold into the ``EncoderClassifier``'s linear head: the saved folder is
an ordinary classifier that evaluation, export and serving load unchanged, and its
probabilities are the probe's (which is also what lets LP-FT start fine-tuning from it).
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from cesagram.models.backbones import load_tokenizer
from cesagram.models.encoder_classifier import EncoderClassifier, Task
from cesagram.training.embeddings import EmbeddingCache, embed_texts
from cesagram.training.inputs import TaskInputs, task_inputs
from cesagram.training.module import OBJECTIVES, score_task
from cesagram.training.tracking import (
    experiment_id,
    log_metrics,
    register_model_version,
    tracking_uri,
    write_metrics_file,
)
from cesagram.training.train import (
    MODEL_ARTIFACT,
    checked_backbone,
    classifier_info,
    flatten_params,
    run_provenance,
)

logger = logging.getLogger(__name__)

STRATEGY = "linear_probe"
CACHE_FOLDER = "embedding_cache"
# A label with one class in training gets a constant probability: its training rate, kept
# this far from 0 and 1 so the head's bias (its logit) stays finite.
CONSTANT_RATE_MARGIN = 1e-4
# lbfgs converges on standardised embeddings in tens of iterations; this is a safety margin.
MAX_ITER = 1000

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ProbeHead:
    """A fitted probe: per-label scikit-learn estimators and the equivalent linear layer.

    ``weight`` [labels, hidden] and ``bias`` [labels] act on raw pooled embeddings (the
    standardisation is folded in); ``estimators`` holds None for a constant label.
    """

    label_names: list[str]
    estimators: tuple[Pipeline | None, ...]
    weight: Floats
    bias: Floats

    def logits(self, embeddings: npt.NDArray[np.floating[Any]]) -> Floats:
        """Logits [n, labels] of the folded linear layer."""
        result: Floats = np.asarray(embeddings, dtype=np.float64) @ self.weight.T + self.bias
        return result

    def predict_proba(self, embeddings: npt.NDArray[np.floating[Any]]) -> Floats:
        """Probabilities [n, labels] from the scikit-learn estimators (constants for None)."""
        probabilities = np.empty((len(embeddings), len(self.estimators)), dtype=np.float64)
        for column, estimator in enumerate(self.estimators):
            if estimator is None:
                probabilities[:, column] = 1.0 / (1.0 + math.exp(-self.bias[column]))
            else:
                # classes_ is sorted and always [0, 1] for a fitted label: column 1 is positive.
                probabilities[:, column] = estimator.predict_proba(embeddings)[:, 1]
        return probabilities


def fit_probe_head(
    embeddings: npt.NDArray[np.floating[Any]],
    labels: npt.NDArray[np.integer[Any]],
    label_names: list[str],
    *,
    C: float = 1.0,  # noqa: N803 (scikit-learn's name for the inverse regularisation)
    class_weight: str | None = "balanced",
    seed: int = 0,
) -> ProbeHead:
    """One standardised logistic regression per label column of ``labels`` [n, labels].

    A label with a single class in training is not fitted: its head has zero weights and the
    logit of its (clipped) training rate as bias, and a warning names it.
    """
    features = np.asarray(embeddings)
    if labels.ndim != 2 or labels.shape != (len(features), len(label_names)):
        raise ValueError(
            f"expected labels [{len(features)}, {len(label_names)}] for {len(features)} "
            f"embeddings and labels {label_names}; found {labels.shape}"
        )
    hidden = features.shape[1]
    weight = np.zeros((len(label_names), hidden), dtype=np.float64)
    bias = np.zeros(len(label_names), dtype=np.float64)
    estimators: list[Pipeline | None] = []
    # One thread: the problems are small, and thread hand-offs cost more than they save when
    # another process holds a core (as in the TF-IDF baseline).
    with threadpool_limits(limits=1):
        for column, name in enumerate(label_names):
            target = labels[:, column]
            if np.unique(target).size < 2:
                rate = float(np.clip(target.mean(), CONSTANT_RATE_MARGIN, 1 - CONSTANT_RATE_MARGIN))
                logger.warning(
                    "linear probe: %s has a single class in training; it always scores %.4f",
                    name,
                    rate,
                )
                bias[column] = math.log(rate / (1.0 - rate))
                estimators.append(None)
                continue
            estimator = Pipeline(
                [
                    ("scale", StandardScaler()),
                    (
                        "logistic",
                        LogisticRegression(
                            C=C, class_weight=class_weight, max_iter=MAX_ITER, random_state=seed
                        ),
                    ),
                ]
            ).fit(features, target)
            weight[column], bias[column] = _folded(estimator)
            estimators.append(estimator)
    return ProbeHead(list(label_names), tuple(estimators), weight, bias)


def _folded(estimator: Pipeline) -> tuple[Floats, float]:
    # w . (x - mean) / scale + b  ==  (w / scale) . x + (b - w . mean / scale)
    scaler: StandardScaler = estimator.named_steps["scale"]
    regression: LogisticRegression = estimator.named_steps["logistic"]
    coefficients = np.asarray(regression.coef_[0], dtype=np.float64) / scaler.scale_
    intercept = float(regression.intercept_[0]) - float(coefficients @ scaler.mean_)
    return coefficients, intercept


def embedding_cache(cfg: DictConfig) -> EmbeddingCache:
    """The run's embedding cache: ``paths.embedding_cache_dir`` when configured, else
    ``<paths.output_dir>/embedding_cache``."""
    configured = cfg.paths.get("embedding_cache_dir")
    return EmbeddingCache(
        Path(configured) if configured else Path(cfg.paths.output_dir) / CACHE_FOLDER
    )


def probe_classifier(backbone_dir: Path, head: ProbeHead) -> EncoderClassifier:
    """An ``EncoderClassifier`` on the backbone whose linear head is the probe's."""
    model = EncoderClassifier.from_backbone(backbone_dir, len(head.label_names), dropout=0.0)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(head.weight).to(model.head.weight.dtype))
        model.head.bias.copy_(torch.from_numpy(head.bias).to(model.head.bias.dtype))
    model.eval()
    return model


@dataclass(frozen=True)
class ProbeFit:
    """A probe fitted on a task's training examples, and its validation scores."""

    head: ProbeHead
    inputs: TaskInputs
    scores: dict[str, float]
    cache: EmbeddingCache
    cache_stats: Any
    backbone_dir: Path
    backbone: dict[str, Any]


def fit_probe(
    cfg: DictConfig,
    task: Task,
    *,
    C: float = 1.0,  # noqa: N803 (scikit-learn's name for the inverse regularisation)
    class_weight: str | None = "balanced",
) -> ProbeFit:
    """Embed the task's examples (cached), fit the probe head, score it on validation."""
    settings = cfg[task]
    backbone_dir, backbone = checked_backbone(cfg)
    inputs: TaskInputs = task_inputs(
        task,
        settings,
        Path(cfg.paths.splits_dir),
        text_prefix=backbone["text_prefix"],
        seed=cfg.seed,
    )
    cache = embedding_cache(cfg)
    # One call for both splits: the encoder is loaded at most once.
    texts = [*inputs.train_texts, *inputs.val_texts]
    embeddings = embed_texts(
        cache,
        backbone_dir,
        texts,
        max_length=settings.max_length,
        pooling="mean",
        batch_size=settings.eval_batch_size,
    )
    train_embeddings, val_embeddings = (
        embeddings[: len(inputs.train)],
        embeddings[len(inputs.train) :],
    )
    logger.info("Fitting the linear probe of %s (C=%s, class_weight=%s)", task, C, class_weight)
    head = fit_probe_head(
        train_embeddings,
        inputs.train_labels,
        inputs.label_names,
        C=C,
        class_weight=class_weight,
        seed=cfg.seed,
    )
    probabilities = head.predict_proba(val_embeddings)
    scores = score_task(task, inputs.label_names, inputs.val_labels, probabilities)
    return ProbeFit(head, inputs, scores, cache, cache.last_stats, backbone_dir, backbone)


def train_linear_probe(
    cfg: DictConfig,
    task: Task,
    *,
    C: float = 1.0,  # noqa: N803 (scikit-learn's name for the inverse regularisation)
    class_weight: str | None = "balanced",
    parent_run_id: str | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit the linear probe of ``task`` on frozen, cached embeddings; save, track, register.

    ``C`` and ``class_weight`` go to every logistic regression; ``parent_run_id`` makes the
    MLflow run a child of that run (a tuning study's). Returns the validation metrics
    (``val/<metric>``, ``val/<objective>_best``) and the objects built: ``head``
    (``ProbeHead``), ``model`` (``EncoderClassifier``), ``inputs``, ``cache``, ``model_dir``,
    ``run_id`` and ``registered_version`` (None when the config does not register models).
    """
    from mlflow import MlflowClient
    from mlflow.entities import Param

    fitted = fit_probe(cfg, task, C=C, class_weight=class_weight)
    head, inputs, scores = fitted.head, fitted.inputs, fitted.scores
    backbone_dir, backbone, cache, cache_stats = (
        fitted.backbone_dir,
        fitted.backbone,
        fitted.cache,
        fitted.cache_stats,
    )
    metrics = {f"val/{name}": value for name, value in scores.items()}
    objective = OBJECTIVES[task]
    # One fit, one evaluation: the best objective is the only one.
    metrics[f"val/{objective}_best"] = scores[objective]

    # A client, not the fluent API, which would change the tracking URI for the whole process.
    uri = tracking_uri(cfg.logger.tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = experiment_id(uri, cfg.logger.experiment_name, cfg.logger.artifact_location)
    provenance = {**run_provenance(cfg, task, backbone), "strategy": STRATEGY}
    tags = dict(provenance)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run_id: str = client.create_run(
        experiment, run_name=f"{task}-linear-probe", tags=tags
    ).info.run_id
    model = probe_classifier(backbone_dir, head)
    try:
        registered_version = _save_and_track(
            cfg, task, client, run_id, inputs, backbone_dir, backbone, model, provenance
        )
        params = {
            **_probe_params(cfg, task),
            "probe.C": C,
            "probe.class_weight": class_weight,
            "examples.train": len(inputs.train),
            "examples.val": len(inputs.val),
            "embedding_cache.hits": cache_stats.hits,
            "embedding_cache.misses": cache_stats.misses,
        }
        client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])
        log_metrics(uri, run_id, metrics)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    write_metrics_file(Path(cfg.paths.metrics_dir) / f"train_{task}.json", metrics, run_id)
    model_dir = Path(cfg.paths.models_dir) / task
    objects: dict[str, Any] = {
        "head": head,
        "model": model,
        "inputs": inputs,
        "cache": cache,
        "model_dir": model_dir,
        "run_id": run_id,
        "registered_version": registered_version,
    }
    return metrics, objects


def _save_and_track(
    cfg: DictConfig,
    task: Task,
    client: Any,
    run_id: str,
    inputs: TaskInputs,
    backbone_dir: Path,
    backbone: dict[str, Any],
    model: EncoderClassifier,
    provenance: dict[str, str],
) -> str | None:
    info = classifier_info(cfg, task, inputs, backbone, provenance, run_id)
    model_dir = Path(cfg.paths.models_dir) / task
    model.save(model_dir, load_tokenizer(backbone_dir), info)
    with tempfile.TemporaryDirectory() as scratch:
        config_path = Path(scratch) / "config.yaml"
        config_path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        client.log_artifact(run_id, str(config_path))
    # Registration points at the artifact, so a registered model is always logged.
    if cfg.logger.get("log_model", True) or cfg.logger.register_models:
        client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT)
    if not cfg.logger.register_models:
        return None
    version = register_model_version(
        uri=tracking_uri(cfg.logger.tracking_uri),
        name=cfg[task].registered_model,
        run_id=run_id,
        artifact_path=MODEL_ARTIFACT,
    )
    client.set_tag(run_id, "registered_version", version)
    return version


def _probe_params(cfg: DictConfig, task: Task) -> dict[str, Any]:
    # What shapes the probe: the task's input rendering, the backbone, the data and the seed
    # (not the trainer: nothing here is trained by gradient descent).
    chosen = {key: cfg[key] for key in (task, "backbone", "data") if key in cfg}
    chosen["seed"] = cfg.seed
    container = OmegaConf.to_container(OmegaConf.create(chosen), resolve=True)
    assert isinstance(container, dict)
    return flatten_params({str(key): value for key, value in container.items()})


def train_lp_ft(
    cfg: DictConfig,
    task: Task,
    *,
    C: float = 1.0,  # noqa: N803 (scikit-learn's name for the inverse regularisation)
    class_weight: str | None = "balanced",
    learning_rate: float = 1e-5,
    parent_run_id: str | None = None,
    extra_callbacks: list[Callback] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """LP-FT: fit the linear probe, then fine-tune from its head at a small learning rate.

    Fine-tuning from a random head distorts the pretrained features while the head is still
    wrong; starting from the probe's head avoids that (Kumar et al. 2022). The encoder and the
    head both learn at ``learning_rate``; the probe's validation scores are logged as
    ``probe/val/<metric>``, so the run shows where fine-tuning started.
    """
    from cesagram.training.train import train

    fitted = fit_probe(cfg, task, C=C, class_weight=class_weight)
    tuned = OmegaConf.merge(
        cfg,
        {task: {"optimizer": {"lr": learning_rate}, "head_learning_rate": learning_rate}},
    )
    assert isinstance(tuned, DictConfig)
    return train(
        tuned,
        task,
        parent_run_id=parent_run_id,
        extra_callbacks=extra_callbacks,
        initial_head=(fitted.head.weight, fitted.head.bias),
        strategy="lp_ft",
        extra_metrics={f"probe/val/{name}": value for name, value in fitted.scores.items()},
    )
