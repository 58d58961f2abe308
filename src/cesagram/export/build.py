"""``cesagram bento``: export both champions, pin them for the service, build the Bento.

1. each task's model (the ``champion`` alias by default) goes into the BentoML model store with
   its ONNX variant when that passed parity (`export_to_bento`);
2. ``serving/serving.yaml`` names those exact model tags and carries the ``serving`` settings,
   so the service and the Bento serve what was just exported;
3. the project is built as a wheel and ``bentoml build`` packages the service, the wheel and
   the models from ``bentofile.yaml`` (``lock_packages: false``: nothing is resolved online).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cesagram.config import ConfigError
from cesagram.export.bento import ExportResult, export_to_bento
from cesagram.serving.settings import ServiceFile, ServingSettings

logger = logging.getLogger(__name__)

TASKS = ("indicators", "risk")
WHEEL_DIR = Path("build") / "bento-wheel"


@dataclass(frozen=True)
class BentoBuild:
    """What was exported and built."""

    bento_tag: str
    bento_path: Path
    exports: dict[str, ExportResult]
    service_file: Path

    def summary(self) -> dict[str, Any]:
        """A JSON-ready record of the build (the DVC stage's output)."""
        return {
            "bento": self.bento_tag,
            "service_file": str(self.service_file),
            "models": {
                task: {
                    "tag": result.tag,
                    "registered_version": result.version,
                    "mlflow_run_id": result.run_id,
                    "model_sha256": result.sha256,
                    "onnx_shipped": bool(result.onnx and result.onnx["shipped"]),
                    "onnx_chosen": (result.onnx or {}).get("chosen"),
                }
                for task, result in self.exports.items()
            },
        }


def build_wheel(project: Path, out_dir: Path) -> Path:
    """The project as a wheel (``pip wheel --no-deps``), for the Bento to install."""
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out_dir)]
    subprocess.run([*command, str(project)], check=True)
    wheels = sorted(out_dir.glob("cesagram-*.whl"), key=lambda path: path.stat().st_mtime)
    if not wheels:
        raise ConfigError(f"{out_dir}: pip wheel wrote no cesagram wheel")
    return wheels[-1]


def bento_options(bentofile: Path, wheel: Path) -> dict[str, Any]:
    """The bentofile's build options, with the project wheel added."""
    try:
        options: dict[str, Any] = yaml.safe_load(bentofile.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"{bentofile}: not found (run from the project root?)") from error
    python = dict(options.get("python") or {})
    python["wheels"] = [*python.get("wheels", []), str(wheel)]
    return {**options, "python": python}


def build_bento(
    uri: str,
    registered_models: dict[str, str],
    serving: dict[str, Any],
    *,
    project: Path,
    splits_dir: Path | None,
    bentofile: Path,
    version: str = "champion",
) -> BentoBuild:
    """Export both models, write the service file and build the Bento (see module doc)."""
    import bentoml

    settings = ServingSettings.model_validate(serving)
    exports = {
        task: export_to_bento(uri, registered_models[task], version, splits_dir=splits_dir)
        for task in TASKS
    }
    for task, result in exports.items():
        logger.info("exported %s as %s (version %s)", task, result.tag, result.version)
    service_file = Path("serving") / "serving.yaml"
    ServiceFile(
        models={task: result.tag for task, result in exports.items()}, settings=settings
    ).write(project / service_file)
    # BentoML takes wheels only by a path inside the build context (build/ is git-ignored).
    wheels = project / WHEEL_DIR
    shutil.rmtree(wheels, ignore_errors=True)
    wheel = build_wheel(project, wheels).relative_to(project)
    with tempfile.TemporaryDirectory() as scratch:
        completed = Path(scratch) / bentofile.name
        completed.write_text(yaml.safe_dump(bento_options(bentofile, wheel), sort_keys=False))
        bento = bentoml.bentos.build_bentofile(str(completed), build_ctx=str(project))
    return BentoBuild(
        bento_tag=str(bento.tag),
        bento_path=Path(bento.path),
        exports=exports,
        service_file=service_file,
    )


def write_summary(build: BentoBuild, out: Path) -> None:
    """Write the build record (``reports/bento/bento.json``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(build.summary(), indent=2) + "\n")
