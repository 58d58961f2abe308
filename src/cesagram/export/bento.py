"""``cesagram export``: a registered model version into the BentoML model store.

The MLflow run's ``model/`` folder (encoder safetensors, tokenizer, head, ``classifier.json``)
is copied into a new BentoML model with ``bentoml.models.create`` (not
``bentoml.transformers.save_model``, which fails with transformers 5). Beside it go
``serving.json`` (label map, decision thresholds and temperature chosen on validation data by
the evaluation, per language when the evaluation fitted them, window and context sizes,
provenance) and the model card, both taken from what the run recorded. The SHA-256 of the
model folder travels in the BentoML model's metadata; `verify_exported` recomputes it, so a
service can refuse a model that was altered.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cesagram.config import ConfigError
from cesagram.data.schema import LANGUAGE_PATTERN
from cesagram.training.tracking import find_model_version

MODEL_FOLDER = "model"
ONNX_FOLDER = "onnx"
ONNX_FILE = "model.onnx"
SERVING_FILE = "serving.json"
CARD_FILE = "model_card.md"
# Inputs each variant is compared on: test messages (indicators) or conversations (risk).
PARITY_EXAMPLES = {"indicators": 1000, "risk": 200}
# What a result says it was decided with when its language has no calibration of its own.
FALLBACK = "fallback"


class ExportIntegrityError(RuntimeError):
    """An exported model's files do not match the hash recorded when it was exported."""


@dataclass(frozen=True)
class ExportResult:
    """Where the model went and what identifies it."""

    tag: str
    path: Path
    run_id: str
    version: str
    sha256: str
    onnx: dict[str, Any] | None = None


@dataclass(frozen=True)
class Calibration:
    """Raw-score decision thresholds (in label order) and the temperature for some inputs."""

    thresholds: tuple[float, ...]
    temperature: float


@dataclass(frozen=True)
class LanguageCalibration:
    """Each language's own calibration, and the fallback for every other (or no) language.

    ``fallback_method`` says how the fallback was fitted at evaluation (``pooled`` over all
    validation languages, or ``language_balanced``); a model exported without a per-language
    table has no languages and falls back on its global (pooled) calibration.
    """

    languages: dict[str, Calibration]
    fallback: Calibration
    fallback_method: str


def folder_sha256(folder: Path) -> str:
    """SHA-256 over every file of a folder: relative paths and contents, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _serving_settings(report: dict[str, Any], classifier: dict[str, Any]) -> dict[str, Any]:
    """Thresholds and temperature from the evaluation; the model's own defaults otherwise.

    The global (pooled) thresholds and temperature always travel (ONNX parity uses them);
    the per-language table only when the evaluation fitted one.
    """
    threshold = report.get("threshold", {})
    settings = {
        "task": classifier["task"],
        "label_names": classifier["label_names"],
        "text_prefix": classifier.get("text_prefix", ""),
        "max_length": classifier["max_length"],
        "context_messages": classifier.get("context_messages"),
        "window": classifier.get("window"),
        # Raw-score thresholds: the service compares uncalibrated scores with them and
        # reports calibrated probabilities (temperature) beside the decision.
        "thresholds": threshold.get("value", classifier.get("thresholds")),
        "thresholds_chosen_on": threshold.get("chosen_on", "default"),
        "temperature": report.get("temperature", classifier.get("temperature", 1.0)),
        "skepticism": (report.get("early_detection") or {}).get("skepticism"),
        "evaluated": bool(report),
    }
    if report.get("language_calibration"):
        settings["language_calibration"] = _served_language_calibration(
            report["language_calibration"]
        )
    return settings


def _served_language_calibration(section: dict[str, Any]) -> dict[str, Any]:
    """What the service decides with from the evaluation's ``language_calibration``: each
    language's thresholds and temperature, and the fallback's (the rest stays in the report)."""
    fallback = section.get("fallback") or {}
    return {
        "languages": {
            language: {key: entry.get(key) for key in ("thresholds", "temperature")}
            for language, entry in sorted((section.get("languages") or {}).items())
        },
        "fallback": {key: fallback.get(key) for key in ("method", "thresholds", "temperature")},
    }


def _onnx_variant(
    model_dir: Path, out_dir: Path, settings: dict[str, Any], split: Path, limit: int
) -> dict[str, Any]:
    """Build the ONNX int8 variant; it ships only if it keeps the PyTorch model's quality."""
    from cesagram.export.onnx import build_onnx_variant
    from cesagram.export.parity import parity_inputs

    texts, labels = parity_inputs(settings, split, limit=limit)
    thresholds = threshold_values(settings)
    report = build_onnx_variant(
        model_dir,
        out_dir,
        texts=texts,
        labels=labels if settings["task"] == "indicators" else labels[:, 0],
        thresholds=thresholds if settings["task"] == "indicators" else thresholds[0],
        task=settings["task"],
    ).to_dict()
    shipped = out_dir / ONNX_FILE
    return {
        "shipped": shipped.exists(),
        "chosen": report.get("chosen"),
        "sha256": folder_sha256(out_dir) if shipped.exists() else None,
        "parity_split": split.name,
        "report": report,
    }


