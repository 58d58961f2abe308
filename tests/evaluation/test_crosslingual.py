"""The cross-lingual matrix on the tiny project: cells, summary, winner, files, MLflow, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from omegaconf import DictConfig
from typer.testing import CliRunner

from cesagram.cli import app
from cesagram.config import ConfigError
from cesagram.data.schema import read_corpus_table
from cesagram.evaluation.crosslingual import (
    WINNER_CRITERION,
    choose_winner,
    cross_lingual_matrix,
    summarise_cells,
)
from tests.tiny import ROOT, TINY_OVERRIDES, tiny_config, tiny_paths

CONFIGS = ROOT / "configs"
STRATEGIES = ["linear_probe", "full"]


@pytest.fixture(scope="module")
def matrix(
    tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DictConfig, dict[str, Any], dict[str, Any]]:
    """The indicators matrix for source en and two strategies, computed once."""
    cfg = tiny_config(
        tiny_workspace,
        tmp_path_factory.mktemp("cross_lingual"),
        f"evaluation.cross_lingual.strategies=[{','.join(STRATEGIES)}]",
    )
    report, objects = cross_lingual_matrix(cfg, "indicators", config_dir=CONFIGS)
    return cfg, report, objects


def _test_languages(cfg: DictConfig) -> list[str]:
    table = read_corpus_table(Path(cfg.paths.splits_dir) / "test.parquet")
    return sorted(set(table.column("language").to_pylist()))


def test_one_cell_per_test_language_with_scores_in_range(matrix: Any) -> None:
    cfg, report, _ = matrix
    languages = _test_languages(cfg)
    assert report["sources"] == ["en"] and report["targets"] == languages
    assert list(report["strategies"]) == STRATEGIES
    for result in report["strategies"].values():
        cells = result["cells"]
        assert [cell["target"] for cell in cells] == languages
        assert [cell["target"] for cell in cells if cell["in_language"]] == ["en"]
        for cell in cells:
            assert cell["source"] == "en" and cell["test_examples"] > 0
            for key in ("f1_source_threshold", "f1_target_threshold", "auroc", "auprc"):
                value = cell[key]
                assert value is None or 0.0 <= value <= 1.0, (key, value)
            assert len(cell["source_threshold"]) == 10  # one per indicator
        (run,) = result["runs"]
        assert run["source"] == "en" and run["train_seconds"] > 0
        assert run["train_data"]["languages"] == {"en": run["train_data"]["conversations"]}


def test_summary_and_winner_follow_the_stated_rule(matrix: Any) -> None:
    _, report, _ = matrix
    summaries = {}
    for name, result in report["strategies"].items():
        summary = result["summary"]
        expected = summarise_cells(result["cells"], summary["train_seconds"])
        assert summary == pytest.approx(expected)
        assert summary["transfer_cells"] == len(report["targets"]) - 1
        summaries[name] = summary
    assert report["winner"] == choose_winner(summaries)
    assert report["winner"]["criterion"] == WINNER_CRITERION
    assert report["winner"]["strategy"] in STRATEGIES


def test_choose_winner_rule() -> None:
    def summary(f1: float | None, auprc: float | None) -> dict[str, float | None]:
        return {"mean_transfer_f1": f1, "mean_transfer_auprc": auprc}

    clear = choose_winner({"full": summary(0.5, 0.9), "linear_probe": summary(0.6, 0.1)})
    assert (clear["strategy"], clear["decided_by"]) == ("linear_probe", "mean_transfer_f1")
    tie = choose_winner({"full": summary(0.6, 0.7), "lp_ft": summary(0.6, 0.8)})
    assert (tie["strategy"], tie["decided_by"]) == ("lp_ft", "mean_transfer_auprc")
    both = choose_winner({"lp_ft": summary(0.6, 0.8), "full": summary(0.6, 0.8)})
    assert (both["strategy"], both["decided_by"]) == ("lp_ft", "order")
    undefined = choose_winner({"full": summary(None, 0.9), "lp_ft": summary(0.1, float("nan"))})
    assert undefined["strategy"] == "lp_ft"
    assert choose_winner({"full": summary(None, None)})["strategy"] is None


def test_json_and_figure_are_written(matrix: Any) -> None:
    cfg, report, objects = matrix
    folder = Path(cfg.evaluation.reports_dir) / "cross_lingual" / "indicators"
    assert objects["report_path"] == folder / "cross_lingual.json"
    text = objects["report_path"].read_text()
    assert "NaN" not in text and json.loads(text) == report
    assert objects["plot_path"].read_bytes()[:4] == b"\x89PNG"
    assert report["provenance"]["backbone"] == "tiny"
    assert report["data"]["test"]["languages"]
    assert report["settings"]["strategies"] == STRATEGIES


def test_mlflow_parent_run_with_a_child_per_strategy(matrix: Any) -> None:
    cfg, report, objects = matrix
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    parent = client.get_run(objects["parent_run_id"])
    assert parent.info.run_name == "cross-lingual indicators"
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["cross_lingual_task"] == "indicators"
    assert "task" not in parent.data.tags  # `cesagram compare` lists runs by tags.task
    assert parent.data.tags["winner"] == str(report["winner"]["strategy"])
    metrics = parent.data.metrics
    assert metrics and all(name.startswith("xling/") for name in metrics)
    assert "xling/linear_probe/en_to_en/f1" in metrics
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "cross_lingual")}
    assert artifacts == {"cross_lingual/cross_lingual.json", "cross_lingual/cross_lingual.png"}

    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert sorted(run.data.tags["strategy"] for run in children) == sorted(STRATEGIES)
    for run in children:
        assert run.data.tags["cross_lingual_source"] == "en"
        assert not [name for name in run.data.metrics if name.startswith("test/")]
        assert run.info.run_id == objects["model_runs"][run.data.tags["strategy"]]["en"]
    assert not client.search_model_versions("name = 'cesagram-indicators'")


def test_unknown_source_language_names_the_split_and_the_languages(tiny_cfg: DictConfig) -> None:
    tiny_cfg.evaluation.cross_lingual.sources = ["en", "xx"]
    with pytest.raises(ConfigError) as raised:
        cross_lingual_matrix(tiny_cfg, "indicators", config_dir=CONFIGS)
    message = str(raised.value)
    assert "'xx'" in message and "train.parquet" in message
    assert "languages present: de, el, en, es, fr, it, lt, nl" in message


def _cli_overrides(workspace: Path, run_dir: Path) -> list[str]:
    return [*TINY_OVERRIDES, *tiny_paths(workspace, run_dir)]


def test_cli_prints_the_matrix_and_the_winner(
    tiny_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # strategies are composed from configs/
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "risk",
            "--cross-lingual",
            *_cli_overrides(tiny_workspace, tmp_path),
            "evaluation.cross_lingual.strategies=[linear_probe]",
        ],
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # the table wraps at the runner's 80 columns
    assert "risk: linear_probe" in output and "rows: trained on; columns: tested on" in output
    assert "winner: linear_probe (decided by mean_transfer_f1" in output
    report_path = tmp_path / "reports" / "cross_lingual" / "risk" / "cross_lingual.json"
    assert f"report -> {report_path}" in result.output
    report = json.loads(report_path.read_text())
    (cell,) = [c for c in report["strategies"]["linear_probe"]["cells"] if c["in_language"]]
    assert isinstance(cell["source_threshold"], float)
    assert all(
        value is None or (math.isfinite(value) and 0 <= value <= 1)
        for c in report["strategies"]["linear_probe"]["cells"]
        for value in (c["f1_source_threshold"], c["auroc"], c["auprc"])
    )


def test_cli_cross_lingual_refuses_a_model_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, ["evaluate", "risk", "--cross-lingual", "--version", "3"])
    assert result.exit_code == 2
    assert "--cross-lingual trains its own models" in result.output
