from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from cesagram.config import ConfigError
from cesagram.data.schema import write_corpus
from cesagram.models.encoder_classifier import EncoderClassifier, load_classifier, predict_proba
from cesagram.taxonomy import INDICATOR_IDS
from cesagram.training.train import train, train_baseline
from tests.tiny import tiny_config


@pytest.mark.parametrize("task", ["indicators", "risk"])
def test_fast_dev_run_of_each_model(tiny_workspace: Path, tmp_path: Path, task: str) -> None:
    cfg = tiny_config(tiny_workspace, tmp_path, "debug=fast_dev_run")
    metrics, objects = train(cfg, task)  # type: ignore[arg-type]
    assert objects["trainer"].global_step == 1
    assert "train/loss" in metrics
    assert not (tmp_path / "models" / task).exists()  # smoke runs export nothing


def test_training_tracks_exports_and_registers(tiny_workspace: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_workspace, tmp_path)
    metrics, objects = train(cfg, "indicators")
    assert {"val/macro_f1", "val/micro_f1", "val/macro_f1_best", "train/loss"} <= set(metrics)

    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run = client.get_run(objects["run_id"])
    assert run.data.tags["task"] == "indicators"
    assert run.data.tags["backbone"] == "tiny"
    assert len(run.data.tags["data_sha256"]) == 64
    assert run.data.params["indicators.context_messages"] == str(cfg.indicators.context_messages)
    artifacts = {item.path for item in client.list_artifacts(objects["run_id"], "model")}
    assert {"model/classifier.json", "model/head.safetensors", "model/encoder"} <= artifacts
    version = client.get_model_version("cesagram-indicators", objects["registered_version"])
    assert version.run_id == objects["run_id"]

    model, tokenizer, info = load_classifier(tmp_path / "models" / "indicators")
    assert info.label_names == list(INDICATOR_IDS)
    assert info.provenance["mlflow_run_id"] == objects["run_id"]
    probabilities = predict_proba(model, tokenizer, ["A: hi", "A: how old are you?"], max_length=32)
    assert probabilities.shape == (2, 10)
    saved = json.loads((tmp_path / "metrics" / "train_indicators.json").read_text())
    assert saved["mlflow_run_id"] == objects["run_id"] and "val/macro_f1" in saved


def test_resume_from_last_checkpoint_continues_the_same_run(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    _, first = train(tiny_config(tiny_workspace, tmp_path), "risk")
    resumed_cfg = tiny_config(tiny_workspace, tmp_path, "trainer.max_epochs=2", "ckpt_path=last")
    _, second = train(resumed_cfg, "risk")
    assert second["run_id"] == first["run_id"]
    assert second["trainer"].current_epoch == 2
    client = MlflowClient(tracking_uri=resumed_cfg.logger.tracking_uri)
    history = client.get_metric_history(first["run_id"], "val/auprc")
    assert len(history) == 2  # one validation per epoch, both in the one run


def test_resume_from_a_checkpoint_with_another_label_map_fails_fast(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    import torch

    train(tiny_config(tiny_workspace, tmp_path), "risk")
    last = tmp_path / "outputs" / "risk" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    checkpoint["hyper_parameters"]["label_names"] = ["grooming", "other"]
    torch.save(checkpoint, last)
    resumed = tiny_config(tiny_workspace, tmp_path, "trainer.max_epochs=2", "ckpt_path=last")
    with pytest.raises(
        ConfigError, match=r"trained on labels \['grooming', 'other'\].*start a new"
    ):
        train(resumed, "risk")


def test_resume_without_a_checkpoint_says_so(tiny_workspace: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_workspace, tmp_path, "ckpt_path=last")
    with pytest.raises(ConfigError, match=r"ckpt_path=last: .*last.ckpt not found; nothing to"):
        train(cfg, "risk")


def test_baseline_uses_the_same_examples_and_is_tracked(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(tiny_workspace, tmp_path)
    metrics, objects = train_baseline(cfg, "risk")
    assert {"val/auprc", "val/auroc", "val/f1", "val/f05"} <= set(metrics)
    run = MlflowClient(tracking_uri=cfg.logger.tracking_uri).get_run(objects["run_id"])
    assert run.data.tags["model_type"] == "baseline"
    assert 0 < int(run.data.params["examples.val"]) <= 32  # risk.max_val_examples


def test_backbone_of_another_name_fails_fast(tiny_workspace: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_workspace, tmp_path, "backbone.name=other")
    with pytest.raises(ConfigError, match="holds backbone 'tiny' but the config asks for 'other'"):
        train(cfg, "indicators")


def test_missing_backbone_says_how_to_prepare_it(tiny_workspace: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_workspace, tmp_path, f"paths.backbone_dir={tmp_path / 'none'}")
    with pytest.raises(ConfigError, match=r"not a prepared backbone .* run `cesagram backbone`"):
        train(cfg, "indicators")


def test_empty_split_fails_fast(tiny_workspace: Path, tmp_path: Path) -> None:
    splits = tmp_path / "splits"
    splits.mkdir()
    shutil.copy(tiny_workspace / "splits" / "train.parquet", splits / "train.parquet")
    write_corpus(splits / "val.parquet", [])
    cfg = tiny_config(tiny_workspace, tmp_path, f"paths.splits_dir={splits}")
    with pytest.raises(ConfigError, match="the val split gives no indicators examples"):
        train(cfg, "indicators")


def test_invalid_budget_names_the_setting(tiny_workspace: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_workspace, tmp_path, "indicators.max_examples=0")
    with pytest.raises(ConfigError, match="indicators: max_examples must be >= 1, got 0"):
        train(cfg, "indicators")


def test_train_top_layers_only_freezes_everything_below(tiny_workspace: Path) -> None:
    model = EncoderClassifier.from_backbone(tiny_workspace / "backbone", num_labels=10)
    model.train_top_layers_only(1)
    trainable = {
        name.split(".")[0:4][-1] for name, p in model.named_parameters() if p.requires_grad
    }
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert all(
        name.startswith(("encoder.embeddings", "encoder.encoder.layer.0.")) for name in frozen
    )
    assert any(name.startswith("encoder.embeddings") for name in frozen)
    assert "1" in trainable and model.head.weight.requires_grad
    everything = EncoderClassifier.from_backbone(tiny_workspace / "backbone", num_labels=10)
    everything.train_top_layers_only(5)  # more than the backbone has: all stay trainable
    assert all(p.requires_grad for p in everything.parameters())
    with pytest.raises(ValueError, match="train at least 1 layer"):
        everything.train_top_layers_only(0)
