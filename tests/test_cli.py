from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cesagram.cli import app

runner = CliRunner()


def _invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_import_csv_writes_corpus_report_and_quarantine(tmp_path: Path) -> None:
    source = tmp_path / "chats.csv"
    source.write_text("chat,text,label\nc1,hello,1\nc1,hi,1\nc2,,0\n")
    out = tmp_path / "out"
    code, output = _invoke(
        "data", "import", "-f", "csv", "-i", str(source), "--out", str(out),
        "--conversation-col", "chat", "--label-col", "label", "--language", "en",
    )  # fmt: skip
    assert code == 0, output
    assert "quarantined" in output and "invalid_text: 1" in output
    report = json.loads((out / "import_report.json").read_text())
    assert report["conversations"] == {"read": 2, "written": 1, "rejected": 1}
    assert (out / "conversations.parquet").exists()


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    code, output = _invoke(
        "data", "import", "-f", "csv", "-i", str(tmp_path / "absent.csv"), "--language", "en",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 2
    assert "absent.csv: file not found" in output
    assert "Traceback" not in output


def test_import_without_a_key_says_how_to_set_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CESAGRAM_PSEUDONYM_KEY")
    source = tmp_path / "chats.csv"
    source.write_text("text\nhello\n")
    code, output = _invoke("data", "import", "-f", "csv", "-i", str(source), "--language", "en")
    assert code == 2
    assert "set CESAGRAM_PSEUDONYM_KEY" in output


def test_bad_option_values_are_named(tmp_path: Path) -> None:
    source = tmp_path / "chats.csv"
    source.write_text("text\nhello\n")
    code, output = _invoke(
        "data", "import", "-f", "csv", "-i", str(source), "--language", "en",
        "--label-map", "predator=yes",
    )  # fmt: skip
    assert code == 2
    assert "--label-map: label map entry 'predator=yes': expected VALUE=0 or VALUE=1" in output
    code, output = _invoke("data", "import", "-f", "pan12", "-i", str(source))
    assert code == 2 and "--format pan12 needs --predators" in output


def test_config_prints_the_composed_params() -> None:
    code, output = _invoke("config", "data=partner_csv", "data.split.seed=5")
    assert code == 0, output
    assert "partner:" in output and "seed: 5" in output


def test_status_before_any_run_says_what_to_do(tmp_path: Path) -> None:
    code, output = _invoke("status", "--summary", str(tmp_path / "none.json"))
    assert code == 2 and "run `make run`" in output
