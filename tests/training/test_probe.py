from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient

from cesagram.models.encoder_classifier import load_classifier, predict_proba
from cesagram.taxonomy import INDICATOR_IDS
from cesagram.training.embeddings import embed_texts
from cesagram.training.probe import CONSTANT_RATE_MARGIN, fit_probe_head, train_linear_probe
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
    assert int(run.data.params["embedding_cache.misses"]) > 0
    assert run.data.metrics["val/macro_f1"] == metrics["val/macro_f1"]
    version = client.get_model_version("cesagram-indicators", objects["registered_version"])
    assert version.run_id == objects["run_id"]

    _, _, info = load_classifier(objects["model_dir"])
    assert info.label_names == list(INDICATOR_IDS)
    assert info.provenance["strategy"] == "linear_probe"
    assert info.provenance["mlflow_run_id"] == objects["run_id"]
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
