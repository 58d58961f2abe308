"""Render a model card from an evaluation report and the run that produced it.

The card follows Mitchell et al., "Model Cards for Model Reporting", and the Hugging Face model
card template. Two rules shape this module:

- **Only recorded numbers.** Every number on the card is read from ``report`` or ``run`` and
  printed by `format_metric`, `format_interval` or `format_count`; nothing is computed, and no
  absent value is replaced by a default. A section or field the report lacks reads
  ``not recorded``; a value recorded as NaN or ``null`` reads ``n/a``. The only numbers of the
  card's own are its caveat rules, `WIDE_INTERVAL` and `ROBUSTNESS_FLOOR`, printed where used.
- **One content, two layouts.** The sections are built once here, as plain blocks (paragraphs,
  facts, tables, bullets, figures) holding already formatted strings; the Jinja2 templates
  ``templates/card.md.j2`` and ``templates/card.html.j2`` only lay them out, so the Markdown and
  the HTML card always say the same thing. The HTML template autoescapes; Markdown text passes
  through `escape_markdown`.

Inputs are the JSON-ready evaluation report (see the package docstring for its keys) and the run
record ``{"run_id", "experiment", "start_time", "params", "tags"}``. A value of the wrong type
raises `ValueError` naming where it was found, e.g. ``report.metrics.auprc.low``.
"""

from __future__ import annotations

import base64
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import jinja2

from cesagram.taxonomy import INDICATORS

logger = logging.getLogger(__name__)

NOT_RECORDED = "not recorded"
NOT_AVAILABLE = "n/a"

# Caveat rules, the card's only numbers of its own (each is printed next to the caveat it raises).
# A group's TPR interval wider than this means its TPR is too uncertain to compare with others.
WIDE_INTERVAL = 0.2
# A perturbation whose pass rate is below this is listed as a robustness weakness.
ROBUSTNESS_FLOOR = 0.9

# The CESAGRAM pilot languages (Belgium nl/fr, Greece el, Italy it, Lithuania lt) plus en, de, es.
PRIORITY_LANGUAGES: tuple[str, ...] = ("nl", "fr", "el", "it", "lt", "en", "de", "es")

SYNTHETIC_SOURCE = "synthetic"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_TASKS = {
    "indicators": "message-level grooming indicators (multi-label)",
    "risk": "conversation-level grooming risk",
}
_METRIC_NAMES = {
    "auprc": "AUPRC",
    "auroc": "AUROC",
    "f1": "F1",
    "f05": "F0.5",
    "precision": "Precision",
    "recall": "Recall",
    "macro_f1": "Macro-F1",
    "macro_f1_supported": "Macro-F1 (supported labels)",
    "micro_f1": "Micro-F1",
}
_EARLY_DETECTION_COLUMNS = (
    ("f1", "F1"),
    ("speed", "Speed"),
    ("f_latency", "F_latency"),
    ("erde_5", "ERDE_5"),
    ("erde_50", "ERDE_50"),
    ("median_latency", "Median latency (messages)"),
)
# Where each known plot belongs; any other plot goes with the headline metrics.
_PLOT_SECTIONS = {
    "reliability": "calibration",
    "risk_over_messages": "early_detection",
    "per_language": "disaggregated",
}
_LABEL_MEANINGS = {
    "risk": "The conversation is grooming (an author is an offender)",
    **{indicator.id: indicator.name for indicator in INDICATORS},
}
_GATE_KINDS = {"min": "at least", "max": "at most"}


# ---------------------------------------------------------------------------------------------
# Number formatting: the one place a number becomes text.


def format_metric(value: float | None) -> str:
    """A metric with 3 decimals (``0.912``); NaN, infinite or ``None`` (undefined) as ``n/a``."""
    if value is None or not math.isfinite(value):
        return NOT_AVAILABLE
    text = f"{value:.3f}"
    return "0.000" if text == "-0.000" else text


def format_interval(estimate: float | None, low: float | None, high: float | None) -> str:
    """An estimate with its 95% interval: ``0.912 [0.880, 0.940]``."""
    return f"{format_metric(estimate)} [{format_metric(low)}, {format_metric(high)}]"


def format_count(value: float | None) -> str:
    """A count with thousands separators (``12,345``); a non-integral value as a metric."""
    if value is None or not math.isfinite(value) or not float(value).is_integer():
        return format_metric(value)
    return f"{int(value):,}"


_MARKDOWN_SPECIAL = re.compile(r"[\\`*|<>&]|(?<!\w)_|_(?!\w)")
_MARKDOWN_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def escape_markdown(text: object) -> str:
    """Text safe inside a Markdown paragraph or table cell: one line, no markup, no raw HTML.

    Underscores inside words (``risk_assessment``) stay as they are: they cannot start emphasis.
    """
    line = " ".join(str(text).split())
    return _MARKDOWN_SPECIAL.sub(
        lambda match: _MARKDOWN_ENTITIES.get(match.group(), "\\" + match.group()), line
    )


# ---------------------------------------------------------------------------------------------
# Blocks: what a section is made of. Templates dispatch on ``kind``.


@dataclass(frozen=True)
class Paragraph:
    """A sentence or two of text."""

    text: str
    kind: ClassVar[str] = "paragraph"


@dataclass(frozen=True)
class Facts:
    """Label-value pairs (model name, ECE before calibration, ...)."""

    rows: tuple[tuple[str, str], ...]
    caption: str = ""
    kind: ClassVar[str] = "facts"


