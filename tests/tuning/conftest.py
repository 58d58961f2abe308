"""A project in ``tmp_path`` for tuning tests: a copy of configs/ with a tiny study added.

Studies write their storage, experiments/ folder, exported experiment config and MLflow store
there, never into the repository.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tiny import ROOT, TINY_OVERRIDES, tiny_paths

# The risk model: AUPRC does not depend on a threshold, so even the tiny model's trials differ.
# Seconds per trial on 2 cores; a fixed seed, so a fresh single-worker study replays exactly.
TINY_STUDY = """\
study_name: tiny_study
task: risk
objectives:
  - {metric: val/auprc, direction: maximize}
n_trials: 3
timeout_s: null
sampler: {name: tpe, seed: 0, n_startup_trials: 2}
pruner: {name: none}
heartbeat: {interval_s: 1, grace_s: 3, max_retry: 1}
gates: []
fixed:
  strategy: full
  trainer.max_epochs: 2
params:
  risk.optimizer.lr: {type: float, low: 3.0e-3, high: 5.0e-2, log: true}
  risk.dropout: {type: float, low: 0.0, high: 0.3}
  risk.class_weight_power: {type: float, low: 0.0, high: 1.0}
trials_dir: ${paths.output_dir}/tuning
"""


@dataclass(frozen=True)
class TuningProject:
    """Where a test's study lives and the overrides that run it."""

    root: Path
    config_dir: Path
    overrides: list[str]

    @property
    def storage(self) -> str:
        """The study's default SQLite storage."""
        return f"sqlite:///{self.root / 'experiments' / 'tiny_study' / 'optuna.db'}"

    @property
    def tracking_uri(self) -> str:
        """The project's MLflow store."""
        return f"sqlite:///{self.root / 'mlruns.db'}"


def project_overrides(workspace: Path, root: Path) -> list[str]:
    """Tiny settings, paths inside ``root`` and the tiny study."""
    return [
        *TINY_OVERRIDES,
        *tiny_paths(workspace, root),
        "hparams_search=tiny_study",
    ]


@pytest.fixture
def tuning_project(
    tiny_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> TuningProject:
    """configs/ copied into ``tmp_path`` (the working directory) with the tiny study."""
    config_dir = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", config_dir)
    (config_dir / "hparams_search" / "tiny_study.yaml").write_text(TINY_STUDY)
    monkeypatch.chdir(tmp_path)
    return TuningProject(tmp_path, config_dir, project_overrides(tiny_workspace, tmp_path))
