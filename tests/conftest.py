"""Shared test set-up: offline, no telemetry, a fixed pseudonymisation key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import DictConfig

# Set before any library reads them: tests must never reach a hub or send telemetry.
OFFLINE_ENVIRONMENT = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
os.environ.update(OFFLINE_ENVIRONMENT)

TEST_KEY = "test-key-0123456789"


@pytest.fixture(scope="session", autouse=True)
def bentoml_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One BentoML store for the whole run, never the user's ~/bentoml.

    BentoML fixes its store the first time it is used in a process, so tests cannot switch
    stores; every test (and every server it starts) shares this one.
    """
    home = tmp_path_factory.mktemp("bentoml")
    os.environ["BENTOML_HOME"] = str(home)
    return home


@pytest.fixture(autouse=True)
def _pseudonym_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CESAGRAM_PSEUDONYM_KEY", TEST_KEY)


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Splits of a small synthetic corpus and a tiny backbone, built once per session."""
    from tests.tiny import build_tiny_workspace

    return build_tiny_workspace(tmp_path_factory.mktemp("workspace"))


@pytest.fixture
def tiny_cfg(tiny_workspace: Path, tmp_path: Path) -> DictConfig:
    """Default tiny config for one test."""
    from tests.tiny import tiny_config

    return tiny_config(tiny_workspace, tmp_path)
