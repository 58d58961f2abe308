"""Export of a really trained, evaluated and promoted tiny model into a real BentoML store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cesagram.config import ConfigError
from cesagram.evaluation.evaluate import evaluate
from cesagram.evaluation.promotion import promote
from cesagram.export import ExportIntegrityError, export_to_bento, folder_sha256, verify_exported
from cesagram.training.train import train
from tests.tiny import tiny_config

LENIENT = "evaluation.gates.risk=[{name: quality, metric: test/auprc, min: 0.0}]"


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, tiny_workspace: Path, bentoml_store: Path
) -> dict[str, Any]:
    """A tiny risk model trained, evaluated, promoted and exported to the test store."""
    import bentoml

    root = tmp_path_factory.mktemp("export")
    cfg = tiny_config(tiny_workspace, root, LENIENT)
    _, objects = train(cfg, "risk")
    report, _ = evaluate(cfg, "risk")
    promote(cfg.logger.tracking_uri, "cesagram-risk", "risk", objects["registered_version"])
    result = export_to_bento(cfg.logger.tracking_uri, "cesagram-risk")
    stored = bentoml.models.get(result.tag)
    return {
        "cfg": cfg,
        "report": report,
        "objects": objects,
        "result": result,
        "info": stored.info,
        "store": bentoml_store,
    }


def test_the_champion_lands_in_the_store_with_its_run_hash_and_settings(
    exported: dict[str, Any],
) -> None:
    result, report = exported["result"], exported["report"]
    assert result.tag.startswith("cesagram-risk:")
    assert result.path.is_relative_to(exported["store"])  # never the user's store
    assert result.run_id == exported["objects"]["run_id"]
    assert result.version == exported["objects"]["registered_version"]
    assert exported["info"].metadata["model_sha256"] == result.sha256
    assert exported["info"].metadata["mlflow_run_id"] == result.run_id
    assert exported["info"].labels["task"] == "risk"
    settings = verify_exported(result.path, exported["info"].metadata["model_sha256"])
    assert settings["thresholds"] == pytest.approx(report["threshold"]["value"])
    assert settings["temperature"] == pytest.approx(report["temperature"])
    assert settings["skepticism"] == report["early_detection"]["skepticism"]
    assert ("language_calibration" in settings) == bool(report.get("language_calibration"))
    assert settings["window"] == 50 and settings["label_names"] == ["risk"]
    assert (result.path / "model" / "encoder" / "model.safetensors").exists()
    assert result.run_id in (result.path / "model_card.md").read_text()


def test_an_altered_model_is_refused(exported: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported["result"].path, copy)
    head = copy / "model" / "head.safetensors"
    head.write_bytes(head.read_bytes() + b"\0")
    with pytest.raises(ExportIntegrityError, match="refusing to load an altered model"):
        verify_exported(copy)


def test_serving_settings_cannot_be_swapped_alone(exported: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported["result"].path, copy)
    settings = json.loads((copy / "serving.json").read_text())
    settings["model_sha256"] = folder_sha256(copy / "model")  # still true of the files
    (copy / "serving.json").write_text(json.dumps(settings))
    with pytest.raises(ExportIntegrityError, match="metadata says"):
        verify_exported(copy, expected_sha256="0" * 64)


def test_without_a_champion_export_says_what_to_do(exported: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="promote a model first"):
        export_to_bento(exported["cfg"].logger.tracking_uri, "cesagram-indicators")


def test_when_no_onnx_variant_ships_pytorch_is_served_and_recorded(
    exported: dict[str, Any], tiny_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    import bentoml

    from cesagram.export import onnx

    # The real export and comparison, with a speed no quantised model reaches.
    strict = functools.partial(onnx.build_onnx_variant, min_speedup=1e9)
    monkeypatch.setattr(onnx, "build_onnx_variant", strict)
    result = export_to_bento(
        exported["cfg"].logger.tracking_uri, "cesagram-risk", splits_dir=tiny_workspace / "splits"
    )
    assert result.onnx is not None and not result.onnx["shipped"]
    assert "onnx_sha256" not in bentoml.models.get(result.tag).info.metadata
    settings = verify_exported(result.path, result.sha256)
    assert "PyTorch will be served" in settings["onnx"]["report"]["reason"]
    assert not (result.path / "onnx" / "model.onnx").exists()


# The evaluation's section, with its informational keys; only the decision values travel.
LANGUAGE_CALIBRATION = {
    "min_positives": 5,
    "min_examples": 30,
    "languages": {
        "en": {
            "thresholds": 0.42,
            "temperature": 1.3,
            "fitted_thresholds": ["risk"],
            "fitted_temperature": True,
            "val_examples": 120,
        },
        "de": {
            "thresholds": 0.61,
            "temperature": 1.1,
            "fitted_thresholds": [],
            "fitted_temperature": False,
            "val_examples": 12,
        },
    },
    "fallback": {
        "method": "language_balanced",
        "thresholds": 0.61,
        "temperature": 1.1,
        "reason": "measured on held-out languages",
        "measured": {"held_out_languages": ["de", "en"]},
    },
}


@pytest.mark.parametrize("section", [LANGUAGE_CALIBRATION, None], ids=["fitted", "absent"])
def test_the_per_language_table_travels_into_serving_json_only_when_evaluated(
    exported: dict[str, Any], monkeypatch: pytest.MonkeyPatch, section: dict[str, Any] | None
) -> None:
    from cesagram.cards import recorded
    from cesagram.export.bento import language_calibration

    real = recorded.recorded_card_inputs

    def with_section(*args: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes]]:
        report, run, plots = real(*args)
        return {**report, "language_calibration": section}, run, plots

    monkeypatch.setattr(recorded, "recorded_card_inputs", with_section)
    result = export_to_bento(exported["cfg"].logger.tracking_uri, "cesagram-risk")
    settings = verify_exported(result.path, result.sha256)
    # The global (pooled) calibration stays: ONNX parity and old services use it.
    assert settings["thresholds"] == pytest.approx(exported["report"]["threshold"]["value"])
    assert settings["temperature"] == pytest.approx(exported["report"]["temperature"])
    if section is None:
        assert "language_calibration" not in settings
        return
    assert settings["language_calibration"] == {
        "languages": {
            "de": {"thresholds": 0.61, "temperature": 1.1},
            "en": {"thresholds": 0.42, "temperature": 1.3},
        },
        "fallback": {"method": "language_balanced", "thresholds": 0.61, "temperature": 1.1},
    }
    table = language_calibration(settings)
    assert table.languages["en"].thresholds == (0.42,)
    assert table.fallback_method == "language_balanced"
