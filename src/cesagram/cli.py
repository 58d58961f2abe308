"""The ``cesagram`` command line. Commands stay thin: they parse options and call the library."""

from __future__ import annotations

import functools
import gc
import json
import logging
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from omegaconf import OmegaConf
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from cesagram.config import (
    DEFAULT_PARAMS,
    ConfigError,
    compose,
    dump_params,
    load_params,
    run_config,
    section,
    validated,
)
from cesagram.data.ingest import CORPUS_FILE, QUARANTINE_FILE, ImportReport, InputError
from cesagram.data.labels import RiskLabelMap
from cesagram.data.prepare import PrepareConfig, prepare_corpus
from cesagram.data.pseudonymise import PseudonymKeyError
from cesagram.data.schema import SchemaVersionError, read_corpus, read_corpus_table
from cesagram.data.sources import (
    DataParams,
    EspdSource,
    Pan12Source,
    SourceSpec,
    SyntheticSource,
    TabularSource,
    run_source,
)
from cesagram.data.split import AuthorGrouping, SplitConfig, split_corpus
from cesagram.data.summary import summarise_table, write_summary


class ImportFormat(StrEnum):
    """Formats ``cesagram data import`` reads."""

    PAN12 = "pan12"
    CSV = "csv"
    JSONL = "jsonl"
    ESPD = "espd"


app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Import, generate, prepare and split data.")
app.add_typer(data_app, name="data")

console = Console()
error_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")

USER_ERRORS = (InputError, ConfigError, PseudonymKeyError, SchemaVersionError)

DEFAULT_INTERIM = Path("data/interim")
DEFAULT_PREPARED = Path("data/prepared/corpus.parquet")
DEFAULT_SPLITS = Path("data/splits")
DEFAULT_SUMMARY = Path("metrics/data_summary.json")


def user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn expected user errors into one red line and exit code 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            # Text, not markup: messages quote values like ['text'] that Rich would swallow.
            error_console.print(Text.assemble(("error: ", "bold red"), str(error)), soft_wrap=True)
            raise typer.Exit(code=2) from error

    return wrapper


