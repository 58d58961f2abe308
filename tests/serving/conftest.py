"""Two really trained tiny models, promoted and exported into a temporary BentoML store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from cesagram.evaluation.evaluate import evaluate
from cesagram.evaluation.promotion import promote
from cesagram.export import ExportResult, export_to_bento
from cesagram.serving.settings import ServiceFile, ServingSettings
from cesagram.training.train import train
from tests.tiny import tiny_config

LENIENT_GATES = [
    "evaluation.gates.risk=[{name: quality, metric: test/auprc, min: 0.0}]",
    "evaluation.gates.indicators=[{name: quality, metric: test/macro_f1, min: 0.0}]",
]


@dataclass(frozen=True)
class ExportedPair:
    """Both champions in a BentoML store, and a service file that serves them."""

    bentoml_home: Path
    exports: dict[str, ExportResult]
    service_file: Path
    splits_dir: Path


@pytest.fixture(scope="session")
def exported_pair(
    tmp_path_factory: pytest.TempPathFactory, tiny_workspace: Path, bentoml_store: Path
) -> ExportedPair:
    """Train, evaluate, promote and export a tiny indicator and risk model (once)."""
    root = tmp_path_factory.mktemp("served")
    cfg = tiny_config(tiny_workspace, root, *LENIENT_GATES)
    exports = {}
    for task in ("indicators", "risk"):
        _, objects = train(cfg, task)
        evaluate(cfg, task)
        registered = cfg[task].registered_model
        promote(cfg.logger.tracking_uri, registered, task, objects["registered_version"])
        exports[task] = export_to_bento(
            cfg.logger.tracking_uri, registered, splits_dir=tiny_workspace / "splits"
        )
    service_file = root / "serving.yaml"
    ServiceFile(
        models={task: result.tag for task, result in exports.items()},
        settings=ServingSettings.model_validate(
            {"batching": {"max_batch_size": 32, "max_latency_ms": 60000}}
        ),
    ).write(service_file)
    return ExportedPair(bentoml_store, exports, service_file, tiny_workspace / "splits")