def export_to_bento(
    uri: str,
    registered_model: str,
    version: str = "champion",
    *,
    splits_dir: Path | None = None,
    parity_examples: int | None = None,
) -> ExportResult:
    """Copy a registered version (a number or an alias) into the BentoML model store.

    With ``splits_dir``, an ONNX int8 variant is built and compared with the PyTorch model on
    the test split (``parity_examples`` inputs); it ships beside the model only when it is
    within 0.5 point of PyTorch's quality and its scores do not depend on the batch.
    """
    import bentoml
    from mlflow.artifacts import download_artifacts

    from cesagram.cards import render_markdown
    from cesagram.cards.recorded import recorded_card_inputs

    try:
        run_id, number = find_model_version(uri, registered_model, version)
    except ConfigError as error:
        raise ConfigError(
            f"{error}; promote a model first (`cesagram promote <task>`) or pass --version N"
        ) from error
    try:
        report, run, _ = recorded_card_inputs(uri, registered_model, number)
        card = render_markdown(report, run)
    except ConfigError:
        report, card = {}, None  # not evaluated: exported with its defaults, and no card
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(
            download_artifacts(
                run_id=run_id, artifact_path=MODEL_FOLDER, dst_path=scratch, tracking_uri=uri
            )
        )
        classifier = json.loads((local / "classifier.json").read_text())
        sha256 = folder_sha256(local)
        settings = {
            **_serving_settings(report, classifier),
            "mlflow_run_id": run_id,
            "registered_model": registered_model,
            "registered_version": number,
            "model_sha256": sha256,
        }
        # A report the service could not decide with fails here, not when a service starts.
        checked = f"{SERVING_FILE} of run {run_id}"
        threshold_values(settings, source=checked)
        language_calibration(settings, source=checked)
        metadata = {
            "mlflow_run_id": run_id,
            "model_sha256": sha256,
            "registered_model": registered_model,
        }
        onnx_dir = Path(scratch) / ONNX_FOLDER
        if splits_dir is not None:
            limit = parity_examples or PARITY_EXAMPLES[settings["task"]]
            split = splits_dir / "test.parquet"
            settings["onnx"] = _onnx_variant(local, onnx_dir, settings, split, limit)
            if settings["onnx"]["sha256"] is not None:  # BentoML metadata takes no None
                metadata["onnx_sha256"] = settings["onnx"]["sha256"]
        labels = {"task": classifier["task"], "registered_version": number}
        with bentoml.models.create(registered_model, labels=labels, metadata=metadata) as model:
            shutil.copytree(local, Path(model.path) / MODEL_FOLDER)
            if onnx_dir.exists():
                shutil.copytree(onnx_dir, Path(model.path) / ONNX_FOLDER)
            (Path(model.path) / SERVING_FILE).write_text(json.dumps(settings, indent=2) + "\n")
            if card is not None:
                (Path(model.path) / CARD_FILE).write_text(card)
            tag = str(model.tag)
    stored = bentoml.models.get(tag)
    return ExportResult(
        tag=tag,
        path=Path(stored.path),
        run_id=run_id,
        version=number,
        sha256=sha256,
        onnx=settings.get("onnx"),
    )


def threshold_values(settings: dict[str, Any], *, source: str = SERVING_FILE) -> list[float]:
    """The raw-score decision thresholds of exported serving settings, in label order.

    The evaluation records one threshold per indicator (a mapping) or one for risk (a number);
    a model exported without evaluation keeps its own list. ``source`` names the settings'
    file in errors.

    Raises:
        ExportIntegrityError: when a label has no threshold or a threshold is not a number.
    """
    return _thresholds(settings["label_names"], settings["thresholds"], source)


