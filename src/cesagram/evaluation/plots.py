"""Evaluation figures as PNG files, drawn only from numbers the report holds.

matplotlib's Agg backend: no display, the same on CI, a laptop and a server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle


def reliability_plot(curves: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> Path:
    """Reliability diagram: fraction positive against mean probability, one line per curve."""
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    for label, curve in curves.items():
        axes.plot(curve["mean_probability"], curve["fraction_positive"], marker="o", label=label)
    axes.set_xlabel("mean predicted probability")
    axes.set_ylabel("fraction positive")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left")
    axes.set_title("reliability (15 bins)")
    return _save(figure, path)


def group_metric_plot(
    groups: Sequence[str], intervals: Sequence[Mapping[str, float]], metric: str, path: Path
) -> Path:
    """One bar per group with its bootstrap 95% interval."""
    estimates = np.array([interval["estimate"] for interval in intervals], dtype=float)
    lows = np.array([interval["low"] for interval in intervals], dtype=float)
    highs = np.array([interval["high"] for interval in intervals], dtype=float)
    # A percentile interval need not contain the full-sample estimate (e.g. skewed metrics
    # near 1.0); matplotlib refuses negative error bars, so such a side is drawn as zero.
    errors = np.clip(np.nan_to_num(np.vstack([estimates - lows, highs - estimates])), 0, None)
    figure, axes = plt.subplots(figsize=(max(4.0, 0.7 * len(groups) + 1.5), 3.5))
    axes.bar(list(groups), np.nan_to_num(estimates), yerr=errors, capsize=3, color="#4c72b0")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} by language (95% bootstrap interval)")
    return _save(figure, path)


def risk_curves_plot(
    curves: Sequence[Mapping[str, Any]], threshold: float, skepticism: int, path: Path
) -> Path:
    """Risk after each message for sample conversations, with the warning point marked."""
    figure, axes = plt.subplots(figsize=(7, 4))
    for curve in curves:
        scores = curve["scores"]
        style = "-" if curve["risk"] == 1 else ":"
        label = f"{curve['language']} risk={curve['risk']}"
        (line,) = axes.plot(range(1, len(scores) + 1), scores, linestyle=style, label=label)
        if curve.get("latency") is not None:
            latency = curve["latency"]
            axes.plot([latency], [scores[latency - 1]], marker="v", color=line.get_color())
    axes.axhline(threshold, color="grey", linestyle="--", linewidth=1, label="threshold")
    axes.set_xlabel("messages read")
    axes.set_ylabel("risk score")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(f"risk over messages (warning ▼ at skepticism {skepticism})")
    axes.legend(fontsize=7, loc="lower right")
    return _save(figure, path)


def confusion_plot(per_indicator: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Per-indicator 2x2 confusion matrices (counts) in one grid."""
    columns = 5
    rows = max(1, -(-len(per_indicator) // columns))
    figure, grid = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.3 * rows))
    cells = np.atleast_1d(grid).ravel()
    for axes, row in zip(cells, per_indicator, strict=False):
        matrix = np.array([[row["tn"], row["fp"]], [row["fn"], row["tp"]]])
        axes.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            axes.text(j, i, str(count), ha="center", va="center", fontsize=8)
        axes.set_title(row["indicator"], fontsize=8)
        axes.set_xticks([0, 1], ["pred 0", "pred 1"], fontsize=6)
        axes.set_yticks([0, 1], ["true 0", "true 1"], fontsize=6)
    for axes in cells[len(per_indicator) :]:
        axes.axis("off")
    return _save(figure, path)


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def cross_lingual_plot(
    panels: Mapping[str, Sequence[Sequence[float | None]]],
    sources: Sequence[str],
    targets: Sequence[str],
    title: str,
    path: Path,
) -> Path:
    """Heatmaps side by side, one per panel: rows are source languages, columns targets.

    Cells hold a score in [0, 1] or None (not defined: drawn grey, marked n/a); the cells
    whose target is the source (in-language) are outlined.
    """
    count = max(1, len(panels))
    width = max(3.0, 0.55 * len(targets) + 1.6)
    height = max(2.2, 0.5 * len(sources) + 1.6)
    figure, grid = plt.subplots(
        1, count, figsize=(width * count + 1.0, height), squeeze=False, layout="constrained"
    )
    colours = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    image = None
    for axes, (name, rows) in zip(grid[0], panels.items(), strict=False):
        values = np.array(
            [[np.nan if value is None else float(value) for value in row] for row in rows],
            dtype=float,
        ).reshape(len(sources), len(targets))
        image = axes.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(values):
            light = np.isfinite(value) and value < 0.6
            axes.text(
                j,
                i,
                "n/a" if not np.isfinite(value) else f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if light else "black",
            )
            if sources[i] == targets[j]:
                axes.add_patch(
                    Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5)
                )
        axes.set_xticks(range(len(targets)), list(targets), fontsize=8)
        axes.set_yticks(range(len(sources)), list(sources), fontsize=8)
        axes.set_xlabel("tested on")
        axes.set_ylabel("trained on")
        axes.set_title(name, fontsize=9)
    if image is not None:
        figure.colorbar(image, ax=list(grid[0]), shrink=0.9, pad=0.02)
    figure.suptitle(f"{title} (outlined: in-language)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path
