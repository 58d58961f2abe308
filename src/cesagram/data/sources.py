"""Data sources as configured in ``params.yaml`` (``data.sources``), and running them.

Each named source is the synthetic generator or an import of a partner's files. The DVC
``ingest`` stage runs every source into ``data/interim/<name>/``; ``cesagram data import`` and
``cesagram data synth`` build the same specs from command-line options, so the two paths share
one implementation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from cesagram.config import ConfigError
from cesagram.data.importers.espd import import_espd
from cesagram.data.importers.pan12 import import_pan12
from cesagram.data.importers.tabular import (
    Layout,
    TabularColumns,
    TabularOptions,
    import_csv,
    import_jsonl,
)
from cesagram.data.ingest import ImportReport, Ingestion
from cesagram.data.labels import DEFAULT_RISK_LABELS, RiskLabelMap
from cesagram.data.pseudonymise import Pseudonymiser, load_key
from cesagram.data.schema import LANGUAGE_PATTERN


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticSource(_Spec):
    """The seeded multilingual synthetic corpus."""

    format: Literal["synthetic"] = "synthetic"
    conversations: Annotated[int, Field(ge=1)] = 1000
    languages: list[Annotated[str, Field(pattern=LANGUAGE_PATTERN)]] = Field(
        default_factory=lambda: ["en", "de", "fr", "nl", "es", "it", "el", "lt"]
    )
    seed: int = 0
    grooming_fraction: Annotated[float, Field(ge=0, le=1)] = 0.35
    code_switch_fraction: Annotated[float, Field(ge=0, le=1)] = 0.1
    noise: Annotated[float, Field(ge=0, le=1)] = 0.15
    offender_reuse: Annotated[float, Field(ge=0, le=1)] = 0.2


class Pan12Source(_Spec):
    """The PAN12 XML corpus with its predator list (and optionally problem-2 lines)."""

    format: Literal["pan12"]
    corpus: Path
    predators: Path
    suspicious_lines: Path | None = None
    language: Annotated[str, Field(pattern=LANGUAGE_PATTERN)] = "en"


class ColumnSpec(_Spec):
    """Input column names (see ``TabularColumns``)."""

    text: str
    label: str | None = None
    conversation: str | None = None
    author: str | None = None
    timestamp: str | None = None
    language: str | None = None
    indicators: str | None = None
    metadata: dict[Literal["age_band", "gender", "platform"], str] = Field(default_factory=dict)


class TabularSource(_Spec):
    """A partner's CSV or JSONL file."""

    format: Literal["csv", "jsonl"]
    path: Path
    columns: ColumnSpec
    layout: Layout = Layout.MESSAGES
    language: Annotated[str, Field(pattern=LANGUAGE_PATTERN)] | None = None
    label_map: dict[str, Literal[0, 1]] | None = None
    encoding: str = "utf-8"
    delimiter: str = ","
    speaker_separator: str | None = None
    translated_from: str | None = None


class EspdSource(_Spec):
    """An eSPD / PANC datapack JSON file."""

    format: Literal["espd"]
    path: Path
    label_map: dict[str, Literal[0, 1]] | None = None
    language: Annotated[str, Field(pattern=LANGUAGE_PATTERN)] = "en"


SourceSpec = Annotated[
    SyntheticSource | Pan12Source | TabularSource | EspdSource, Field(discriminator="format")
]


def _label_map(mapping: dict[str, Literal[0, 1]] | None) -> RiskLabelMap:
    return RiskLabelMap(mapping if mapping is not None else DEFAULT_RISK_LABELS)


def _inputs(spec: SourceSpec) -> list[Path]:
    if isinstance(spec, SyntheticSource):
        return []
    if isinstance(spec, Pan12Source):
        extra = [spec.suspicious_lines] if spec.suspicious_lines else []
        return [spec.corpus, spec.predators, *extra]
    return [spec.path]


def run_source(
    name: str, spec: SourceSpec, out_dir: Path, *, key_file: Path | None = None
) -> ImportReport:
    """Ingest one source into ``out_dir`` (corpus, quarantine and report)."""
    synthetic = isinstance(spec, SyntheticSource)
    pseudonymiser = Pseudonymiser(load_key(key_file, synthetic=synthetic))
    with Ingestion(
        out_dir,
        format=spec.format,
        source=name,
        inputs=_inputs(spec),
        pseudonymiser=pseudonymiser,
    ) as ingestion:
        if isinstance(spec, SyntheticSource):
            _ingest_synthetic(spec, ingestion)
        elif isinstance(spec, Pan12Source):
            import_pan12(
                spec.corpus,
                spec.predators,
                ingestion,
                suspicious_lines=spec.suspicious_lines,
                language=spec.language,
                source=name,
            )
        elif isinstance(spec, TabularSource):
            options = _tabular_options(name, spec)
            importer = import_csv if spec.format == "csv" else import_jsonl
            importer(spec.path, options, ingestion)
        else:
            import_espd(
                spec.path,
                ingestion,
                label_map=_label_map(spec.label_map),
                language=spec.language,
                source=name,
            )
    return ingestion.report


def _tabular_options(name: str, spec: TabularSource) -> TabularOptions:
    try:
        return TabularOptions(
            columns=TabularColumns(**spec.columns.model_dump()),
            layout=spec.layout,
            language=spec.language,
            label_map=_label_map(spec.label_map),
            source=name,
            encoding=spec.encoding,
            delimiter=spec.delimiter,
            speaker_separator=spec.speaker_separator,
            translated_from=spec.translated_from,
        )
    except ValueError as error:
        raise ConfigError(f"source {name!r}: {error}") from error


def _ingest_synthetic(spec: SyntheticSource, ingestion: Ingestion) -> None:
    # Imported lazily: the phrasebooks load on first use and only the synthetic source needs them.
    from cesagram.data.synth import SynthConfig, generate_corpus

    config = SynthConfig(
        conversations=spec.conversations,
        languages=tuple(spec.languages),
        seed=spec.seed,
        grooming_fraction=spec.grooming_fraction,
        code_switch_fraction=spec.code_switch_fraction,
        noise=spec.noise,
        offender_reuse=spec.offender_reuse,
    )
    for conversation in generate_corpus(config):
        record = conversation.model_dump(mode="json")
        for message in record["messages"]:
            del message["index"]
        ingestion.offer(record, file=Path("<synthetic>"), where=conversation.conversation_id)


class PrepareSettings(_Spec):
    """``data.prepare`` in params.yaml."""

    languages: list[Annotated[str, Field(pattern=LANGUAGE_PATTERN)]] | None = None
    min_messages: Annotated[int, Field(ge=1)] = 2
    deduplicate: bool = True


class SplitSettings(_Spec):
    """``data.split`` in params.yaml."""

    train: Annotated[float, Field(ge=0, le=1)] = 0.8
    val: Annotated[float, Field(ge=0, le=1)] = 0.1
    test: Annotated[float, Field(ge=0, le=1)] = 0.1
    seed: int = 13
    group_authors: Literal["all", "offenders", "none"] = "all"


class DataParams(_Spec):
    """The ``data`` section of params.yaml."""

    sources: dict[str, SourceSpec]
    key_file: Path | None = None
    prepare: PrepareSettings = PrepareSettings()
    split: SplitSettings = SplitSettings()