def language_calibration(
    settings: dict[str, Any], *, source: str = SERVING_FILE
) -> LanguageCalibration:
    """The per-language thresholds and temperatures of exported serving settings, checked.

    Every language entry and the fallback must hold a threshold for every label and a finite
    temperature > 0. Settings without ``language_calibration`` (evaluated without it, or
    exported before it existed) get an empty table whose fallback is their global thresholds
    and temperature, method ``pooled``. ``source`` names the settings' file in errors.

    Raises:
        ExportIntegrityError: when the table is malformed; the error names the language.
    """
    names: list[str] = settings["label_names"]
    recorded = settings.get("language_calibration")
    if recorded is None:
        pooled = Calibration(
            thresholds=tuple(threshold_values(settings, source=source)),
            temperature=_temperature(settings.get("temperature", 1.0), source),
        )
        return LanguageCalibration(languages={}, fallback=pooled, fallback_method="pooled")
    where = f"{source}: language_calibration"
    if not (
        isinstance(recorded, dict)
        and isinstance(recorded.get("languages"), dict)
        and isinstance(recorded.get("fallback"), dict)
    ):
        found = sorted(recorded) if isinstance(recorded, dict) else type(recorded).__name__
        raise ExportIntegrityError(
            f"{where}: expected a mapping with 'languages' (code -> entry) and 'fallback'; "
            f"found {found}"
        )
    languages = {}
    for language, entry in recorded["languages"].items():
        if not re.fullmatch(LANGUAGE_PATTERN, str(language)):
            raise ExportIntegrityError(
                f"{where}: language {language!r} is not a lowercase ISO 639-1/-3 code "
                f"({LANGUAGE_PATTERN})"
            )
        languages[language] = _calibration(names, entry, f"{where}, language {language!r}")
    fallback = recorded["fallback"]
    method = fallback.get("method")
    if not isinstance(method, str) or not method:
        raise ExportIntegrityError(
            f"{where}, fallback: no method (expected how it was fitted, e.g. 'pooled' or "
            f"'language_balanced'); found {method!r}"
        )
    return LanguageCalibration(
        languages=languages,
        fallback=_calibration(names, fallback, f"{where}, fallback"),
        fallback_method=method,
    )


def _calibration(names: list[str], entry: Any, where: str) -> Calibration:
    if not isinstance(entry, dict):
        raise ExportIntegrityError(
            f"{where}: expected a mapping with 'thresholds' and 'temperature'; "
            f"found {type(entry).__name__}"
        )
    return Calibration(
        thresholds=tuple(_thresholds(names, entry.get("thresholds"), where)),
        temperature=_temperature(entry.get("temperature"), where),
    )


def _thresholds(names: list[str], recorded: Any, where: str) -> list[float]:
    """Thresholds in label order from a mapping (label -> value), one number or a list."""
    if isinstance(recorded, dict):
        missing = [name for name in names if name not in recorded]
        if missing:
            raise ExportIntegrityError(
                f"{where}: no threshold for {missing} (expected one for each of {names})"
            )
        values = [recorded[name] for name in names]
    elif isinstance(recorded, int | float) and not isinstance(recorded, bool):
        values = [recorded] * len(names)
    elif isinstance(recorded, list):
        values = recorded
    else:
        raise ExportIntegrityError(
            f"{where}: thresholds must be a mapping label -> number, a number or a list; "
            f"found {type(recorded).__name__}"
        )
    if len(values) != len(names):
        raise ExportIntegrityError(
            f"{where}: {len(values)} thresholds for {len(names)} labels {names}"
        )
    if not all(_is_number(value) for value in values):
        raise ExportIntegrityError(f"{where}: thresholds must be finite numbers; found {values}")
    return [float(value) for value in values]


def _temperature(recorded: Any, where: str) -> float:
    if not (_is_number(recorded) and float(recorded) > 0):
        raise ExportIntegrityError(
            f"{where}: temperature must be a finite number > 0; found {recorded!r}"
        )
    return float(recorded)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def verify_exported(path: Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """The serving settings of an exported model, after checking its files against the hash.

    ``expected_sha256`` is the hash in the BentoML model's metadata; it must also match the
    one in ``serving.json``, so neither file can be swapped alone.

    Raises:
        ExportIntegrityError: when the model folder's SHA-256 is not the recorded one.
    """
    settings: dict[str, Any] = json.loads((path / SERVING_FILE).read_text())
    if expected_sha256 is not None and expected_sha256 != settings["model_sha256"]:
        raise ExportIntegrityError(
            f"{path / SERVING_FILE}: records SHA-256 {settings['model_sha256']} but the model's "
            f"metadata says {expected_sha256}; refusing to load an altered model"
        )
    found = folder_sha256(path / MODEL_FOLDER)
    if found != settings["model_sha256"]:
        raise ExportIntegrityError(
            f"{path / MODEL_FOLDER}: SHA-256 {found} is not the exported "
            f"{settings['model_sha256']} (MLflow run {settings['mlflow_run_id']}); refusing to "
            "load an altered model"
        )
    return settings


def verify_onnx_variant(path: Path, settings: dict[str, Any]) -> Path:
    """The shipped ONNX file of an exported model, after checking it against its hash.

    Raises:
        ExportIntegrityError: when no variant shipped or its files are not the exported ones.
    """
    onnx = settings.get("onnx") or {}
    folder = path / ONNX_FOLDER
    if not onnx.get("shipped") or not (folder / ONNX_FILE).exists():
        raise ExportIntegrityError(f"{folder}: no ONNX variant passed parity at export")
    found = folder_sha256(folder)
    if found != onnx["sha256"]:
        raise ExportIntegrityError(
            f"{folder}: SHA-256 {found} is not the exported {onnx['sha256']}; refusing to load "
            "an altered model"
        )
    return folder / ONNX_FILE
