"""The linear probe: a frozen encoder's cached embeddings and a logistic or small-MLP head.

With a few hundred labelled conversations in one language, a frozen multilingual encoder with
a linear head keeps more of its cross-lingual transfer than full fine-tuning, and trains in
seconds on CPU. Embeddings come from the ``EmbeddingCache``, so reruns and tuning trials on the
same backbone and inputs compute nothing.

The ``logistic`` head (the default) is one scikit-learn logistic regression per label, on
standardised features. Both steps are affine, so they fold into the ``EncoderClassifier``'s
linear head: the saved folder is an ordinary classifier that evaluation, export and serving
load unchanged, and its probabilities are the probe's (which is also what lets LP-FT start
fine-tuning from it).

The ``mlp`` head is one hidden layer (Linear -> GELU -> Linear, all labels sharing it), fitted
with Adam on the standardised embeddings; the standardisation folds into its first layer the
same way, and the classifier is saved with that head (``head_hidden_size``).
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

from cesagram.config import ConfigError
from cesagram.models.backbones import load_tokenizer
from cesagram.models.encoder_classifier import EncoderClassifier, Task, classifier_head
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
HeadKind = Literal["logistic", "mlp"]
HEADS: tuple[HeadKind, ...] = ("logistic", "mlp")
# The probe's head kind, as a tag on probe and LP-FT runs and in the saved model's provenance.
HEAD_TAG = "probe_head"
# A label with one class in training gets a constant probability: its training rate, kept
# this far from 0 and 1 so the head's bias (its logit) stays finite.
CONSTANT_RATE_MARGIN = 1e-4
# lbfgs converges on standardised embeddings in tens of iterations; this is a safety margin.
MAX_ITER = 1000
# The MLP head: Adam on mini-batches of standardised embeddings, for whole epochs until
# MLP_MAX_STEPS steps, stopped earlier when the loss on a held-out slice of the training
# embeddings has not improved for MLP_PATIENCE epochs (the best epoch's weights are kept).
# A step budget rather than an epoch count: a few hundred examples get hundreds of epochs,
# 50,000 x 384 embeddings at most about 11 (about 1 s each on one core, 256 hidden units).
# The MLP head's width when the config does not give strategy.hidden_size.
MLP_HIDDEN_SIZE = 256
MLP_LEARNING_RATE = 1e-3
MLP_BATCH_SIZE = 256
MLP_MAX_STEPS = 2000
MLP_PATIENCE = 5
MLP_HELD_OUT = 0.1

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
    # A linear head: no hidden layer (``EncoderClassifier``'s ``head_hidden_size``).
    hidden_size: None = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The folded layer as a state dict of ``EncoderClassifier.head`` (float64)."""
        return {"weight": torch.from_numpy(self.weight), "bias": torch.from_numpy(self.bias)}

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
    _check_labels(features, labels, label_names)
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
                bias[column] = _constant_logit(name, target)
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


def _check_labels(
    features: npt.NDArray[Any], labels: npt.NDArray[Any], label_names: list[str]
) -> None:
    if labels.ndim != 2 or labels.shape != (len(features), len(label_names)):
        raise ValueError(
            f"expected labels [{len(features)}, {len(label_names)}] for {len(features)} "
            f"embeddings and labels {label_names}; found {labels.shape}"
        )


def _constant_logit(name: str, target: npt.NDArray[Any]) -> float:
    # A label with a single class in training: the logit of its clipped training rate.
    rate = float(np.clip(target.mean(), CONSTANT_RATE_MARGIN, 1 - CONSTANT_RATE_MARGIN))
    logger.warning(
        "linear probe: %s has a single class in training; it always scores %.4f", name, rate
    )
    return math.log(rate / (1.0 - rate))


def _folded(estimator: Pipeline) -> tuple[Floats, float]:
    # w . (x - mean) / scale + b  ==  (w / scale) . x + (b - w . mean / scale)
    scaler: StandardScaler = estimator.named_steps["scale"]
    regression: LogisticRegression = estimator.named_steps["logistic"]
    coefficients = np.asarray(regression.coef_[0], dtype=np.float64) / scaler.scale_
    intercept = float(regression.intercept_[0]) - float(coefficients @ scaler.mean_)
    return coefficients, intercept