@dataclass(frozen=True)
class Table:
    """A table of formatted cells."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""
    kind: ClassVar[str] = "table"


@dataclass(frozen=True)
class Bullets:
    """An unordered list."""

    items: tuple[str, ...]
    caption: str = ""
    kind: ClassVar[str] = "bullets"


@dataclass(frozen=True)
class Figure:
    """A plot: a file name for the Markdown card, the PNG as a data URI for the HTML card."""

    key: str
    filename: str | None
    data_uri: str | None
    kind: ClassVar[str] = "figure"


Block = Paragraph | Facts | Table | Bullets | Figure


@dataclass(frozen=True)
class Section:
    """One titled part of the card."""

    id: str
    title: str
    blocks: tuple[Block, ...]


# ---------------------------------------------------------------------------------------------
# Reading the report: typed access that tells absent from undefined and names what is wrong.


@dataclass(frozen=True)
class _Record:
    """A mapping from the report or run, with the path used in error messages."""

    data: Mapping[str, Any]
    path: str

    def has(self, key: str) -> bool:
        return key in self.data

    def child(self, key: str) -> _Record | None:
        """The sub-mapping at ``key``; None when absent or null (a section not recorded)."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ValueError(
                f"{self.path}.{key}: expected a mapping, found {type(value).__name__} {value!r}"
            )
        return _Record(value, f"{self.path}.{key}")

    def children(self, key: str) -> list[_Record] | None:
        """The list of mappings at ``key``; None when absent or null."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ValueError(
                f"{self.path}.{key}: expected a list, found {type(value).__name__} {value!r}"
            )
        records = []
        for index, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise ValueError(
                    f"{self.path}.{key}[{index}]: expected a mapping, found "
                    f"{type(item).__name__} {item!r}"
                )
            records.append(_Record(item, f"{self.path}.{key}[{index}]"))
        return records

    def number(self, key: str) -> float | None:
        """The number at ``key``; None when absent or null. Callers check `has` first."""
        return _as_number(self.data.get(key), f"{self.path}.{key}")

    def metric(self, key: str) -> str:
        return format_metric(self.number(key)) if self.has(key) else NOT_RECORDED

    def count(self, key: str) -> str:
        return format_count(self.number(key)) if self.has(key) else NOT_RECORDED

    def interval(self, key: str) -> str:
        """``estimate [low, high]`` from ``{estimate, low, high}``, or a bare number as a metric."""
        if not self.has(key):
            return NOT_RECORDED
        value = self.data[key]
        if isinstance(value, Mapping):
            return _interval_text(_Record(value, f"{self.path}.{key}"))
        return self.metric(key)

    def text(self, key: str) -> str:
        value = self.data.get(key)
        return NOT_RECORDED if value is None else str(value)

    def value(self, key: str) -> str:
        """Any recorded scalar: yes/no, a count, a metric or text."""
        if not self.has(key):
            return NOT_RECORDED
        value = self.data[key]
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, int):
            return format_count(value)
        if isinstance(value, float):
            return format_metric(value)
        return NOT_AVAILABLE if value is None else str(value)

    def items(self) -> list[tuple[str, Any]]:
        return [(str(key), value) for key, value in self.data.items()]


def _as_number(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: expected a number, found {type(value).__name__} {value!r}")
    return float(value)


def _interval_text(record: _Record) -> str:
    if not record.has("estimate"):
        raise ValueError(f"{record.path}: an interval needs an 'estimate'; found {record.data!r}")
    if record.has("low") and record.has("high"):
        return format_interval(
            record.number("estimate"), record.number("low"), record.number("high")
        )
    return record.metric("estimate")


def _interval_bounds(record: _Record, key: str) -> tuple[float, float] | None:
    """The finite (low, high) of the interval at ``key``, if one was recorded."""
    interval = record.child(key) if isinstance(record.data.get(key), Mapping) else None
    if interval is None or not (interval.has("low") and interval.has("high")):
        return None
    low, high = interval.number("low"), interval.number("high")
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return None
    return low, high


def _metric_name(key: str) -> str:
    return _METRIC_NAMES.get(key, key)


def _count_table(record: _Record, key: str, first: str, caption: str) -> Table | Paragraph:
    counts = record.child(key)
    if counts is None:
        return Paragraph(f"{caption}: {NOT_RECORDED}.")
    rows = tuple((name, counts.count(name)) for name, _ in counts.items())
    return Table((first, "Count"), rows, caption)


def _not_recorded(section_id: str, title: str, key: str, why: str = "") -> Section:
    sentence = f"This section is {NOT_RECORDED}: the evaluation report has no {key} entry"
    return Section(section_id, title, (Paragraph(f"{sentence}{why}."),))


# ---------------------------------------------------------------------------------------------
# Sections, in card order.


def _model_details(report: _Record, run: _Record) -> Section:
    model = report.child("model") or _Record({}, "report.model")
    tags = run.child("tags") or _Record({}, "run.tags")

    def recorded(key: str) -> str:
        # The report speaks for the model; the run's tags fill in what it left out.
        return model.text(key) if model.data.get(key) is not None else tags.text(key)

    task = report.text("task")
    facts = (
        ("Name", model.text("name")),
        ("Version", model.text("version")),
        ("Task", f"{task}: {_TASKS[task]}" if task in _TASKS else task),
        ("Model type", model.text("model_type")),
        ("Backbone", recorded("backbone")),
        ("Training strategy", _strategy_text(tags)),
        ("Run id", model.text("run_id") if model.has("run_id") else run.text("run_id")),
        ("Experiment", run.text("experiment")),
        ("Evaluation date", run.text("start_time")),
        ("Git commit", recorded("git_commit")),
        ("Data hash (sha256)", recorded("data_sha256")),
        ("DVC data hash (md5)", recorded("dvc_data_md5")),
    )
    blocks: list[Block] = [Facts(facts)]
    labels = model.data.get("label_names")
    if labels is None:
        blocks.append(Paragraph(f"Labels: {NOT_RECORDED}."))
    else:
        rows = tuple((str(label), _LABEL_MEANINGS.get(str(label), "")) for label in labels)
        blocks.append(Table(("Label", "Meaning in the taxonomy"), rows, "Labels"))
    return Section("model-details", "Model details", tuple(blocks))


def _strategy_text(tags: _Record) -> str:
    # How the model was fitted (configs/strategy/); the probe strategies also name their head.
    strategy = tags.text("strategy")
    if not tags.has("probe_head"):
        return strategy
    return f"{strategy} ({tags.text('probe_head')} probe head)"


def _intended_use(report: _Record) -> Section:
    task = report.data.get("task")
    what = {
        "indicators": "which messages show grooming indicators, and which indicators",
        "risk": "how likely a whole conversation is to be grooming, as it unfolds",
    }.get(str(task), "grooming indicators or grooming risk")
    items = (
        f"Scores {what}, with the messages behind each score as evidence, for trained human "
        "reviewers in child-protection and law-enforcement agencies.",
        "Early warning: bringing a conversation to a reviewer's attention sooner, so that a "
        "person decides what happens next.",
        "Prioritising a reviewer's queue; every flagged item is read by a person.",
    )
    return Section("intended-use", "Intended use", (Bullets(items),))


def _out_of_scope(report: _Record) -> Section:
    data = report.child("data")
    languages = data.child("languages") if data else None
    if languages is None:
        language_item = (
            "Any language: the evaluation languages are not recorded, so no language is validated."
        )
    else:
        evaluated = ", ".join(name for name, _ in languages.items())
        language_item = f"Languages other than those evaluated here ({evaluated})."
    items = (
        "Automatic action against a person (blocking, reporting, arrest) without a human "
        "reviewer's decision.",
        "Evidence in court on its own: a score is a lead for a reviewer, not proof.",
        "Profiling people or groups, or screening people rather than conversations.",
        language_item,
    )
    return Section("out-of-scope", "Out-of-scope uses", (Bullets(items),))


def _factors(report: _Record) -> Section:
    items: list[str] = []
    data = report.child("data")
    for key, label in (("languages", "Languages"), ("sources", "Sources")):
        counts = data.child(key) if data else None
        if counts is not None:
            items.append(
                f"{label} in the evaluation data: {', '.join(k for k, _ in counts.items())}"
            )
    fairness = report.child("fairness")
    for column, _ in fairness.items() if fairness else []:
        groups = (fairness.child(column) if fairness else None) or _Record({}, "")
        names = [group.text("group") for group in groups.children("groups") or []]
        items.append(f"Results disaggregated by {column}: {', '.join(names) or NOT_RECORDED}")
    if not items:
        return _not_recorded("factors", "Factors", "data or fairness")
    return Section("factors", "Factors", (Bullets(tuple(items)),))


def _metrics(report: _Record, figures: Sequence[Figure]) -> Section:
    blocks: list[Block] = []
    metrics = report.child("metrics")
    baseline = report.child("baseline")
    if metrics is None:
        blocks.append(Paragraph(f"Headline metrics: {NOT_RECORDED}."))
    else:
        names = [name for name, _ in metrics.items()]
        names += [name for name, _ in baseline.items() if name not in names] if baseline else []
        columns: tuple[str, ...] = ("Metric", "Estimate [95% interval]")
        rows: list[tuple[str, ...]] = [
            (_metric_name(name), metrics.interval(name)) for name in names
        ]
        if baseline is not None:
            columns = (*columns, "TF-IDF baseline")
            rows = [(*row, baseline.metric(name)) for row, name in zip(rows, names, strict=True)]
        blocks.append(Table(columns, tuple(rows), "Headline metrics on the test split"))
        if baseline is None:
            blocks.append(Paragraph(f"Baseline comparison: {NOT_RECORDED}."))
    blocks.append(_threshold(report))
    if report.data.get("task") == "indicators" or report.has("per_indicator"):
        blocks.append(_per_indicator(report))
    blocks.extend(figures)
    return Section("metrics", "Metrics", tuple(blocks))


def _threshold(report: _Record) -> Block:
    threshold = report.child("threshold")
    if threshold is None:
        return Paragraph(f"Decision threshold: {NOT_RECORDED}.")
    how = f"chosen on split {threshold.text('chosen_on')}, objective {threshold.text('objective')}"
    per_label = (
        threshold.child("value") if isinstance(threshold.data.get("value"), Mapping) else None
    )
    if per_label is None:
        return Facts((("Decision threshold", threshold.metric("value")), ("How chosen", how)))
    rows = tuple((name, per_label.metric(name)) for name, _ in per_label.items())
    return Table(("Indicator", "Threshold"), rows, f"Decision thresholds, {how}")


def _per_indicator(report: _Record) -> Block:
    indicators = report.children("per_indicator")
    if indicators is None:
        return Paragraph(f"Per-indicator results: {NOT_RECORDED}.")
    rows = tuple(
        (
            row.text("indicator"),
            row.metric("precision"),
            row.metric("recall"),
            row.metric("f1"),
            row.count("support"),
        )
        for row in indicators
    )
    return Table(("Indicator", "Precision", "Recall", "F1", "Support"), rows, "Per indicator")


def _evaluation_data(report: _Record) -> Section:
    data = report.child("data")
    if data is None:
        return _not_recorded("evaluation-data", "Evaluation data", "data")
    facts = Facts(
        (
            ("Split", data.text("split")),
            ("Conversations", data.count("conversations")),
            ("Messages", data.count("messages")),
            ("Examples", data.count("examples")),
        )
    )
    languages = data.child("languages")
    translated = data.child("translated")
    if languages is None:
        language_block: Block = Paragraph(f"Languages: {NOT_RECORDED}.")
    else:
        columns: tuple[str, ...] = ("Language", "Count")
        rows: list[tuple[str, ...]] = [
            (name, languages.count(name)) for name, _ in languages.items()
        ]
        if translated is not None:
            columns = (*columns, "Machine-translated")
            rows = [
                (*row, translated.count(row[0]) if translated.has(row[0]) else "none recorded")
                for row in rows
            ]
        language_block = Table(columns, tuple(rows), "Languages")
    blocks: list[Block] = [facts, language_block]
    if translated is None:
        blocks.append(Paragraph(f"Machine translation: {NOT_RECORDED}."))
    blocks.append(_count_table(data, "sources", "Source", "Sources"))
    return Section("evaluation-data", "Evaluation data", tuple(blocks))


def _training_data(report: _Record, run: _Record) -> Section:
    train = report.child("train_data")
    blocks: list[Block] = []
    if train is None:
        blocks.append(
            Paragraph(
                f"Training data provenance is {NOT_RECORDED}: the evaluation report has no "
                "train_data entry."
            )
        )
    else:
        blocks.append(Facts((("Conversations", train.count("conversations")),)))
        blocks.append(_count_table(train, "languages", "Language", "Languages"))
        blocks.append(_count_table(train, "sources", "Source", "Sources"))
        sources = train.child("sources")
        if sources is not None:
            names = [name for name, _ in sources.items()]
            other = [name for name in names if name != SYNTHETIC_SOURCE]
            provenance = [
                "Synthetic: the project's generated corpus is part of the training data."
                if SYNTHETIC_SOURCE in names
                else "Synthetic: the project's generated corpus is not part of the training data."
            ]
            provenance.append(
                f"Partner or public data: {', '.join(other)}."
                if other
                else "Partner or public data: none."
            )
            blocks.append(Bullets(tuple(provenance), "Provenance"))
        translated = train.child("translated")
        if translated is not None:
            blocks.append(_count_table(train, "translated", "Language", "Machine-translated"))
        else:
            blocks.append(Paragraph(f"Machine translation in the training data: {NOT_RECORDED}."))
    params = run.child("params")
    if params is None or not params.data:
        blocks.append(Paragraph(f"Training parameters: {NOT_RECORDED}."))
    else:
        rows = tuple((name, params.text(name)) for name, _ in sorted(params.items()))
        blocks.append(
            Table(("Parameter", "Value"), rows, "Training parameters recorded in the run")
        )
    return Section("training-data", "Training data", tuple(blocks))


def _disaggregated(report: _Record, figures: Sequence[Figure]) -> Section:
    fairness = report.child("fairness")
    if fairness is None:
        section = _not_recorded("disaggregated", "Disaggregated results", "fairness")
        return Section(section.id, section.title, section.blocks + tuple(figures))
    blocks: list[Block] = []
    for column, _ in fairness.items():
        result = fairness.child(column)
        assert result is not None  # items() only yields recorded keys
        groups = result.children("groups")
        if groups is None:
            blocks.append(Paragraph(f"Groups by {column}: {NOT_RECORDED}."))
        else:
            rows = tuple(
                (
                    group.text("group"),
                    group.count("count"),
                    group.count("positives"),
                    group.interval("tpr"),
                    group.interval("fpr"),
                    group.interval("f1"),
                    group.interval("selection_rate"),
                )
                for group in groups
            )
            columns = ("Group", "Count", "Positives", "TPR", "FPR", "F1", "Selection rate")
            blocks.append(Table(columns, rows, f"By {column} (95% intervals)"))
        min_tpr = result.metric("min_tpr")
        gaps = (
            ("Equalized-odds difference", result.metric("equalized_odds_difference")),
            ("Demographic-parity difference", result.metric("demographic_parity_difference")),
            ("TPR gap", result.metric("tpr_gap")),
            ("Lowest TPR", f"{min_tpr} ({result.text('min_tpr_group')})"),
        )
        blocks.append(Facts(gaps, f"Gaps by {column}"))
    return Section("disaggregated", "Disaggregated results", (*blocks, *figures))


def _early_detection(report: _Record, figures: Sequence[Figure]) -> Section:
    early = report.child("early_detection")
    title = "Early detection"
    if early is None:
        why = (
            " (early detection is measured for the risk task)"
            if report.data.get("task") == "indicators"
            else ""
        )
        section = _not_recorded("early-detection", title, "early_detection", why)
        return Section(section.id, title, section.blocks + tuple(figures))
    intro = Paragraph(
        "The risk score is recomputed after each message; a warning is raised once at least "
        "s (the skepticism) of the recent scores are positive, and stays raised. F_latency "
        "is F1 times speed (eSPD, Vogt et al.); ERDE_o (Losada and Crestani) also charges "
        "late true positives. Lower ERDE is better."
    )
    facts = Facts(
        (
            ("Skepticism used", early.count("skepticism")),
            ("Conversations", early.count("conversations")),
            ("F_latency", early.metric("f_latency")),
            ("ERDE_5", early.metric("erde_5")),
            ("ERDE_50", early.metric("erde_50")),
            ("Median latency (messages)", early.metric("median_latency")),
        )
    )
    blocks: list[Block] = [intro, facts]
    by_skepticism = early.child("by_skepticism")
    if by_skepticism is None:
        blocks.append(Paragraph(f"Results by skepticism: {NOT_RECORDED}."))
    else:
        rows = []
        for level, _ in sorted(by_skepticism.items(), key=lambda item: _level_order(item[0])):
            result = by_skepticism.child(level)
            assert result is not None
            rows.append((level, *(result.metric(key) for key, _ in _EARLY_DETECTION_COLUMNS)))
        columns = ("Skepticism", *(name for _, name in _EARLY_DETECTION_COLUMNS))
        blocks.append(Table(columns, tuple(rows), "By skepticism"))
    return Section("early-detection", title, (*blocks, *figures))


def _level_order(level: str) -> tuple[int, str]:
    return (int(level), level) if level.isdigit() else (1 << 30, level)


def _calibration(report: _Record, figures: Sequence[Figure]) -> Section:
    calibration = report.child("calibration")
    if calibration is None and not report.has("temperature"):
        section = _not_recorded("calibration", "Calibration", "calibration")
        return Section(section.id, section.title, section.blocks + tuple(figures))
    calibration = calibration or _Record({}, "report.calibration")
    rows = [
        ("ECE before temperature scaling", calibration.metric("ece_before")),
        ("ECE after temperature scaling", calibration.metric("ece_after")),
        ("Bins (equal width)", calibration.count("bins")),
    ]
    fitted, applied = calibration.metric("temperature"), report.metric("temperature")
    if fitted == applied or not calibration.has("temperature"):
        rows.append(("Temperature", applied))
    elif not report.has("temperature"):
        rows.append(("Temperature", fitted))
    else:
        rows += [("Temperature (calibration)", fitted), ("Temperature (model)", applied)]
    return Section("calibration", "Calibration", (Facts(tuple(rows)), *figures))


def _language_calibration(report: _Record) -> Section:
    title = "Calibration by language"
    section = report.child("language_calibration")
    if section is None:
        return _not_recorded("language-calibration", title, "language_calibration")
    intro = Paragraph(
        "Thresholds and temperatures fitted on each language's own validation labels where "
        "it has enough; other languages, and languages the model meets without labels, use "
        "the fallback. The fallback was chosen by leave-one-language-out measurement on "
        "validation data. All thresholds are on the raw score scale."
    )
    fallback = section.child("fallback") or _Record({}, f"{section.path}.fallback")
    facts = Facts(
        (
            ("Fallback threshold method", fallback.text("method")),
            ("Fallback temperature", fallback.metric("temperature")),
            ("Why", fallback.text("reason")),
            ("Validation positives needed per label", section.count("min_positives")),
            ("Validation rows needed for a temperature", section.count("min_examples")),
        )
    )
    blocks: list[Block] = [intro, facts]
    languages = section.child("languages")
    if languages is None:
        blocks.append(Paragraph(f"Per-language thresholds: {NOT_RECORDED}."))
    else:
        names: list[str] = []
        rows = []
        for language, _ in languages.items():
            entry = languages.child(language)
            assert entry is not None
            thresholds = entry.data.get("thresholds")
            fitted = set(entry.data.get("fitted_thresholds") or [])
            if isinstance(thresholds, Mapping):
                names = names or [str(name) for name in thresholds]
                values = [
                    format_metric(_as_number(thresholds.get(name), f"{entry.path}.thresholds"))
                    + ("" if name in fitted else " (fallback)")
                    for name in names
                ]
            else:
                names = names or ["threshold"]
                values = [entry.metric("thresholds") + ("" if fitted else " (fallback)")]
            temperature = entry.metric("temperature") + (
                "" if entry.data.get("fitted_temperature") else " (fallback)"
            )
            rows.append((language, entry.count("val_examples"), temperature, *values))
        columns = ("Language", "Validation rows", "Temperature", *names)
        blocks.append(Table(columns, tuple(rows), "Fitted per language"))
    tested = section.child("test")
    if tested is not None:
        rows = []
        for language, _ in tested.items():
            result = tested.child(language)
            assert result is not None
            rows.append(
                (
                    language,
                    result.text("calibration"),
                    result.metric("f_global"),
                    result.metric("f_language"),
                    result.metric("ece_global"),
                    result.metric("ece_language"),
                )
            )
        columns = (
            "Test language",
            "Calibration used",
            "F (global threshold)",
            "F (language threshold)",
            "ECE (global temperature)",
            "ECE (language temperature)",
        )
        caption = "On the test split: F-beta averaged over labels present, as chosen on validation"
        blocks.append(Table(columns, tuple(rows), caption))
    measured = fallback.child("measured")
    held_out = measured.child("per_language") if measured is not None else None
    if held_out is not None and held_out.data:
        rows = []
        for language, _ in held_out.items():
            result = held_out.child(language)
            assert result is not None
            rows.append(
                (
                    language,
                    result.metric("pooled"),
                    result.metric("language_balanced"),
                    result.metric("ece_pooled"),
                    result.metric("ece_none"),
                )
            )
        columns = (
            "Held-out language",
            "F pooled",
            "F language-balanced",
            "ECE pooled temperature",
            "ECE no temperature",
        )
        blocks.append(Table(columns, tuple(rows), "Fallback measurement (validation)"))
    return Section("language-calibration", title, tuple(blocks))


def _cross_lingual(report: _Record) -> Section:
    title = "Cross-lingual transfer"
    matrix = report.child("cross_lingual")
    if matrix is None:
        why = " (measure it with `cesagram evaluate <task> --cross-lingual`)"
        return _not_recorded("cross-lingual", title, "cross_lingual", why)
    intro = Paragraph(
        "One model per strategy and source language, trained on that language's training "
        "conversations only and tested on each language's test conversations. 'At source "
        "threshold' is what a partner gets deploying in a language without labels there; 'at "
        "target threshold' is what that language's own validation labels recover; AUROC and "
        "AUPRC do not depend on a threshold. The matrix measures the training recipe on the "
        "recorded data, not this model itself."
    )
    winner = matrix.child("winner") or _Record({}, f"{matrix.path}.winner")
    provenance = matrix.child("provenance") or _Record({}, f"{matrix.path}.provenance")
    facts = Facts(
        (
            ("F1 measured", matrix.text("metric")),
            ("Best-transferring strategy", winner.text("strategy")),
            ("Rule", winner.text("criterion")),
            ("Matrix data fingerprint", provenance.text("data_sha256")),
            ("Matrix git commit", provenance.text("git_commit")),
            ("Matrix MLflow run", provenance.text("mlflow_run_id")),
        )
    )
    blocks: list[Block] = [intro, facts]
    strategies = matrix.child("strategies")
    if strategies is None:
        blocks.append(Paragraph(f"Strategies: {NOT_RECORDED}."))
        return Section("cross-lingual", title, tuple(blocks))
    summary_rows = []
    for name, _ in strategies.items():
        entry = strategies.child(name)
        assert entry is not None
        summary = entry.child("summary") or _Record({}, f"{entry.path}.summary")
        summary_rows.append(
            (
                name,
                summary.metric("mean_transfer_f1"),
                summary.metric("mean_transfer_f1_target_threshold"),
                summary.metric("mean_transfer_auprc"),
                summary.metric("in_language_f1"),
            )
        )
    blocks.append(
        Table(
            (
                "Strategy",
                "Mean transfer F1 (source threshold)",
                "Mean transfer F1 (target threshold)",
                "Mean transfer AUPRC",
                "In-language F1",
            ),
            tuple(summary_rows),
            "Mean over target languages other than the source",
        )
    )
    for name, _ in strategies.items():
        entry = strategies.child(name)
        assert entry is not None
        cells = entry.children("cells") or []
        rows = tuple(
            (
                f"{cell.text('source')} → {cell.text('target')}"
                + (" (in language)" if cell.data.get("in_language") else ""),
                cell.metric("f1_source_threshold"),
                cell.metric("f1_target_threshold"),
                cell.metric("auroc"),
                cell.metric("auprc"),
            )
            for cell in cells
        )
        columns = (
            "Train → test",
            "F1 at source threshold",
            "F1 at target threshold",
            "AUROC",
            "AUPRC",
        )
        blocks.append(Table(columns, rows, f"Strategy {name}"))
    return Section("cross-lingual", title, tuple(blocks))


def _robustness(report: _Record) -> Section:
    robustness = report.child("robustness")
    if robustness is None:
        return _not_recorded("robustness", "Robustness", "robustness")
    rows = []
    for kind, _ in robustness.items():
        result = robustness.child(kind)
        assert result is not None
        rows.append(
            (kind, result.value("applicable"), result.value("passed"), result.metric("pass_rate"))
        )
    columns = ("Perturbation", "Applicable", "Passed", "Pass rate")
    return Section("robustness", "Robustness", (Table(columns, tuple(rows)),))


def _latency(report: _Record) -> Section:
    latency = report.child("latency")
    if latency is None:
        return _not_recorded("latency", "Latency", "latency")
    facts = (
        ("p50 (ms)", latency.metric("p50_ms")),
        ("p95 (ms)", latency.metric("p95_ms")),
        ("p99 (ms)", latency.metric("p99_ms")),
        ("Throughput batch size", latency.count("batch_size_throughput")),
        ("Throughput (items per second)", latency.metric("throughput_per_s")),
        ("Hardware", latency.text("hardware")),
        ("Device", latency.text("device")),
    )
    return Section("latency", "Latency", (Facts(facts),))


def _gates_and_promotion(report: _Record) -> Section:
    blocks: list[Block] = []
    gates = report.child("gates")
    if gates is None:
        blocks.append(Paragraph(f"Quality gates: {NOT_RECORDED}."))
    else:
        blocks.append(Facts((("All gates passed", gates.value("passed")),)))
        results = gates.children("results")
        if results is None:
            blocks.append(Paragraph(f"Gate results: {NOT_RECORDED}."))
        else:
            rows = tuple(
                (
                    gate.text("gate"),
                    gate.text("metric"),
                    gate.metric("value"),
                    _GATE_KINDS.get(gate.text("kind"), gate.text("kind")),
                    gate.metric("limit"),
                    gate.metric("margin"),
                    _pass_text(gate),
                )
                for gate in results
            )
            columns = ("Gate", "Metric", "Value", "Must be", "Limit", "Margin", "Result")
            blocks.append(Table(columns, rows, "Gates"))
    promotion = report.child("promotion")
    if promotion is None:
        blocks.append(Paragraph(f"Promotion decision: {NOT_RECORDED}."))
    else:
        facts = (
            ("Alias", promotion.text("alias")),
            ("Decision", promotion.text("decision")),
            ("Reason", promotion.text("reason")),
        )
        blocks.append(Facts(facts, "Promotion"))
    return Section("gates", "Gates and promotion decision", tuple(blocks))


def _pass_text(gate: _Record) -> str:
    passed = gate.data.get("passed")
    return NOT_RECORDED if passed is None else ("pass" if passed else "FAIL")


def _ethics(report: _Record) -> Section:
    items = [
        "Content rule: the repository, its synthetic data and its test fixtures contain no "
        "sexually explicit text and no sexual content involving a minor; the desensitisation "
        "indicator is written at category level, with [REDACTED-SEXUAL] standing for anything "
        "beyond it.",
        "Pseudonymisation: author ids and identifiers in text (handles, e-mail addresses, "
        "phone numbers, links) are replaced by keyed hashes before training; services and logs "
        "record ids, lengths, hashes and scores, never message text.",
        "Synthetic data: generated conversations show the indicators in clear, stereotyped "
        "forms; real grooming is subtler and slower, so scores on synthetic data overstate "
        "what the model does on real chats.",
        "Public corpora such as PAN12 take their positives from adult decoys, not from "
        "children, and their negatives are largely topic-distinct; topic shortcuts can inflate "
        "scores.",
        "A false positive puts an innocent person's conversation in front of an investigator; "
        "a false negative leaves a child unprotected. The threshold trades one for the other "
        "and is a policy decision for the deploying agency.",
    ]
    return Section("ethical-considerations", "Ethical considerations", (Bullets(tuple(items)),))


def _caveats(report: _Record, run: _Record) -> Section:
    caveats: list[str] = []
    caveats += _gate_caveats(report)
    caveats += _fairness_caveats(report)
    caveats += _robustness_caveats(report)
    caveats += _baseline_caveats(report)
    caveats += _data_caveats(report)
    caveats += _provenance_caveats(report, run)
    promotion = report.child("promotion")
    if promotion is not None and promotion.data.get("decision") not in (None, "promoted"):
        caveats.append(
            f"This model was not promoted to {promotion.text('alias')} (decision: "
            f"{promotion.text('decision')}; {promotion.text('reason')})."
        )
    missing = [key for key in _RECORDED_SECTIONS if report.data.get(key) is None]
    if missing:
        caveats.append(
            f"Not recorded by the evaluation, so this card cannot vouch for them: "
            f"{', '.join(missing)}."
        )
    if not caveats:
        caveats.append("No caveat was raised by the recorded results.")
    recommendations = (
        "Keep a trained human reviewer between every score and any action.",
        "Before deploying in a language or on a platform, evaluate on the partner's own "
        "labelled data from it and compare with this card.",
        "Re-check calibration and the decision threshold when the data or the platform "
        "changes; a threshold chosen on one population does not transfer unchecked.",
    )
    blocks = (
        Bullets(tuple(caveats), "Caveats from the recorded results"),
        Bullets(recommendations, "Recommendations"),
    )
    return Section("caveats", "Caveats and recommendations", blocks)


_RECORDED_SECTIONS = (
    "data",
    "train_data",
    "threshold",
    "calibration",
    "fairness",
    "robustness",
    "latency",
    "gates",
    "baseline",
    "promotion",
)


def _gate_caveats(report: _Record) -> list[str]:
    gates = report.child("gates")
    if gates is None:
        return ["No quality gates were recorded: this model has not been checked against them."]
    failed = [gate for gate in gates.children("results") or [] if gate.data.get("passed") is False]
    caveats = [
        f"Gate {gate.text('gate')} failed: {gate.text('metric')} = {gate.metric('value')}, "
        f"must be {_GATE_KINDS.get(gate.text('kind'), gate.text('kind'))} {gate.metric('limit')}."
        for gate in failed
    ]
    if gates.data.get("passed") is False and not failed:
        caveats.append("The gates did not pass, but no failing gate was recorded.")
    return caveats


def _fairness_caveats(report: _Record) -> list[str]:
    fairness = report.child("fairness")
    caveats: list[str] = []
    for column, _ in fairness.items() if fairness else []:
        result = fairness.child(column) if fairness else None
        assert result is not None
        if result.data.get("min_tpr_group") is not None:
            caveats.append(
                f"Lowest TPR by {column}: {result.text('min_tpr_group')} "
                f"(TPR {result.metric('min_tpr')})."
            )
        for group in result.children("groups") or []:
            bounds = _interval_bounds(group, "tpr")
            if bounds is not None and bounds[1] - bounds[0] > WIDE_INTERVAL:
                caveats.append(
                    f"TPR for {column} = {group.text('group')} is uncertain: "
                    f"{group.interval('tpr')}, an interval wider than "
                    f"{format_metric(WIDE_INTERVAL)}; "
                    f"positives: {group.count('positives')}."
                )
    return caveats


def _robustness_caveats(report: _Record) -> list[str]:
    robustness = report.child("robustness")
    caveats = []
    for kind, _ in robustness.items() if robustness else []:
        result = robustness.child(kind) if robustness else None
        assert result is not None
        pass_rate = result.number("pass_rate") if result.has("pass_rate") else None
        if pass_rate is not None and pass_rate < ROBUSTNESS_FLOOR:
            caveats.append(
                f"Perturbation {kind}: pass rate {result.metric('pass_rate')}, below "
                f"{format_metric(ROBUSTNESS_FLOOR)}."
            )
    return caveats


def _baseline_caveats(report: _Record) -> list[str]:
    metrics, baseline = report.child("metrics"), report.child("baseline")
    caveats: list[str] = []
    if metrics is None:
        return caveats
    for name, value in metrics.items():
        where = f"{metrics.path}.{name}"
        estimate = _as_number(
            value.get("estimate") if isinstance(value, Mapping) else value,
            f"{where}.estimate" if isinstance(value, Mapping) else where,
        )
        if estimate is None or math.isnan(estimate):
            caveats.append(f"{_metric_name(name)} is undefined (n/a) on the test data.")
            continue
        reference = baseline.number(name) if baseline is not None and baseline.has(name) else None
        if reference is not None and reference >= estimate:
            caveats.append(
                f"The TF-IDF baseline matches or beats the model on {_metric_name(name)}: "
                f"{baseline.metric(name) if baseline else ''} against {format_metric(estimate)}."
            )
    return caveats


def _data_caveats(report: _Record) -> list[str]:
    caveats: list[str] = []
    data = report.child("data")
    languages = data.child("languages") if data else None
    if languages is not None:
        missing = [code for code in PRIORITY_LANGUAGES if not languages.has(code)]
        if missing:
            caveats.append(
                f"CESAGRAM priority languages absent from the evaluation data: "
                f"{', '.join(missing)}; the model is not validated for them."
            )
    translated = data.child("translated") if data else None
    if translated is not None:
        names = [name for name, value in translated.items() if value]
        if names:
            caveats.append(
                f"Evaluation data in {', '.join(names)} includes machine-translated conversations; "
                "results there may not hold on native text."
            )
    train = report.child("train_data")
    sources = train.child("sources") if train else None
    if sources is not None and [name for name, _ in sources.items()] == [SYNTHETIC_SOURCE]:
        caveats.append(
            "The model was trained on synthetic data only; expect lower scores on real chats."
        )
    return caveats


def _provenance_caveats(report: _Record, run: _Record) -> list[str]:
    model, tags = report.child("model"), run.child("tags")
    if model is None or tags is None:
        return []
    caveats = []
    for key in ("git_commit", "data_sha256", "dvc_data_md5", "backbone"):
        ours, theirs = model.data.get(key), tags.data.get(key)
        if ours is not None and theirs is not None and str(ours) != str(theirs):
            caveats.append(
                f"The report and the run disagree on {key} ({ours} against {theirs}); the card "
                "shows the report's."
            )
    return caveats


# ---------------------------------------------------------------------------------------------
# Figures and rendering.


def _figures(report: _Record, plots: Mapping[str, bytes] | None) -> dict[str, list[Figure]]:
    """Figures by section id: those the report names, then any extra supplied plot bytes."""
    recorded = report.child("plots")
    keys = [key for key, _ in recorded.items()] if recorded else []
    filenames = {recorded.text(key) for key in keys} if recorded else set()
    keys += [key for key in plots or {} if key not in keys and key not in filenames]
    by_section: dict[str, list[Figure]] = {}
    for key in keys:
        filename = recorded.text(key) if recorded is not None and recorded.has(key) else None
        data = None
        if plots is not None:
            data = plots.get(key, plots.get(filename, None) if filename else None)
        data_uri = _png_data_uri(data, key) if data is not None else None
        figure = Figure(key, filename, data_uri)
        by_section.setdefault(_PLOT_SECTIONS.get(key, "metrics"), []).append(figure)
    return by_section


def _png_data_uri(data: bytes, key: str) -> str:
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(
            f"plots[{key!r}]: expected PNG bytes (starting {PNG_SIGNATURE!r}), found {data[:8]!r}"
        )
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def build_sections(
    report: Mapping[str, Any], run: Mapping[str, Any], plots: Mapping[str, bytes] | None = None
) -> list[Section]:
    """The card's sections in order, every value already formatted.

    Args:
        report: the evaluation report.
        run: the run record (``run_id``, ``experiment``, ``start_time``, ``params``, ``tags``).
        plots: PNG bytes by plot key (or by file name) to embed; None for the Markdown card.

    Raises:
        ValueError: a report or run value has the wrong type, or a plot is not a PNG.
    """
    report_record, run_record = _Record(report, "report"), _Record(run, "run")
    figures = _figures(report_record, plots)
    return [
        _model_details(report_record, run_record),
        _intended_use(report_record),
        _out_of_scope(report_record),
        _factors(report_record),
        _metrics(report_record, figures.get("metrics", [])),
        _evaluation_data(report_record),
        _training_data(report_record, run_record),
        _disaggregated(report_record, figures.get("disaggregated", [])),
        _early_detection(report_record, figures.get("early_detection", [])),
        _calibration(report_record, figures.get("calibration", [])),
        _language_calibration(report_record),
        _cross_lingual(report_record),
        _robustness(report_record),
        _latency(report_record),
        _gates_and_promotion(report_record),
        _ethics(report_record),
        _caveats(report_record, run_record),
    ]


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("cesagram.cards", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["md"] = escape_markdown
    return environment


def _title(report: Mapping[str, Any]) -> str:
    model = report.get("model")
    name = model.get("name") if isinstance(model, Mapping) else None
    version = model.get("version") if isinstance(model, Mapping) else None
    title = str(name) if name is not None else "unnamed model"
    return f"{title} version {version}" if version is not None else title


def _render(template: str, sections: Iterable[Section], report: Mapping[str, Any]) -> str:
    return (
        _environment()
        .get_template(template)
        .render(title=_title(report), sections=list(sections), not_recorded=NOT_RECORDED)
    )


def render_markdown(report: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    """The model card as Markdown; plots are linked by the file names the report records."""
    return _render("card.md.j2", build_sections(report, run), report)


def render_html(
    report: Mapping[str, Any], run: Mapping[str, Any], plots: Mapping[str, bytes]
) -> str:
    """The model card as one self-contained HTML page, plots embedded as base64 PNG images.

    Args:
        report: the evaluation report.
        run: the run record.
        plots: PNG bytes by plot key (``reliability``, ...) or by the file name the report's
            ``plots`` section gives; a recorded plot without bytes is named but not shown.

    Raises:
        ValueError: a report or run value has the wrong type, or a plot is not a PNG.
    """
    return _render("card.html.j2", build_sections(report, run, plots), report)


def write_card(
    report: Mapping[str, Any],
    run: Mapping[str, Any],
    plots: Mapping[str, bytes],
    out_dir: Path,
    stem: str,
) -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.html`` into ``out_dir`` (created if needed).

    Returns:
        The Markdown and HTML paths.
    """
    markdown, html = render_markdown(report, run), render_html(report, run, plots)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown_path, html_path = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
    markdown_path.write_text(markdown, encoding="utf-8")
    html_path.write_text(html, encoding="utf-8")
    logger.info("Wrote model card %s and %s", markdown_path, html_path)
    return markdown_path, html_path
