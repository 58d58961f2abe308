from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from omegaconf import DictConfig
from safetensors.torch import load_file
from torch import nn

from cesagram.config import ConfigError
from cesagram.models.encoder_classifier import (
    HEAD_FILE,
    classifier_head,
    load_classifier,
    predict_proba,
)
from cesagram.taxonomy import INDICATOR_IDS
from cesagram.training.embeddings import embed_texts
from cesagram.training.probe import (
    CONSTANT_RATE_MARGIN,
    fit_mlp_probe_head,
    fit_probe,
    fit_probe_head,
    train_linear_probe,
)
from tests.tiny import tiny_config


def _saved_model_matches_the_head(objects: dict[str, Any], backbone_dir: Path) -> None:
    """The saved folder, loaded as any classifier, scores like the scikit-learn head."""
    model, tokenizer, info = load_classifier(objects["model_dir"])
    val_texts = objects["inputs"].val_texts
    saved = predict_proba(model, tokenizer, val_texts, max_length=info.max_length)
    cache = objects["cache"]
    embeddings = embed_texts(cache, backbone_dir, val_texts, max_length=info.max_length)
    assert cache.last_stats.misses == 0  # the probe cached them
    np.testing.assert_allclose(saved, objects["head"].predict_proba(embeddings), atol=1e-5)


def test_indicator_probe_registers_a_standard_classifier(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(tiny_workspace, tmp_path)
    metrics, objects = train_linear_probe(cfg, "indicators")
    assert {"val/macro_f1", "val/micro_f1", "val/macro_f1_best"} <= set(metrics)
    assert metrics["val/macro_f1_best"] == metrics["val/macro_f1"]

    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run = client.get_run(objects["run_id"])
    assert run.info.run_name == "indicators-linear-probe"
    assert run.data.tags["strategy"] == "linear_probe"
    assert run.data.tags["backbone"] == "tiny"
    assert len(run.data.tags["data_sha256"]) == 64
    assert run.data.params["probe.C"] == "1.0"
    assert run.data.tags["probe_head"] == run.data.params["probe.head"] == "logistic"
    assert "probe.hidden_size" not in run.data.params
    assert int(run.data.params["embedding_cache.misses"]) > 0
    assert run.data.metrics["val/macro_f1"] == metrics["val/macro_f1"]
    version = client.get_model_version("cesagram-indicators", objects["registered_version"])
    assert version.run_id == objects["run_id"]

    _, _, info = load_classifier(objects["model_dir"])
    assert info.label_names == list(INDICATOR_IDS)
    assert info.provenance["strategy"] == "linear_probe"
    assert info.provenance["mlflow_run_id"] == objects["run_id"]
    # The logistic head is saved as before the MLP head existed: one linear layer.
    assert info.head_hidden_size is None
    assert set(load_file(objects["model_dir"] / HEAD_FILE)) == {"weight", "bias"}
    _saved_model_matches_the_head(objects, tiny_workspace / "backbone")
    saved = json.loads((tmp_path / "metrics" / "train_indicators.json").read_text())
    assert saved["mlflow_run_id"] == objects["run_id"] and "val/macro_f1" in saved


def test_risk_probe_and_a_rerun_computes_nothing(tiny_workspace: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_workspace, tmp_path, "logger.register_models=false")
    metrics, objects = train_linear_probe(cfg, "risk")
    assert {"val/auprc", "val/auroc", "val/f1", "val/f05", "val/auprc_best"} <= set(metrics)
    assert objects["registered_version"] is None
    _saved_model_matches_the_head(objects, tiny_workspace / "backbone")

    _, rerun = train_linear_probe(cfg, "risk", C=0.1)
    assert rerun["cache"].last_stats.misses == 0
    assert rerun["run_id"] != objects["run_id"]


def test_a_single_class_label_gets_a_constant_head() -> None:
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(40, 8)).astype(np.float32)
    labels = np.zeros((40, 2), dtype=np.int64)
    labels[:20, 0] = 1
    head = fit_probe_head(embeddings, labels, ["seen", "never_seen"])
    assert head.estimators[1] is None
    assert np.all(head.weight[1] == 0)
    assert math.isclose(head.bias[1], math.log(CONSTANT_RATE_MARGIN / (1 - CONSTANT_RATE_MARGIN)))
    # The folded linear layer gives the scikit-learn probabilities, constants included.
    folded = 1 / (1 + np.exp(-head.logits(embeddings)))
    np.testing.assert_allclose(folded, head.predict_proba(embeddings), atol=1e-6)