@dataclass(frozen=True)
class MlpProbeHead:
    """A fitted MLP probe: the network on standardised embeddings, and its folded state.

    ``network`` (``classifier_head`` with ``hidden_size`` units) acts on
    ``(embeddings - mean) / scale``; ``state_dict()`` folds that standardisation into its first
    layer, so the saved head acts on raw pooled embeddings. A constant label's output row is
    zero, with the logit of its training rate as bias. ``epochs`` is how many epochs ran.
    """

    label_names: list[str]
    network: nn.Module
    mean: Floats
    scale: Floats
    hidden_size: int
    epochs: int

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The folded network as a state dict of ``EncoderClassifier.head`` (float64)."""
        # W . (x - mean) / scale + b  ==  (W / scale) . x + (b - (W / scale) . mean)
        state = {name: value.double() for name, value in self.network.state_dict().items()}
        first = state["0.weight"] / torch.from_numpy(self.scale)
        state["0.bias"] = state["0.bias"] - first @ torch.from_numpy(self.mean)
        state["0.weight"] = first
        return state

    @torch.no_grad()
    def logits(self, embeddings: npt.NDArray[np.floating[Any]]) -> Floats:
        """Logits [n, labels] of the folded head on raw embeddings (in float64)."""
        folded = classifier_head(len(self.mean), len(self.label_names), self.hidden_size)
        folded.double().load_state_dict(self.state_dict())
        raw = torch.from_numpy(np.asarray(embeddings, dtype=np.float64))
        result: Floats = folded(raw).numpy()
        return result

    @torch.no_grad()
    def predict_proba(self, embeddings: npt.NDArray[np.floating[Any]]) -> Floats:
        """Probabilities [n, labels] from the fitted network on standardised embeddings."""
        standardised = (np.asarray(embeddings, dtype=np.float64) - self.mean) / self.scale
        logits = self.network(torch.from_numpy(standardised.astype(np.float32)))
        result: Floats = torch.sigmoid(logits).double().numpy()
        return result


def fit_mlp_probe_head(
    embeddings: npt.NDArray[np.floating[Any]],
    labels: npt.NDArray[np.integer[Any]],
    label_names: list[str],
    *,
    hidden_size: int = MLP_HIDDEN_SIZE,
    C: float = 1.0,  # noqa: N803 (the logistic head's name, with the same meaning)
    class_weight: str | None = "balanced",
    seed: int = 0,
) -> MlpProbeHead:
    """An MLP head (one hidden layer of ``hidden_size``) for all label columns of ``labels``.

    The loss is binary cross-entropy per label; ``class_weight="balanced"`` weighs each label's
    positives by its negatives / positives count. ``C`` regularises as in the logistic head:
    the weights (not the biases) get the L2 penalty ``||W||^2 / (2 C n)`` per example, as Adam
    weight decay ``1 / (C n)``. A random ``MLP_HELD_OUT`` slice of the examples is held out
    for early stopping (see ``MLP_PATIENCE``), so the network never trains on it. The
    initialisation, the slice and the batches come from ``seed``, and the fit runs on one
    thread whatever the core count, so a rerun gives the same head. A label with a single
    class in training is left out of the loss and gets a constant output, as in
    ``fit_probe_head``.
    """
    if class_weight not in ("balanced", None):
        raise ValueError(f"class_weight={class_weight!r}: expected 'balanced' or None")
    if C <= 0:
        raise ValueError(f"C={C}: expected a positive inverse regularisation strength")
    features = np.asarray(embeddings, dtype=np.float64)
    _check_labels(features, labels, label_names)
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0  # a constant feature stays as it is
    inputs = torch.from_numpy(((features - mean) / scale).astype(np.float32))
    targets = torch.from_numpy(np.asarray(labels, dtype=np.float32))
    positives = targets.sum(dim=0)
    negatives = len(targets) - positives
    fitted = (positives > 0) & (negatives > 0)
    constants = {
        column: _constant_logit(name, labels[:, column])
        for column, name in enumerate(label_names)
        if not fitted[column]
    }
    positive_weight = torch.ones(len(label_names))
    if class_weight == "balanced":
        positive_weight[fitted] = negatives[fitted] / positives[fitted]
    criterion = nn.BCEWithLogitsLoss(pos_weight=positive_weight, reduction="none")
    mask = fitted.float()

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(inputs), generator=generator)
    held = int(len(inputs) * MLP_HELD_OUT)
    held_out, training = order[:held], order[held:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = classifier_head(inputs.shape[1], len(label_names), hidden_size)

    def loss(rows: torch.Tensor) -> torch.Tensor:
        per_label: torch.Tensor = criterion(network(inputs[rows]), targets[rows]) * mask
        return per_label.sum() / (len(rows) * mask.sum())

    parameters = list(network.named_parameters())
    optimizer = torch.optim.Adam(
        [
            {
                "params": [p for n, p in parameters if n.endswith("weight")],
                "weight_decay": 1.0 / (C * len(training)),
            },
            {"params": [p for n, p in parameters if n.endswith("bias")], "weight_decay": 0.0},
        ],
        lr=MLP_LEARNING_RATE,
    )
    best_loss, best_state, stale, epochs, steps = math.inf, network.state_dict(), 0, 0, 0
    threads = torch.get_num_threads()
    # One thread: the same summation order on any core count, and small matrices gain little.
    torch.set_num_threads(1)
    try:
        while fitted.any() and steps < MLP_MAX_STEPS and stale < MLP_PATIENCE:
            epochs += 1
            network.train()
            shuffled = training[torch.randperm(len(training), generator=generator)]
            for rows in torch.split(shuffled, MLP_BATCH_SIZE):
                optimizer.zero_grad()
                torch.autograd.backward(loss(rows))
                optimizer.step()
                steps += 1
            if held == 0:
                continue
            network.eval()
            with torch.no_grad():
                value = float(loss(held_out))
            if value < best_loss:
                best_loss, best_state, stale = value, copy.deepcopy(network.state_dict()), 0
            else:
                stale += 1
    finally:
        torch.set_num_threads(threads)
    if held > 0:
        network.load_state_dict(best_state)
    network.eval()
    output = network.get_submodule("2")
    assert isinstance(output, nn.Linear)
    with torch.no_grad():
        for column, logit in constants.items():
            output.weight[column] = 0.0
            output.bias[column] = logit
    logger.info(
        "MLP probe head: %d epochs, %d steps (held-out loss %.4f)", epochs, steps, best_loss
    )
    return MlpProbeHead(list(label_names), network, mean, scale, hidden_size, epochs)


FittedHead = ProbeHead | MlpProbeHead


def embedding_cache(cfg: DictConfig) -> EmbeddingCache:
    """The run's embedding cache: ``paths.embedding_cache_dir`` when configured, else
    ``<paths.output_dir>/embedding_cache``."""
    configured = cfg.paths.get("embedding_cache_dir")
    return EmbeddingCache(
        Path(configured) if configured else Path(cfg.paths.output_dir) / CACHE_FOLDER
    )


def probe_classifier(backbone_dir: Path, head: FittedHead) -> EncoderClassifier:
    """An ``EncoderClassifier`` on the backbone whose head is the probe's (folded)."""
    model = EncoderClassifier.from_backbone(
        backbone_dir, len(head.label_names), dropout=0.0, head_hidden_size=head.hidden_size
    )
    model.head.load_state_dict(head.state_dict())
    model.eval()
    return model


