"""``cesagram compare``: evaluated runs side by side (terminal, Markdown, CSV and a plot).

Rows come from what MLflow recorded for each run: the primary test metric with its interval,
the language fairness gaps, the lowest per-language recall, latency, robustness and the
baseline's score; the champion version is marked. A probe's head shows with its strategy
(``linear_probe:mlp``, ``lp_ft:logistic``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cesagram.evaluation.promotion import PRIMARY_METRIC, current_champion

COLUMNS = (
    ("run", "run"),
    ("model", "model"),
    ("strategy", "strategy"),
    ("version", "version"),
    ("champion", "champion"),
    ("primary", "primary"),
    ("low", "95% low"),
    ("high", "95% high"),
    ("eod_language", "EOD language"),
    ("min_tpr_language", "min TPR language"),
    ("robustness_min", "min robustness"),
    ("p95_ms", "p95 ms"),
    ("gates", "gates"),
)


def comparison_rows(
    uri: str,
    experiment: str,
    task: str,
    registered_model: str,
    *,
    run_ids: Sequence[str] = (),
    top: int = 10,
) -> list[dict[str, Any]]:
    """One row per run: the given runs, or the best ``top`` evaluated runs of the task."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    metric = PRIMARY_METRIC[task]
    if run_ids:
        runs = [client.get_run(run_id) for run_id in run_ids]
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return []
        runs = client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.task = '{task}'",
            order_by=[f"metrics.`{metric}` DESC"],
            max_results=max(top * 3, top),
        )
        runs = [run for run in runs if metric in run.data.metrics][:top]
    champion = current_champion(uri, registered_model)
    rows = []
    for run in runs:
        values = run.data.metrics
        tags = run.data.tags
        version = tags.get("registered_version")
        rows.append(
            {
                "run": run.info.run_id[:8],
                "model": f"{tags.get('model_type', 'transformer')}:{tags.get('backbone', '?')}",
                "strategy": _strategy(tags),
                "version": version or "-",
                "champion": "★" if version is not None and version == champion else "",
                "primary": values.get(metric, math.nan),
                "low": values.get(f"{metric}_low", math.nan),
                "high": values.get(f"{metric}_high", math.nan),
                "eod_language": values.get("fairness/language/equalized_odds_difference", math.nan),
                "min_tpr_language": values.get("fairness/language/min_tpr", math.nan),
                "robustness_min": values.get("robustness/min_pass_rate", math.nan),
                "p95_ms": values.get("latency/p95_ms", math.nan),
                "gates": tags.get("gates_passed", "-"),
            }
        )
    return rows


def _strategy(tags: dict[str, str]) -> str:
    # linear_probe and lp_ft runs tag their head (training.probe.HEAD_TAG); older runs do not.
    strategy = tags.get("strategy", "-")
    head = tags.get("probe_head")
    return f"{strategy}:{head}" if head else strategy


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.3f}"
    return str(value)


def to_markdown(rows: Sequence[dict[str, Any]], title: str) -> str:
    """A Markdown table of the rows."""
    header = "| " + " | ".join(label for _, label in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(row[key]) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join([f"## {title}", "", header, rule, *body]) + "\n"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV with machine-readable numbers (empty for not measured)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([key for key, _ in COLUMNS])
    for row in rows:
        writer.writerow(
            [
                "" if isinstance(row[key], float) and not math.isfinite(row[key]) else row[key]
                for key, _ in COLUMNS
            ]
        )
    return buffer.getvalue()


def comparison_plot(rows: Sequence[dict[str, Any]], metric: str, path: Path) -> Path:
    """The primary metric per run with its interval; the champion in a darker colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{row['run']}\n{row['model']}" for row in rows]
    estimates = [row["primary"] if math.isfinite(row["primary"]) else 0.0 for row in rows]
    errors = [
        [
            max(0.0, e - row["low"]) if math.isfinite(row["low"]) else 0.0
            for e, row in zip(estimates, rows, strict=True)
        ],
        [
            max(0.0, row["high"] - e) if math.isfinite(row["high"]) else 0.0
            for e, row in zip(estimates, rows, strict=True)
        ],
    ]
    colours = ["#1f3b73" if row["champion"] else "#8fa8d8" for row in rows]
    figure, axes = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 1), 3.5))
    axes.bar(labels, estimates, yerr=errors, capsize=3, color=colours)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} (dark: champion)")
    axes.tick_params(axis="x", labelsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
