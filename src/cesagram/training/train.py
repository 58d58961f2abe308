"""Training entry points: one typed function per model, called by the CLI, DVC and tests.

``train`` fine-tunes the transformer of a task and ``train_baseline`` fits its TF-IDF baseline;
both return ``(metric_dict, object_dict)`` so tests can call them directly. Every run lands in
MLflow with its resolved config, git commit, data fingerprint and backbone, and the exported
model is registered as a new version of the task's registered model.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from cesagram.config import ConfigError
from cesagram.models.backbones import BackboneError, backbone_info, load_tokenizer
from cesagram.models.baselines import TfidfIndicatorBaseline, TfidfRiskBaseline
from cesagram.models.encoder_classifier import ClassifierInfo, Task
from cesagram.training.batches import ClassificationDataModule
from cesagram.training.examples import positive_weights
from cesagram.training.inputs import TaskInputs, task_inputs
from cesagram.training.module import OBJECTIVES, ClassifierModule, score_task
from cesagram.training.tracking import (
    data_fingerprint,
    dvc_output_md5,
    experiment_id,
    git_commit,
    log_metrics,
    register_model_version,
    save_run_id,
    saved_run_id,
    tracking_uri,
    write_metrics_file,
)

logger = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"


def run_provenance(cfg: DictConfig, task: Task, backbone: dict[str, Any]) -> dict[str, str]:
    """The tags that tie a run to its code, data and backbone (every training strategy)."""
    splits_dir = Path(cfg.paths.splits_dir)
    return {
        "task": task,
        "git_commit": git_commit(),
        "data_sha256": data_fingerprint(splits_dir),
        "dvc_data_md5": dvc_output_md5(str(splits_dir)) or "unknown",
        "backbone": str(backbone.get("name")),
        "backbone_weights_sha256": str(backbone.get("weights_sha256")),
    }


def checked_backbone(cfg: DictConfig) -> tuple[Path, dict[str, Any]]:
    """The prepared backbone folder and its description, checked against the config."""
    backbone_dir = Path(cfg.paths.backbone_dir)
    try:
        backbone = backbone_info(backbone_dir)
    except BackboneError as error:
        raise ConfigError(str(error)) from error
    if backbone["name"] != cfg.backbone.name:
        raise ConfigError(
            f"{backbone_dir} holds backbone {backbone['name']!r} but the config asks for "
            f"{cfg.backbone.name!r}; run `cesagram backbone` (or `dvc repro`) first"
        )
    return backbone_dir, backbone


def classifier_info(
    cfg: DictConfig,
    task: Task,
    inputs: TaskInputs,
    backbone: dict[str, Any],
    provenance: dict[str, str],
    run_id: str,
) -> ClassifierInfo:
    """What a saved model records about its inputs and origin (thresholds are tuned later)."""
    settings = cfg[task]
    return ClassifierInfo(
        task=task,
        label_names=inputs.label_names,
        text_prefix=backbone["text_prefix"],
        max_length=settings.max_length,
        context_messages=settings.get("context_messages"),
        window=settings.get("window"),
        thresholds=[0.5] * len(inputs.label_names),
        backbone=backbone,
        provenance={**provenance, "mlflow_run_id": run_id},
    )


def _checkpoint_path(requested: str | None, checkpoint_dir: Path) -> str | None:
    if requested is None:
        return None
    path = checkpoint_dir / "last.ckpt" if requested == "last" else Path(requested)
    if not path.exists():
        raise ConfigError(
            f"ckpt_path={requested}: {path} not found; nothing to resume "
            "(drop ckpt_path to start a new run)"
        )
    return str(path)


def _callbacks(cfg: DictConfig, monitor: str, checkpoint_dir: Path) -> list[Callback]:
    callbacks: list[Callback] = []
    for name, settings in (cfg.get("callbacks") or {}).items():
        if settings is None:
            continue
        overrides: dict[str, Any] = {}
        if "monitor" in settings and settings.monitor is None:
            overrides["monitor"] = monitor
        if "dirpath" in settings and settings.dirpath is None:
            overrides["dirpath"] = str(checkpoint_dir)
        logger.info("Instantiating callback <%s>", name)
        callbacks.append(instantiate(settings, **overrides))
    return callbacks


def _mlflow_logger(cfg: DictConfig, task: Task, run_id: str | None) -> MLFlowLogger:
    # Builds a store client at once (MLflow 3): call it on global rank zero only, or ranks
    # started together (torchrun, srun) race to create a new SQLite store's tables.
    uri = tracking_uri(cfg.logger.tracking_uri)
    experiment_id(uri, cfg.logger.experiment_name, cfg.logger.artifact_location)
    return MLFlowLogger(
        experiment_name=cfg.logger.experiment_name,
        tracking_uri=uri,
        run_name=f"{task}-{cfg.backbone.name}",
        run_id=run_id,
        log_model=False,
    )


def _flat_params(cfg: DictConfig, task: Task) -> dict[str, Any]:
    # Only what shapes this model: the task section, backbone, trainer, data and seed.
    chosen = {key: cfg[key] for key in (task, "backbone", "trainer", "data") if key in cfg}
    chosen["seed"] = cfg.seed
    container = OmegaConf.to_container(OmegaConf.create(chosen), resolve=True)
    assert isinstance(container, dict)
    return flatten_params({str(key): value for key, value in container.items()})


def flatten_params(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted MLflow parameter names."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def class_weights(settings: Any, inputs: TaskInputs) -> list[float]:
    """The positive-class weights of the loss, from the training labels and the task config."""
    weights = positive_weights(
        inputs.train_labels.sum(axis=0),
        len(inputs.train),
        power=settings.class_weight_power,
        max_weight=settings.max_class_weight,
        names=inputs.label_names,
    )
    return [float(w) for w in weights]


def build_training(
    cfg: DictConfig,
    task: Task,
    inputs: TaskInputs,
    tokenizer: Any,
    backbone_dir: Path,
    backbone_name: str,
    initial_head: dict[str, torch.Tensor] | None = None,
    head_hidden_size: int | None = None,
) -> tuple[ClassificationDataModule, ClassifierModule]:
    """The datamodule and LightningModule of ``task`` as the config builds them.

    ``train`` and ``benchmarks/train_throughput.py`` share it, so the benchmark times exactly
    what training runs. ``head_hidden_size`` makes the head an MLP (``classifier_head``);
    ``initial_head``, a state dict of that head, replaces the random one, e.g. with a linear
    probe's (LP-FT).
    """
    settings = cfg[task]
    logger.info("Instantiating datamodule <ClassificationDataModule>")
    datamodule = ClassificationDataModule(
        train_examples=inputs.train,
        val_examples=inputs.val,
        tokenizer=tokenizer,
        max_length=settings.max_length,
        batch_size=settings.batch_size,
        eval_batch_size=settings.eval_batch_size,
        group_by_length=settings.group_by_length,
        seed=cfg.seed,
    )
    logger.info("Instantiating model <ClassifierModule> on backbone %s", backbone_name)
    module = ClassifierModule(
        backbone_dir=str(backbone_dir),
        task=task,
        label_names=inputs.label_names,
        optimizer=instantiate(settings.optimizer),
        warmup_ratio=settings.warmup_ratio,
        head_learning_rate=settings.get("head_learning_rate"),
        dropout=settings.dropout,
        freeze_word_embeddings=settings.freeze_word_embeddings,
        train_top_layers=settings.get("train_top_layers"),
        layer_decay=settings.get("layer_decay"),
        positive_weights=class_weights(settings, inputs),
        head_hidden_size=head_hidden_size,
    )
    if initial_head is not None:
        module.model.head.load_state_dict(initial_head)
    return datamodule, module


def train(
    cfg: DictConfig,
    task: Task,
    *,
    extra_callbacks: list[Callback] | None = None,
    parent_run_id: str | None = None,
    initial_head: dict[str, torch.Tensor] | None = None,
    head_hidden_size: int | None = None,
    strategy: str = "full",
    extra_metrics: dict[str, float] | None = None,
    extra_provenance: dict[str, str] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Fine-tune the ``task`` model (indicators or risk) as ``cfg`` says.

    ``extra_callbacks`` join the configured ones (tuning adds its pruning callback);
    ``parent_run_id`` makes the MLflow run a child of that run (a tuning study's run);
    ``initial_head`` (a state dict of the head, an MLP one when ``head_hidden_size`` is given)
    starts from a given head instead of a random one (LP-FT), ``strategy`` and
    ``extra_provenance`` are recorded with the run (tags) and the saved model, and
    ``extra_metrics`` are logged beside its own.
    Returns the final metrics (``val/...``) and the objects built (trainer, model, data).
    """
    settings = cfg[task]
    lightning.seed_everything(cfg.seed, workers=True)
    backbone_dir, backbone = checked_backbone(cfg)
    inputs = task_inputs(
        task,
        settings,
        Path(cfg.paths.splits_dir),
        text_prefix=backbone["text_prefix"],
        seed=cfg.seed,
    )
    tokenizer = load_tokenizer(backbone_dir)
    datamodule, module = build_training(
        cfg,
        task,
        inputs,
        tokenizer,
        backbone_dir,
        backbone["name"],
        initial_head,
        head_hidden_size,
    )

    output_dir = Path(cfg.paths.output_dir) / task
    checkpoint_dir = output_dir / "checkpoints"
    ckpt_path = _checkpoint_path(cfg.get("ckpt_path"), checkpoint_dir)
    run_id = saved_run_id(output_dir) if ckpt_path else None
    objective = f"val/{OBJECTIVES[task]}"
    logger.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer: lightning.Trainer = instantiate(
        cfg.trainer,
        logger=False,
        callbacks=[*_callbacks(cfg, objective, checkpoint_dir), *(extra_callbacks or [])],
        default_root_dir=str(output_dir),
    )
    # Only rank zero logs, so only rank zero gets the logger (the trainer knows its rank now).
    if trainer.is_global_zero:
        mlflow_logger = _mlflow_logger(cfg, task, run_id)
        trainer.logger = mlflow_logger
    provenance = {
        **run_provenance(cfg, task, backbone),
        "strategy": strategy,
        **(extra_provenance or {}),
    }
    if trainer.is_global_zero and ckpt_path is None and checkpoint_dir.exists():
        # A new run starts clean: stale checkpoints would shadow its own last.ckpt.
        shutil.rmtree(checkpoint_dir)
    if trainer.is_global_zero:
        save_run_id(output_dir, mlflow_logger.run_id or "")
        if run_id is None:
            mlflow_logger.log_hyperparams(_flat_params(cfg, task))
        for key, value in provenance.items():
            mlflow_logger.experiment.set_tag(mlflow_logger.run_id, key, value)
        if parent_run_id:
            mlflow_logger.experiment.set_tag(
                mlflow_logger.run_id, "mlflow.parentRunId", parent_run_id
            )
        _log_config(mlflow_logger, cfg)

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {
        name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1
    }
    objects: dict[str, Any] = {"trainer": trainer, "model": module, "datamodule": datamodule}
    if getattr(trainer, "fast_dev_run", False) or not trainer.is_global_zero:
        return metrics, objects

    best_path = _best_checkpoint(trainer)
    if best_path:
        module = ClassifierModule.load_from_checkpoint(
            best_path, optimizer=instantiate(settings.optimizer), map_location="cpu"
        )
        logger.info("Best checkpoint: %s", best_path)
    metrics[f"{objective}_best"] = module.best_objective
    if extra_metrics:
        metrics.update(extra_metrics)
        log_metrics(
            tracking_uri(cfg.logger.tracking_uri), mlflow_logger.run_id or "", extra_metrics
        )
    info = classifier_info(cfg, task, inputs, backbone, provenance, mlflow_logger.run_id or "")
    model_dir = Path(cfg.paths.models_dir) / task
    module.model.save(model_dir, tokenizer, info)
    run = mlflow_logger.experiment
    # Registration points at the artifact, so a registered model is always logged.
    if cfg.logger.get("log_model", True) or cfg.logger.register_models:
        run.log_artifacts(mlflow_logger.run_id, str(model_dir), MODEL_ARTIFACT)
    if cfg.logger.register_models:
        version = register_model_version(
            tracking_uri(cfg.logger.tracking_uri),
            settings.registered_model,
            mlflow_logger.run_id or "",
            MODEL_ARTIFACT,
        )
        run.set_tag(mlflow_logger.run_id, "registered_version", version)
        objects["registered_version"] = version
    write_metrics_file(
        Path(cfg.paths.metrics_dir) / f"train_{task}.json", metrics, mlflow_logger.run_id
    )
    objects["model_dir"] = model_dir
    objects["run_id"] = mlflow_logger.run_id
    return metrics, objects