@app.callback()
def main_callback(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """CESAGRAM: grooming-indicator and conversation-risk models for human review."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=error_console, show_path=False, show_time=False)],
        force=True,
    )


def _print_import(name: str, report: ImportReport) -> None:
    table = Table(title=f"{name}: {report.format} import", title_justify="left")
    for column in ("unit", "read", "written", "quarantined"):
        table.add_column(column, justify="right" if column != "unit" else "left")
    for unit, counts in (("conversations", report.conversations), ("messages", report.messages)):
        table.add_row(unit, str(counts.read), str(counts.written), str(counts.rejected))
    console.print(table)
    if report.rejections_by_reason:
        reasons = ", ".join(f"{code}: {n}" for code, n in report.rejections_by_reason.items())
        console.print(f"[yellow]quarantined[/] ({reasons}) -> {report.quarantine}")
    console.print(f"corpus -> {report.output}")


def _run_and_print(name: str, spec: SourceSpec, out: Path, key_file: Path | None) -> None:
    # Objects created so far (imported libraries) live for the whole process: keeping them out
    # of the collector's passes saves several seconds on multi-million message imports.
    gc.freeze()
    report = run_source(name, spec, out, key_file=key_file)
    _print_import(name, report)


@data_app.command("synth")
@user_errors
def synth_command(
    conversations: Annotated[int, typer.Option(help="How many conversations.")] = 1000,
    languages: Annotated[
        str, typer.Option(help="Comma-separated language codes.")
    ] = "en,de,fr,nl,es,it,el,lt",
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same corpus.")] = 0,
    grooming_fraction: Annotated[float, typer.Option(help="Share of grooming chats.")] = 0.35,
    out: Annotated[Path, typer.Option(help="Output folder.")] = DEFAULT_INTERIM / "synthetic",
) -> None:
    """Generate the seeded multilingual synthetic corpus.

    Example: cesagram data synth --conversations 2000 --languages nl,fr,el --seed 7
    """
    spec = SyntheticSource(
        conversations=conversations,
        languages=[code.strip() for code in languages.split(",") if code.strip()],
        seed=seed,
        grooming_fraction=grooming_fraction,
    )
    _run_and_print("synthetic", spec, out, None)


def _metadata_columns(pairs: list[str]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for pair in pairs:
        field, separator, column = pair.partition("=")
        if not separator or not column:
            raise ConfigError(f"--metadata-col {pair!r}: expected FIELD=COLUMN, e.g. age_band=age")
        metadata[field.strip()] = column.strip()
    return metadata


def _label_map(spec: str | None) -> dict[str, int] | None:
    if spec is None:
        return None
    try:
        return RiskLabelMap.parse(spec).mapping
    except ValueError as error:
        raise ConfigError(f"--label-map: {error}") from error


@data_app.command("import")
@user_errors
def import_command(
    format: Annotated[ImportFormat, typer.Option("--format", "-f", help="Input format.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="Input file.")],
    out: Annotated[Path | None, typer.Option(help="Output folder [data/interim/NAME].")] = None,
    name: Annotated[str | None, typer.Option(help="Source name [the format].")] = None,
    language: Annotated[str | None, typer.Option(help="Language of the whole file.")] = None,
    predators: Annotated[Path | None, typer.Option(help="pan12: predator id list.")] = None,
    suspicious_lines: Annotated[
        Path | None, typer.Option(help="pan12: problem-2 suspicious lines file.")
    ] = None,
    layout: Annotated[
        str, typer.Option(help="csv/jsonl: 'messages' (a row each) or 'segments'.")
    ] = "messages",
    text_col: Annotated[str, typer.Option(help="csv/jsonl: text column.")] = "text",
    label_col: Annotated[str | None, typer.Option(help="csv/jsonl: label column.")] = None,
    conversation_col: Annotated[
        str | None, typer.Option(help="csv/jsonl: conversation id column.")
    ] = None,
    author_col: Annotated[str | None, typer.Option(help="csv/jsonl: author column.")] = None,
    timestamp_col: Annotated[str | None, typer.Option(help="csv/jsonl: timestamp column.")] = None,
    language_col: Annotated[str | None, typer.Option(help="csv/jsonl: language column.")] = None,
    indicators_col: Annotated[
        str | None, typer.Option(help="csv/jsonl: indicator ids column ('a;b').")
    ] = None,
    metadata_col: Annotated[
        list[str] | None, typer.Option(help="csv/jsonl: FIELD=COLUMN for age_band/gender/platform.")
    ] = None,
    label_map: Annotated[
        str | None, typer.Option(help="Label values to risk, e.g. 'predator=1,non-predator=0'.")
    ] = None,
    encoding: Annotated[str, typer.Option(help="csv/jsonl: file encoding.")] = "utf-8",
    delimiter: Annotated[str, typer.Option(help="csv: field delimiter.")] = ",",
    speaker_separator: Annotated[
        str | None, typer.Option(help="segments: 'author<SEP>text' lines, e.g. ': '.")
    ] = None,
    translated_from: Annotated[
        str | None, typer.Option(help="Original language when machine-translated.")
    ] = None,
    key_file: Annotated[
        Path | None, typer.Option(help="Pseudonymisation key file [$CESAGRAM_PSEUDONYM_KEY].")
    ] = None,
) -> None:
    """Import a corpus into the canonical format, pseudonymised, with report and quarantine.

    Examples:
      cesagram data import -f pan12 -i pan12-train.xml --predators predators.txt
      cesagram data import -f csv -i segments_de.csv --layout segments --text-col segment
        --label-col label --language de --translated-from en
    """
    spec: SourceSpec
    if format is ImportFormat.PAN12:
        if predators is None:
            raise ConfigError("--format pan12 needs --predators (the predator id list)")
        spec = Pan12Source(
            format="pan12",
            corpus=input,
            predators=predators,
            suspicious_lines=suspicious_lines,
            language=language or "en",
        )
    elif format is ImportFormat.ESPD:
        spec = EspdSource(
            format="espd", path=input, label_map=_label_map(label_map), language=language or "en"
        )
    else:
        spec = validated(
            TabularSource,
            {
                "format": format.value,
                "path": input,
                "layout": layout,
                "language": language,
                "label_map": _label_map(label_map),
                "encoding": encoding,
                "delimiter": delimiter,
                "speaker_separator": speaker_separator,
                "translated_from": translated_from,
                "columns": {
                    "text": text_col,
                    "label": label_col,
                    "conversation": conversation_col,
                    "author": author_col,
                    "timestamp": timestamp_col,
                    "language": language_col,
                    "indicators": indicators_col,
                    "metadata": _metadata_columns(metadata_col or []),
                },
            },
            origin="command line: ",
        )
    source_name = name or format.value
    _run_and_print(source_name, spec, out or DEFAULT_INTERIM / source_name, key_file)


def _data_params(params: Path) -> DataParams:
    return section(load_params(params), "data", DataParams, params)


@data_app.command("ingest")
@user_errors
def ingest_command(
    params: Annotated[Path, typer.Option(help="Params file.")] = DEFAULT_PARAMS,
    out: Annotated[Path, typer.Option(help="Folder for one sub-folder per source.")] = (
        DEFAULT_INTERIM
    ),
) -> None:
    """Run every source in params.yaml's data.sources (the DVC ingest stage)."""
    settings = _data_params(params)
    for name, spec in settings.sources.items():
        _run_and_print(name, spec, out / name, settings.key_file)


@data_app.command("prepare")
@user_errors
def prepare_command(
    params: Annotated[Path, typer.Option(help="Params file.")] = DEFAULT_PARAMS,
    interim: Annotated[Path, typer.Option(help="Folder of ingested sources.")] = DEFAULT_INTERIM,
    out: Annotated[Path, typer.Option(help="Prepared corpus file.")] = DEFAULT_PREPARED,
) -> None:
    """Validate, de-duplicate and merge the ingested sources into one corpus."""
    settings = _data_params(params)
    inputs = [interim / name / CORPUS_FILE for name in settings.sources]
    missing = [str(path) for path in inputs if not path.exists()]
    if missing:
        raise ConfigError(f"{missing}: not found; run `cesagram data ingest` first")
    languages = settings.prepare.languages
    report = prepare_corpus(
        inputs,
        out,
        PrepareConfig(
            languages=tuple(languages) if languages is not None else None,
            min_messages=settings.prepare.min_messages,
            deduplicate=settings.prepare.deduplicate,
        ),
    )
    aside = ", ".join(f"{reason}: {n}" for reason, n in report.set_aside.items()) or "none"
    console.print(
        f"prepared {report.written} of {report.read} conversations (set aside: {aside}) -> {out}"
    )


@data_app.command("split")
@user_errors
def split_command(
    params: Annotated[Path, typer.Option(help="Params file.")] = DEFAULT_PARAMS,
    corpus: Annotated[Path, typer.Option(help="Prepared corpus.")] = DEFAULT_PREPARED,
    out: Annotated[Path, typer.Option(help="Folder for train/val/test.parquet.")] = DEFAULT_SPLITS,
    summary: Annotated[Path, typer.Option(help="Dataset summary (JSON).")] = DEFAULT_SUMMARY,
) -> None:
    """Split by conversation and author, stratified by language and risk; write the summary."""
    settings = _data_params(params).split
    try:
        config = SplitConfig(
            fractions={"train": settings.train, "val": settings.val, "test": settings.test},
            seed=settings.seed,
            group_authors=AuthorGrouping(settings.group_authors),
        )
    except ValueError as error:
        raise ConfigError(f"{params}: data.split: {error}") from error
    paths = split_corpus(corpus, out, config)
    counts = write_summary(paths, summary)
    _print_summary(counts)
    console.print(f"splits -> {out}/, summary -> {summary}")


@data_app.command("validate")
@user_errors
def validate_command(
    corpus: Annotated[Path, typer.Argument(help="A canonical corpus Parquet file.")],
) -> None:
    """Check a corpus file against the schema and print its counts."""
    conversations = sum(1 for _ in read_corpus(corpus))
    console.print_json(json.dumps(summarise_table(read_corpus_table(corpus))))
    console.print(f"[green]valid[/]: {conversations} conversations in {corpus}")


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title="dataset", title_justify="left")
    table.add_column("split")
    for column in ("conversations", "messages", "risk=1", "risk=0", "languages"):
        table.add_column(column, justify="right" if column != "languages" else "left")
    for split, counts in summary.items():
        table.add_row(
            split,
            str(counts["conversations"]),
            str(counts["messages"]),
            str(counts["risk"]["positive"]),
            str(counts["risk"]["negative"]),
            " ".join(f"{code}:{n}" for code, n in counts["languages"].items()),
        )
    console.print(table)