@dataclass(frozen=True)
class ProbeFit:
    """A probe fitted on a task's training examples, and its validation scores."""

    head: FittedHead
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
    head: HeadKind = "logistic",
    hidden_size: int = MLP_HIDDEN_SIZE,
) -> ProbeFit:
    """Embed the task's examples (cached), fit the probe head, score it on validation.

    ``head`` is ``logistic`` (``fit_probe_head``) or ``mlp`` (``fit_mlp_probe_head`` with
    ``hidden_size`` hidden units); ``C`` and ``class_weight`` go to either.
    """
    if head not in HEADS:
        raise ConfigError(f"strategy.head={head!r}: expected one of {', '.join(HEADS)}")
    if head == "mlp" and hidden_size < 1:
        raise ConfigError(f"strategy.hidden_size={hidden_size}: expected a positive width")
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
    logger.info(
        "Fitting the %s probe head of %s (C=%s, class_weight=%s)", head, task, C, class_weight
    )
    fitted: FittedHead
    if head == "mlp":
        fitted = fit_mlp_probe_head(
            train_embeddings,
            inputs.train_labels,
            inputs.label_names,
            hidden_size=hidden_size,
            C=C,
            class_weight=class_weight,
            seed=cfg.seed,
        )
    else:
        fitted = fit_probe_head(
            train_embeddings,
            inputs.train_labels,
            inputs.label_names,
            C=C,
            class_weight=class_weight,
            seed=cfg.seed,
        )
    probabilities = fitted.predict_proba(val_embeddings)
    scores = score_task(task, inputs.label_names, inputs.val_labels, probabilities)
    return ProbeFit(fitted, inputs, scores, cache, cache.last_stats, backbone_dir, backbone)


