"""Every experiment config runs: the real CLI prepares its backbone and fast_dev_runs each model."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cesagram.cli import app
from tests.tiny import ROOT, TINY_OVERRIDES

EXPERIMENTS = sorted(path.stem for path in (ROOT / "configs" / "experiment").glob("*.yaml"))
# The experiment chooses its own backbone; everything else stays tiny.
SMALL = [item for item in TINY_OVERRIDES if not item.startswith("backbone")]


def _invoke(*arguments: str) -> str:
    result = CliRunner().invoke(app, list(arguments))
    assert result.exit_code == 0, f"cesagram {' '.join(arguments)} failed:\n{result.output}"
    return result.output


def test_there_are_experiments_to_check() -> None:
    assert "minilm_en_quick" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_config_trains_each_model_in_a_fast_dev_run(
    experiment: str, tiny_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # the CLI composes configs/ from the project root
    paths = [
        f"paths.splits_dir={tiny_workspace / 'splits'}",
        f"paths.backbone_dir={tmp_path / 'backbone'}",
        f"paths.models_dir={tmp_path / 'models'}",
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"paths.metrics_dir={tmp_path / 'metrics'}",
        f"logger.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}",
        f"logger.artifact_location={tmp_path / 'mlartifacts'}",
    ]
    overrides = [f"experiment={experiment}", *SMALL, *paths]
    _invoke("backbone", *overrides)
    assert (tmp_path / "backbone" / "config.json").exists()
    for task in ("indicators", "risk"):
        output = _invoke("train", task, *overrides, "debug=fast_dev_run")
        assert f"{task}: validation" in output and "val/loss" in output
    assert not (tmp_path / "models" / "indicators").exists()  # smoke runs export nothing
