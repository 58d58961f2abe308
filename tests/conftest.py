"""Shared test set-up: offline, no telemetry, a fixed pseudonymisation key."""

from __future__ import annotations

import os

import pytest

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


@pytest.fixture(autouse=True)
def _pseudonym_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CESAGRAM_PSEUDONYM_KEY", TEST_KEY)