@app.command("config")
@user_errors
def config_command(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Hydra overrides, e.g. data=partner_csv.")
    ] = None,
) -> None:
    """Print configs/ composed with overrides, in params.yaml form.

    Example: cesagram config data=partner_csv data.split.seed=3 > params.yaml
    """
    typer.echo(dump_params(compose(overrides or [])), nl=False)


class TaskName(StrEnum):
    """The two models."""

    INDICATORS = "indicators"
    RISK = "risk"


TaskArgument = Annotated[TaskName, typer.Argument(help="Which model.")]
OverridesArgument = Annotated[
    list[str] | None,
    typer.Argument(help="Hydra overrides, e.g. backbone=tiny trainer.max_epochs=3."),
]
ParamsOption = Annotated[
    Path | None,
    typer.Option(help="Use this composed params file (what DVC stages do) instead of configs/."),
]


@app.command("backbone")
@user_errors
def backbone_command(overrides: OverridesArgument = None, params: ParamsOption = None) -> None:
    """Prepare the configured backbone as a local Hugging Face folder (paths.backbone_dir).

    Examples: cesagram backbone; cesagram backbone backbone=minilm_en
    """
    from cesagram.models.backbones import BackboneError, BackboneSpec, materialise_backbone

    cfg = run_config(params, overrides or [])
    spec = validated(
        BackboneSpec, OmegaConf.to_container(cfg.backbone, resolve=True), origin="backbone."
    )
    texts = None
    if spec.source.value == "tiny":
        texts = _training_texts(Path(cfg.paths.splits_dir))
    try:
        folder = materialise_backbone(spec, Path(cfg.paths.backbone_dir), training_texts=texts)
    except BackboneError as error:
        raise ConfigError(str(error)) from error
    console.print(f"backbone {spec.name} -> {folder}")


