"""Dataset summary: counts per split, language, risk label and indicator (a DVC metrics file)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cesagram.data.schema import read_corpus_table
from cesagram.taxonomy import INDICATOR_IDS


def summarise_table(table: pa.Table) -> dict[str, Any]:
    """Counts for one corpus table."""
    messages = pc.list_flatten(table.column("messages"))
    labels = pc.list_flatten(pc.struct_field(messages, "labels")).to_pylist()
    label_counts = Counter(labels)
    risks = Counter(table.column("risk").to_pylist())
    languages = Counter(table.column("language").to_pylist())
    return {
        "conversations": table.num_rows,
        "messages": len(messages),
        "risk": {
            "positive": risks.get(1, 0),
            "negative": risks.get(0, 0),
            "unknown": risks.get(None, 0),
        },
        "languages": dict(sorted(languages.items())),
        "indicators": {indicator: label_counts.get(indicator, 0) for indicator in INDICATOR_IDS},
        "messages_with_indicators": int(
            pc.sum(pc.greater(pc.list_value_length(pc.struct_field(messages, "labels")), 0)).as_py()
            or 0
        ),
    }


def summarise_splits(split_paths: Mapping[str, Path]) -> dict[str, Any]:
    """Counts for every split and in total."""
    tables = {name: read_corpus_table(path) for name, path in split_paths.items()}
    summary = {name: summarise_table(table) for name, table in tables.items()}
    summary["total"] = summarise_table(pa.concat_tables(tables.values()))
    return summary


def write_summary(split_paths: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Write the summary as JSON to ``out`` and return it."""
    summary = summarise_splits(split_paths)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