def test_an_mlp_probe_registers_a_classifier_that_reloads_with_identical_logits(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(tiny_workspace, tmp_path)
    metrics, objects = train_linear_probe(cfg, "indicators", head="mlp", hidden_size=16)
    assert {"val/macro_f1", "val/macro_f1_best"} <= set(metrics)
    run = MlflowClient(tracking_uri=cfg.logger.tracking_uri).get_run(objects["run_id"])
    assert run.data.tags["strategy"] == "linear_probe"
    assert run.data.tags["probe_head"] == run.data.params["probe.head"] == "mlp"
    assert run.data.params["probe.hidden_size"] == "16"
    assert int(run.data.params["probe.epochs"]) == objects["head"].epochs >= 1
    assert objects["registered_version"] == "1"

    model, tokenizer, info = load_classifier(objects["model_dir"])
    assert info.head_hidden_size == 16 and info.provenance["probe_head"] == "mlp"
    assert isinstance(model.head, nn.Sequential) and model.num_labels == len(INDICATOR_IDS)
    encoded = tokenizer(
        objects["inputs"].val_texts[:8],
        truncation=True,
        max_length=info.max_length,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        reloaded = model(encoded["input_ids"], encoded["attention_mask"])
        fitted = objects["model"](encoded["input_ids"], encoded["attention_mask"])
    assert torch.equal(reloaded, fitted)
    _saved_model_matches_the_head(objects, tiny_workspace / "backbone")


def _xor_problem() -> tuple[np.ndarray, np.ndarray]:
    """Off-centre, unevenly scaled features (the folded standardisation has work to do),
    a linear label, a label no linear head can learn, and a label never seen."""
    rng = np.random.default_rng(0)
    centre, spread = rng.normal(size=12), rng.uniform(0.01, 2.0, size=12)
    embeddings = (rng.normal(size=(1000, 12)) * spread + centre).astype(np.float32)
    standard = (embeddings - centre) / spread
    labels = np.zeros((1000, 3), dtype=np.int64)
    labels[:, 0] = standard[:, 0] > 0.5
    labels[:, 1] = standard[:, 1] * standard[:, 2] > 0
    return embeddings, labels


def test_the_folded_mlp_head_computes_the_fitted_network() -> None:
    embeddings, labels = _xor_problem()
    names = ["linear", "xor", "never_seen"]
    head = fit_mlp_probe_head(embeddings, labels, names, hidden_size=32, seed=0)
    standardised = ((embeddings - head.mean) / head.scale).astype(np.float32)
    with torch.no_grad():
        fitted = head.network(torch.from_numpy(standardised)).double().numpy()
    np.testing.assert_allclose(head.logits(embeddings), fitted, atol=1e-4)
    # The classifier's own (float32) head, loaded with the folded state, on raw embeddings.
    saved = classifier_head(12, len(names), 32)
    saved.load_state_dict(head.state_dict())
    with torch.no_grad():
        raw = saved(torch.from_numpy(embeddings)).double().numpy()
    np.testing.assert_allclose(raw, fitted, atol=1e-4)

    probabilities = head.predict_proba(embeddings)
    np.testing.assert_allclose(probabilities[:, 2], CONSTANT_RATE_MARGIN, rtol=1e-4)
    # The hidden layer learns what no logistic regression can.
    accuracy = ((probabilities > 0.5) == labels).mean(axis=0)
    logistic = (fit_probe_head(embeddings, labels, names).predict_proba(embeddings) > 0.5) == labels
    assert accuracy[0] > 0.9 and accuracy[1] > 0.9 > 0.6 > logistic.mean(axis=0)[1]


def test_the_mlp_head_fit_is_seeded() -> None:
    embeddings, labels = _xor_problem()
    names = ["linear", "xor", "never_seen"]
    first, again, other = (
        fit_mlp_probe_head(embeddings, labels, names, hidden_size=8, seed=seed).state_dict()
        for seed in (0, 0, 1)
    )
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["0.weight"], other["0.weight"])


def test_cesagram_train_fits_a_probe_with_strategy_linear_probe(
    tiny_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cesagram.cli import app
    from tests.tiny import ROOT, TINY_OVERRIDES

    monkeypatch.chdir(ROOT)  # the CLI composes configs/ from the project root
    paths = [
        f"paths.splits_dir={tiny_workspace / 'splits'}",
        f"paths.backbone_dir={tiny_workspace / 'backbone'}",
        f"paths.models_dir={tmp_path / 'models'}",
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"paths.metrics_dir={tmp_path / 'metrics'}",
        f"logger.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}",
        f"logger.artifact_location={tmp_path / 'mlartifacts'}",
    ]
    arguments = ["train", "indicators", *TINY_OVERRIDES, *paths, "strategy=linear_probe"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "indicators: validation" in result.output
    info = json.loads((tmp_path / "models" / "indicators" / "classifier.json").read_text())
    assert info["provenance"]["strategy"] == "linear_probe"
    assert (tmp_path / "outputs" / "embedding_cache").is_dir()


def test_an_unknown_probe_head_is_refused_before_embedding(tiny_cfg: DictConfig) -> None:
    with pytest.raises(ConfigError, match=r"strategy\.head='svm': expected one of logistic, mlp"):
        fit_probe(tiny_cfg, "risk", head="svm")
    with pytest.raises(ConfigError, match=r"strategy\.hidden_size=0"):
        fit_probe(tiny_cfg, "risk", head="mlp", hidden_size=0)
    assert not (Path(tiny_cfg.paths.output_dir) / "embedding_cache").exists()
