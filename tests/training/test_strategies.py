"""LP-FT starts from the probe's head; layer-wise learning-rate decay sets each layer's rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf

from cesagram.config import ConfigError, compose
from cesagram.models.backbones import load_tokenizer
from cesagram.models.encoder_classifier import load_classifier, predict_proba, transformer_layers
from cesagram.training.embeddings import embed_texts
from cesagram.training.module import score_task
from cesagram.training.probe import HeadKind, fit_probe, train_lp_ft
from cesagram.training.strategies import lp_ft_learning_rate, train_with_strategy
from cesagram.training.train import build_training
from tests.tiny import tiny_config


@pytest.mark.parametrize("head", ["logistic", "mlp"])
def test_lp_ft_starts_from_the_probe_head(tiny_cfg: DictConfig, head: HeadKind) -> None:
    """Before any fine-tuning step, the model scores validation exactly as the probe does."""
    fitted = fit_probe(tiny_cfg, "indicators", head=head, hidden_size=16)
    _, module = build_training(
        tiny_cfg,
        "indicators",
        fitted.inputs,
        load_tokenizer(fitted.backbone_dir),
        fitted.backbone_dir,
        "tiny",
        fitted.head.state_dict(),
        fitted.head.hidden_size,
    )
    assert module.model.head_hidden_size == (16 if head == "mlp" else None)
    texts = fitted.inputs.val_texts
    first = predict_proba(
        module.model,
        load_tokenizer(fitted.backbone_dir),
        texts,
        max_length=tiny_cfg.indicators.max_length,
    )
    embeddings = embed_texts(
        fitted.cache, fitted.backbone_dir, texts, max_length=tiny_cfg.indicators.max_length
    )
    assert fitted.cache.last_stats.misses == 0  # the probe's own cached embeddings
    probe = fitted.head.predict_proba(embeddings)
    np.testing.assert_allclose(first, probe, atol=1e-5)
    names = fitted.inputs.label_names
    labels = fitted.inputs.val_labels
    assert score_task("indicators", names, labels, first) == pytest.approx(fitted.scores)


def test_lp_ft_run_records_where_fine_tuning_started(tiny_workspace: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_workspace, tmp_path)
    metrics, objects = train_lp_ft(cfg, "risk", learning_rate=1e-5)
    run = MlflowClient(tracking_uri=cfg.logger.tracking_uri).get_run(objects["run_id"])
    assert run.data.tags["strategy"] == "lp_ft"
    assert run.data.params["risk.optimizer.lr"] == "1e-05"
    assert "probe/val/auprc" in run.data.metrics and "val/auprc_best" in metrics
    assert objects["registered_version"] == "1"
    assert run.data.tags["probe_head"] == "logistic"


def test_lp_ft_with_strategy_head_mlp_fine_tunes_and_saves_the_mlp_head(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(
        tiny_workspace,
        tmp_path,
        "strategy=lp_ft",
        "strategy.head=mlp",
        "strategy.hidden_size=8",
        "strategy.learning_rate=1e-3",
        "logger.register_models=false",
    )
    metrics, objects = train_with_strategy(cfg, "risk")
    run = MlflowClient(tracking_uri=cfg.logger.tracking_uri).get_run(objects["run_id"])
    assert run.data.tags["strategy"] == "lp_ft" and run.data.tags["probe_head"] == "mlp"
    assert "probe/val/auprc" in run.data.metrics and "val/auprc_best" in metrics
    model, _, info = load_classifier(objects["model_dir"])
    assert info.head_hidden_size == 8 and model.head_hidden_size == 8
    assert info.provenance["probe_head"] == "mlp"


def test_layer_decay_gives_lower_layers_smaller_learning_rates(tiny_cfg: DictConfig) -> None:
    from cesagram.training.inputs import task_inputs

    cfg = tiny_cfg.copy()
    cfg.indicators.layer_decay = 0.5
    cfg.indicators.train_top_layers = None
    cfg.indicators.freeze_word_embeddings = False
    backbone = Path(cfg.paths.backbone_dir)
    inputs = task_inputs(
        "indicators", cfg.indicators, Path(cfg.paths.splits_dir), text_prefix="", seed=0
    )
    _, module = build_training(cfg, "indicators", inputs, load_tokenizer(backbone), backbone, "t")
    base = cfg.indicators.optimizer.lr
    count = len(transformer_layers(module.model.encoder))
    groups = module._encoder_groups()
    rates = {id(p): group["lr"] for group in groups for p in group["params"]}
    trainable = [p for p in module.model.encoder.parameters() if p.requires_grad]
    assert len(rates) == len(trainable)  # every trainable parameter in exactly one group
    embeddings = module.model.encoder.get_input_embeddings().weight
    assert rates[id(embeddings)] == pytest.approx(base * 0.5**count)
    layers = transformer_layers(module.model.encoder)
    for index, layer in enumerate(layers):
        for parameter in layer.parameters():
            assert rates[id(parameter)] == pytest.approx(base * 0.5 ** (count - 1 - index))


def test_layer_decay_outside_zero_one_is_refused(tiny_cfg: DictConfig) -> None:
    from cesagram.training.module import ClassifierModule

    with pytest.raises(ValueError, match=r"layer_decay=1\.5"):
        ClassifierModule(
            backbone_dir=tiny_cfg.paths.backbone_dir,
            task="risk",
            label_names=["risk"],
            optimizer=lambda groups: None,  # type: ignore[arg-type,return-value]
            layer_decay=1.5,
        )


def test_lp_ft_learning_rate_is_the_task_s_own_unless_one_is_set() -> None:
    strategy = OmegaConf.create(compose(["strategy=lp_ft"])["strategy"])
    assert strategy.learning_rate is None  # the shipped config: a rate per task
    strategy.task_learning_rate = {"indicators": 3e-4, "risk": 1e-5}
    assert lp_ft_learning_rate(strategy, "indicators") == 3e-4
    assert lp_ft_learning_rate(strategy, "risk") == 1e-5
    strategy.learning_rate = 2e-5
    assert (
        lp_ft_learning_rate(strategy, "indicators") == lp_ft_learning_rate(strategy, "risk") == 2e-5
    )
    strategy.learning_rate = None
    strategy.task_learning_rate = {"indicators": 3e-4}
    with pytest.raises(ConfigError, match=r"strategy\.task_learning_rate\.risk"):
        lp_ft_learning_rate(strategy, "risk")