def _best_checkpoint(trainer: lightning.Trainer) -> str | None:
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, ModelCheckpoint) and callback.best_model_path:
            return str(callback.best_model_path)
    return None


def _log_config(mlflow_logger: MLFlowLogger, cfg: DictConfig) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "config.yaml"
        path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        mlflow_logger.experiment.log_artifact(mlflow_logger.run_id, str(path))


def train_baseline(cfg: DictConfig, task: Task) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit the TF-IDF + logistic-regression baseline of ``task`` on the same examples."""
    from mlflow import MlflowClient

    lightning.seed_everything(cfg.seed, workers=True)
    inputs: TaskInputs = task_inputs(
        task, cfg[task], Path(cfg.paths.splits_dir), text_prefix="", seed=cfg.seed
    )
    baseline = (
        TfidfIndicatorBaseline(seed=cfg.seed)
        if task == "indicators"
        else TfidfRiskBaseline(seed=cfg.seed)
    )
    baseline.fit(
        inputs.train_texts,
        inputs.train_labels if task == "indicators" else inputs.train_labels[:, 0],
    )
    probabilities = baseline.predict_proba(inputs.val_texts).reshape(len(inputs.val), -1)
    scores = score_task(task, inputs.label_names, inputs.val_labels, probabilities)
    metrics = {f"val/{name}": value for name, value in scores.items()}
    model_dir = Path(cfg.paths.models_dir) / f"baseline_{task}"
    baseline.save(model_dir)

    # A client, not the fluent API: mlflow.set_tracking_uri would change the URI (and the
    # MLFLOW_TRACKING_URI variable) for the whole process and every subprocess it starts.
    uri = tracking_uri(cfg.logger.tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    exp = experiment_id(uri, cfg.logger.experiment_name, cfg.logger.artifact_location)
    run_id = client.create_run(exp, run_name=f"{task}-baseline-tfidf").info.run_id
    tags = {
        "task": task,
        "model_type": "baseline",
        "backbone": "tfidf",
        "git_commit": git_commit(),
        "data_sha256": data_fingerprint(Path(cfg.paths.splits_dir)),
    }
    for key, tag in tags.items():
        client.set_tag(run_id, key, tag)
    client.log_param(run_id, "examples.train", len(inputs.train))
    client.log_param(run_id, "examples.val", len(inputs.val))
    log_metrics(uri, run_id, metrics)
    client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT)
    client.set_terminated(run_id)
    write_metrics_file(Path(cfg.paths.metrics_dir) / f"baseline_{task}.json", metrics, run_id)
    return metrics, {"baseline": baseline, "model_dir": model_dir, "run_id": run_id}