def train_linear_probe(
    cfg: DictConfig,
    task: Task,
    *,
    C: float = 1.0,  # noqa: N803 (scikit-learn's name for the inverse regularisation)
    class_weight: str | None = "balanced",
    head: HeadKind = "logistic",
    hidden_size: int = MLP_HIDDEN_SIZE,
    parent_run_id: str | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit the linear probe of ``task`` on frozen, cached embeddings; save, track, register.

    ``head``, ``hidden_size``, ``C`` and ``class_weight`` choose and fit the head (see
    ``fit_probe``); the head kind is the run's ``probe_head`` tag. ``parent_run_id`` makes the
    MLflow run a child of that run (a tuning study's). Returns the validation metrics
    (``val/<metric>``, ``val/<objective>_best``) and the objects built: ``head``
    (``ProbeHead`` or ``MlpProbeHead``), ``model`` (``EncoderClassifier``), ``inputs``,
    ``cache``, ``model_dir``, ``run_id`` and ``registered_version`` (None when the config does
    not register models).
    """
    from mlflow import MlflowClient
    from mlflow.entities import Param

    fitted = fit_probe(
        cfg, task, C=C, class_weight=class_weight, head=head, hidden_size=hidden_size
    )
    probe_head, inputs, scores = fitted.head, fitted.inputs, fitted.scores
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
    provenance = {**run_provenance(cfg, task, backbone), "strategy": STRATEGY, HEAD_TAG: head}
    tags = dict(provenance)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run_id: str = client.create_run(
        experiment, run_name=f"{task}-linear-probe", tags=tags
    ).info.run_id
    model = probe_classifier(backbone_dir, probe_head)
    try:
        registered_version = _save_and_track(
            cfg, task, client, run_id, inputs, backbone_dir, backbone, model, provenance
        )
        params = {
            **_probe_params(cfg, task),
            "probe.head": head,
            "probe.C": C,
            "probe.class_weight": class_weight,
            **_mlp_params(probe_head),
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
        "head": probe_head,
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


def _mlp_params(head: FittedHead) -> dict[str, Any]:
    if not isinstance(head, MlpProbeHead):
        return {}
    return {"probe.hidden_size": head.hidden_size, "probe.epochs": head.epochs}


def train_lp_ft(
    cfg: DictConfig,
    task: Task,
    *,
    C: float = 1.0,  # noqa: N803 (scikit-learn's name for the inverse regularisation)
    class_weight: str | None = "balanced",
    head: HeadKind = "logistic",
    hidden_size: int = MLP_HIDDEN_SIZE,
    learning_rate: float = 1e-5,
    parent_run_id: str | None = None,
    extra_callbacks: list[Callback] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """LP-FT: fit the linear probe, then fine-tune from its head at a small learning rate.

    Fine-tuning from a random head distorts the pretrained features while the head is still
    wrong; starting from the probe's head avoids that (Kumar et al. 2022). The probe's head is
    ``head`` (logistic, or an MLP of ``hidden_size``: the fine-tuned model keeps that shape,
    and the run's ``probe_head`` tag says which). The encoder and the head both learn at
    ``learning_rate``; the probe's validation scores are logged as ``probe/val/<metric>``, so
    the run shows where fine-tuning started.
    """
    from cesagram.training.train import train

    fitted = fit_probe(
        cfg, task, C=C, class_weight=class_weight, head=head, hidden_size=hidden_size
    )
    logger.info(
        "lp_ft %s: fine-tuning from the probe's %s head at learning rate %g, encoder and head "
        "(it replaces %s.optimizer.lr and %s.head_learning_rate)",
        task,
        head,
        learning_rate,
        task,
        task,
    )
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
        initial_head=fitted.head.state_dict(),
        head_hidden_size=fitted.head.hidden_size,
        strategy="lp_ft",
        extra_metrics={f"probe/val/{name}": value for name, value in fitted.scores.items()},
        extra_provenance={HEAD_TAG: head},
    )