def _training_texts(splits_dir: Path) -> list[str]:
    from cesagram.data.schema import messages_frame

    path = splits_dir / "train.parquet"
    if not path.exists():
        raise ConfigError(f"{path}: not found; the tiny backbone trains its tokenizer on it")
    return [str(text) for text in messages_frame(read_corpus_table(path))["text"]]


@app.command("train")
@user_errors
def train_command(
    task: TaskArgument,
    overrides: OverridesArgument = None,
    params: ParamsOption = None,
) -> None:
    """Fine-tune a model, track it in MLflow and register it.

    Examples: cesagram train indicators; cesagram train risk backbone=minilm_en
    trainer.max_epochs=3; cesagram train indicators ckpt_path=last (resume);
    cesagram train indicators strategy=linear_probe (frozen encoder, cached embeddings);
    cesagram train indicators strategy=lp_ft (probe, then fine-tuning from its head)
    """
    from cesagram.training.strategies import train_with_strategy

    cfg = run_config(params, overrides or [])
    metrics, objects = train_with_strategy(cfg, task.value)
    trainer = objects.get("trainer")
    if trainer is None or trainer.is_global_zero:  # one table, not one per DDP process
        _print_training(task.value, metrics, Path(cfg.paths.metrics_dir), objects)


@app.command("baseline")
@user_errors
def baseline_command(
    task: TaskArgument,
    overrides: OverridesArgument = None,
    params: ParamsOption = None,
) -> None:
    """Fit the TF-IDF + logistic-regression baseline of a task on the same examples."""
    from cesagram.training.train import train_baseline

    cfg = run_config(params, overrides or [])
    metrics, objects = train_baseline(cfg, task.value)
    rows = ", ".join(f"{name} {value:.3f}" for name, value in sorted(metrics.items()))
    console.print(f"{task.value} baseline: {rows} -> {objects['model_dir']}")


def _print_training(
    task: str, metrics: dict[str, float], metrics_dir: Path, objects: dict[str, Any]
) -> None:
    baseline_path = metrics_dir / f"baseline_{task}.json"
    baseline = json.loads(baseline_path.read_text()) if baseline_path.exists() else {}
    table = Table(title=f"{task}: validation", title_justify="left")
    for column in ("metric", "model", "TF-IDF baseline"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name in sorted(metrics):
        if not name.startswith("val/"):
            continue
        reference = baseline.get(name)
        table.add_row(
            name,
            f"{metrics[name]:.4f}",
            f"{reference:.4f}" if isinstance(reference, float) else "-",
        )
    console.print(table)
    if "model_dir" in objects:
        registered = objects.get("registered_version")
        version = f", registered version {registered}" if registered else ""
        console.print(f"model -> {objects['model_dir']} (MLflow run {objects['run_id']}{version})")


VersionOption = Annotated[
    str | None,
    typer.Option(help="A registered version number or alias (e.g. champion)."),
]


@app.command("evaluate")
@user_errors
def evaluate_command(
    task: TaskArgument,
    overrides: OverridesArgument = None,
    params: ParamsOption = None,
    version: VersionOption = None,
    run_id: Annotated[str | None, typer.Option(help="An MLflow run id.")] = None,
    cross_lingual: Annotated[
        bool,
        typer.Option(
            "--cross-lingual",
            help="Instead: train on each source language, test on every target language "
            "(evaluation.cross_lingual), for each strategy.",
        ),
    ] = False,
) -> None:
    """Evaluate a model on the test split; log everything to its MLflow run and to DVC files.

    Examples: cesagram evaluate risk; cesagram evaluate indicators --version 3;
    cesagram evaluate risk --version champion evaluation.skepticism=3

    --cross-lingual runs the train-on-A / test-on-B matrix instead (no trained model needed):
    for each strategy in evaluation.cross_lingual.strategies and each source language A, a
    model is trained on A's conversations only and scored on each target language's test
    conversations, at A's threshold and at the target's own validation threshold. It writes
    reports/<task>/cross_lingual.{json,png} and one MLflow run with a child run per model.
    Examples: cesagram evaluate indicators --cross-lingual;
    cesagram evaluate indicators --cross-lingual 'evaluation.cross_lingual.sources=[en,el]'
    'evaluation.cross_lingual.strategies=[linear_probe]'
    """
    from cesagram.evaluation.evaluate import evaluate
    from cesagram.evaluation.gates import describe_failures

    cfg = run_config(params, overrides or [])
    if cross_lingual:
        if version is not None or run_id is not None:
            raise ConfigError("--cross-lingual trains its own models; drop --version / --run-id")
        _cross_lingual(cfg, task)
        return
    report, objects = evaluate(cfg, task.value, version=version, run_id=run_id)
    summary = objects["summary"]
    table = Table(title=f"{task.value}: {report['data']['split']}", title_justify="left")
    for column in ("metric", "estimate", "95% interval", "TF-IDF baseline"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, interval in report["metrics"].items():
        reference = report.get("baseline", {}).get(name)
        table.add_row(
            name,
            f"{interval['estimate']:.4f}",
            f"[{interval['low']:.4f}, {interval['high']:.4f}]",
            f"{reference:.4f}" if isinstance(reference, float) else "-",
        )
    console.print(table)
    for name in sorted(summary):
        if name.startswith(
            ("fairness/language", "latency/p95", "calibration/ece", "robustness/min")
        ):
            console.print(f"{name}: {summary[name]:.4f}")
    gates = report["gates"]
    if gates["passed"]:
        console.print("[green]all gates passed[/]")
    else:
        console.print("[yellow]gates failed[/]: " + "; ".join(describe_failures(gates)))
    console.print(f"report -> {objects['reports_dir']}/ (MLflow run {report['model']['run_id']})")


def _cross_lingual(cfg: Any, task_name: TaskName) -> None:
    """Run the cross-lingual matrix and print one table per strategy and the winner."""
    from cesagram.evaluation.crosslingual import cross_lingual_matrix

    report, objects = cross_lingual_matrix(cfg, task_name.value)
    task = task_name.value
    metric = "macro-F1" if task == "indicators" else "F1"
    for strategy, result in report["strategies"].items():
        summary = result["summary"]
        table = Table(
            title=f"{task}: {strategy} - mean transfer {metric} "
            f"{_score(summary['mean_transfer_f1'])}, trained in {summary['train_seconds']:.0f} s",
            caption=f"rows: trained on; columns: tested on; cell: {metric} at the source "
            "threshold / at the target's own threshold, AUROC below; * in-language",
            title_justify="left",
        )
        table.add_column("source")
        for target in report["targets"]:
            table.add_column(target, justify="right")
        cells = {(cell["source"], cell["target"]): cell for cell in result["cells"]}
        for source in report["sources"]:
            row = []
            for target in report["targets"]:
                cell = cells[(source, target)]
                mark = "*" if cell["in_language"] else ""
                row.append(
                    f"{mark}{_score(cell['f1_source_threshold'])} / "
                    f"{_score(cell['f1_target_threshold'])}\n{_score(cell['auroc'])}"
                )
            table.add_row(source, *row)
        console.print(table)
    winner = report["winner"]
    if winner["strategy"] is None:
        console.print(f"[yellow]no winner[/]: {winner['reason']}", soft_wrap=True)
    else:
        console.print(
            f"winner: [bold]{winner['strategy']}[/] (decided by {winner['decided_by']}; "
            f"rule: {winner['criterion']})",
            soft_wrap=True,
        )
    console.print(
        f"report -> {objects['report_path']}, {objects['plot_path']} "
        f"(MLflow run {objects['parent_run_id']})",
        soft_wrap=True,
    )


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@app.command("promote")
@user_errors
def promote_command(
    task: TaskArgument,
    overrides: OverridesArgument = None,
    params: ParamsOption = None,
    version: VersionOption = None,
    out: Annotated[Path | None, typer.Option(help="Also write the decision here (JSON).")] = None,
) -> None:
    """Give the champion alias to a version that passed every gate and beats the champion.

    Without --version, the version the pipeline last trained and evaluated is the candidate.
    """
    from cesagram.evaluation.promotion import promote
    from cesagram.training.tracking import tracking_uri

    cfg = run_config(params, overrides or [])
    registered_model = cfg[task.value].registered_model
    candidate = version or _evaluated_version(Path(cfg.paths.metrics_dir), task.value, cfg)
    record = promote(tracking_uri(cfg.logger.tracking_uri), registered_model, task.value, candidate)
    colour = {"promoted": "green", "kept": "cyan", "rejected": "yellow"}[record["decision"]]
    console.print(
        f"{registered_model} version {candidate}: [{colour}]{record['decision']}[/] - "
        f"{record['reason']}"
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")


def _evaluated_version(metrics_dir: Path, task: str, cfg: Any) -> str:
    from cesagram.training.tracking import tracking_uri, version_of_run

    path = metrics_dir / f"eval_{task}.json"
    if not path.exists():
        raise ConfigError(
            f"{path}: not found; run `cesagram evaluate {task}` first or pass --version"
        )
    run_id = json.loads(path.read_text()).get("mlflow_run_id")
    name = cfg[task].registered_model
    uri = tracking_uri(cfg.logger.tracking_uri)
    version = version_of_run(uri, name, run_id) if run_id else None
    if version is None:
        raise ConfigError(
            f"{path}: run {run_id} has no registered version of {name}; pass --version"
        )
    return version


@app.command("card")
@user_errors
def card_command(
    task: TaskArgument,
    overrides: OverridesArgument = None,
    params: ParamsOption = None,
    version: VersionOption = None,
    out: Annotated[Path, typer.Option(help="Folder for <model>.md and .html.")] = Path(
        "reports/cards"
    ),
) -> None:
    """Write the model card (Markdown and HTML) from what the model's run recorded.

    Without --version, the version the pipeline last evaluated.
    """
    from cesagram.cards import write_card
    from cesagram.cards.recorded import recorded_card_inputs
    from cesagram.training.tracking import tracking_uri

    cfg = run_config(params, overrides or [])
    chosen = version or _evaluated_version(Path(cfg.paths.metrics_dir), task.value, cfg)
    report, run, plots = recorded_card_inputs(
        tracking_uri(cfg.logger.tracking_uri), cfg[task.value].registered_model, chosen
    )
    markdown, html = write_card(report, run, plots, out, cfg[task.value].registered_model)
    console.print(f"model card -> {markdown}, {html}")


@app.command("compare")
@user_errors
def compare_command(
    task: TaskArgument,
    overrides: OverridesArgument = None,
    params: ParamsOption = None,
    runs: Annotated[
        list[str] | None, typer.Option("--run", help="Runs to compare (repeat); default: top N.")
    ] = None,
    top: Annotated[int, typer.Option(help="How many of the best evaluated runs.")] = 10,
    out: Annotated[
        Path | None, typer.Option(help="Folder for compare_<task>.{md,csv,png}.")
    ] = None,
) -> None:
    """Evaluated runs side by side: quality with intervals, fairness gaps, latency; champion marked.

    Examples: cesagram compare risk; cesagram compare indicators --run 1a2b... --run 3c4d...
    """
    from cesagram.evaluation.compare import (
        COLUMNS,
        comparison_plot,
        comparison_rows,
        to_csv,
        to_markdown,
    )
    from cesagram.evaluation.promotion import PRIMARY_METRIC
    from cesagram.training.tracking import tracking_uri

    cfg = run_config(params, overrides or [])
    rows = comparison_rows(
        tracking_uri(cfg.logger.tracking_uri),
        cfg.logger.experiment_name,
        task.value,
        cfg[task.value].registered_model,
        run_ids=runs or (),
        top=top,
    )
    if not rows:
        raise ConfigError(
            f"no evaluated {task.value} runs yet; run `cesagram evaluate {task.value}`"
        )
    metric = PRIMARY_METRIC[task.value]
    table = Table(title=f"{task.value}: {metric} (★ champion)", title_justify="left")
    for _, label in COLUMNS:
        table.add_column(label)
    for row in rows:
        table.add_row(
            *(
                "n/a"
                if isinstance(row[key], float) and row[key] != row[key]
                else f"{row[key]:.3f}"
                if isinstance(row[key], float)
                else str(row[key])
                for key, _ in COLUMNS
            )
        )
    console.print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"compare_{task.value}.md").write_text(to_markdown(rows, f"{task.value}: {metric}"))
        (out / f"compare_{task.value}.csv").write_text(to_csv(rows))
        comparison_plot(rows, metric, out / f"compare_{task.value}.png")
        console.print(f"comparison -> {out}/compare_{task.value}.{{md,csv,png}}")


@app.command("tune")
@user_errors
def tune_command(overrides: OverridesArgument = None) -> None:
    """Run, resume or join an Optuna study (hparams_search=NAME); export the chosen trial.

    Running the same command again resumes the study; the same command in more processes or
    machines on one storage shares it. Examples: cesagram tune hparams_search=indicators_quick;
    cesagram tune hparams_search=risk_quick hparams_search.n_trials=40
    hparams_search.storage=postgresql://user@db/optuna
    """
    from cesagram.tuning import run_study
    from cesagram.tuning.progress import TrialProgress

    with TrialProgress(error_console) as progress:
        result = run_study(overrides or [], on_progress=progress.update)
    if result.front:
        metrics = list(result.front[0]["values"])
        table = Table(
            title=f"{result.study_name}: {'Pareto front' if len(metrics) > 1 else 'best trial'}",
            title_justify="left",
        )
        for column in ("trial", *metrics, "parameters"):
            table.add_column(column, justify="left" if column == "parameters" else "right")
        for row in result.front:
            table.add_row(
                str(row["trial"]),
                *(f"{row['values'][metric]:.4f}" for metric in metrics),
                _format_params(row["params"]),
            )
        console.print(table)
    counts = ", ".join(f"{state.lower()} {n}" for state, n in result.counts.items() if n)
    console.print(f"{result.stop_reason}; trials: {counts or 'none'}")
    decision = result.decision
    if decision["trial"] is None:
        console.print(f"[yellow]no trial chosen[/]: {decision['reason']}", soft_wrap=True)
    else:
        console.print(f"chosen: trial {decision['trial']} ({decision['reason']})", soft_wrap=True)
        console.print(f"best config -> {result.experiment_config}")
    console.print(
        f"study -> {result.study_dir}/ (storage {result.storage}; "
        f"MLflow parent run {result.parent_run_id})",
        soft_wrap=True,
    )


def _format_params(params: dict[str, Any]) -> str:
    return " ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in params.items()
    )


@app.command("export")
@user_errors
def export_command(
    task: TaskArgument,
    overrides: OverridesArgument = None,
    params: ParamsOption = None,
    version: Annotated[
        str, typer.Option(help="A registered version number or alias.")
    ] = "champion",
) -> None:
    """Copy a registered model (the champion by default) into the BentoML model store.

    Examples: cesagram export risk; cesagram export indicators --version 3
    """
    from cesagram.export import export_to_bento
    from cesagram.training.tracking import tracking_uri

    cfg = run_config(params, overrides or [])
    splits = Path(cfg.paths.splits_dir)
    result = export_to_bento(
        tracking_uri(cfg.logger.tracking_uri),
        cfg[task.value].registered_model,
        version,
        splits_dir=splits if (splits / "test.parquet").exists() else None,
    )
    console.print(
        f"{result.tag} <- {cfg[task.value].registered_model} version {result.version} "
        f"(MLflow run {result.run_id}, sha256 {result.sha256[:12]}…) at {result.path}"
    )


@app.command("bento")
@user_errors
def bento_command(
    overrides: OverridesArgument = None,
    params: ParamsOption = None,
    version: Annotated[
        str, typer.Option(help="The registered version or alias of both models.")
    ] = "champion",
    bentofile: Annotated[
        Path, typer.Option(help="bentofile.yaml (CPU image) or bentofile.gpu.yaml.")
    ] = Path("bentofile.yaml"),
    out: Annotated[Path | None, typer.Option(help="Where to record what was built (JSON).")] = None,
) -> None:
    """Export both champions (with their ONNX variants) and build the Bento of the service.

    Examples: cesagram bento; cesagram bento serving=gpu --bentofile bentofile.gpu.yaml
    """
    from cesagram.export.build import build_bento, write_summary
    from cesagram.training.tracking import tracking_uri

    cfg = run_config(params, overrides or [])
    build = build_bento(
        tracking_uri(cfg.logger.tracking_uri),
        {task: cfg[task].registered_model for task in ("indicators", "risk")},
        OmegaConf.to_container(cfg.serving, resolve=True),  # type: ignore[arg-type]
        project=Path.cwd(),
        splits_dir=Path(cfg.paths.splits_dir),
        bentofile=bentofile,
        version=version,
    )
    for task, result in build.exports.items():
        onnx = result.onnx or {}
        served = f"ONNX {onnx.get('chosen')}" if onnx.get("shipped") else "PyTorch"
        console.print(f"{task}: {result.tag} (version {result.version}), served with {served}")
    console.print(f"Bento {build.bento_tag} at {build.bento_path}")
    console.print(f"serve it: bentoml serve {build.bento_tag}")
    if out is not None:
        write_summary(build, out)


@app.command("status")
@user_errors
def status_command(
    summary: Annotated[Path, typer.Option(help="Dataset summary (JSON).")] = DEFAULT_SUMMARY,
) -> None:
    """Print what the pipeline produced and where to look next."""
    if not summary.exists():
        raise ConfigError(f"{summary}: not found; run `make run` (or `dvc repro`) first")
    _print_summary(json.loads(summary.read_text(encoding="utf-8")))
    console.print(
        "\n".join(
            [
                f"splits:     {DEFAULT_SPLITS}/{{train,val,test}}.parquet",
                f"quarantine: {DEFAULT_INTERIM}/<source>/{QUARANTINE_FILE}",
                f"summary:    {summary}  (compare runs: dvc metrics diff)",
                "next:       cesagram data validate data/splits/train.parquet",
            ]
        )
    )
    _print_models(summary.parent)


def _print_models(metrics_dir: Path) -> None:
    """Each evaluated model's headline, gates and promotion decision, when the pipeline has them."""
    primary = {"indicators": "test/macro_f1", "risk": "test/auprc"}
    for task, metric in primary.items():
        path = metrics_dir / f"eval_{task}.json"
        if not path.exists():
            continue
        evaluated = json.loads(path.read_text())
        baseline = evaluated.get(f"baseline/{metric}")
        promotion = Path("reports/promotion") / f"{task}.json"
        decision = json.loads(promotion.read_text()) if promotion.exists() else {}
        console.print(
            f"{task}: {metric} {evaluated.get(metric, float('nan')):.3f} "
            f"[{evaluated.get(f'{metric}_low', float('nan')):.3f}, "
            f"{evaluated.get(f'{metric}_high', float('nan')):.3f}]"
            + (f" (TF-IDF baseline {baseline:.3f})" if baseline is not None else "")
            + f"; gates {'passed' if evaluated.get('gates/passed') else 'failed'}"
            + (f"; {decision['decision']}: {decision['reason']}" if decision else "")
        )
    if Path("reports/cards").exists():
        console.print(
            "cards:      reports/cards/<task>/*.html   compare: reports/compare/   "
            "MLflow: mlflow ui --backend-store-uri sqlite:///mlruns.db"
        )


def main() -> None:
    """Console-script entry point."""
    app()
