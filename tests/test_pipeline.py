"""The real pipeline: `dvc repro` in a temporary git repository, as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from cesagram.config import compose, dump_params
from cesagram.data.schema import read_corpus
from tests.tiny import TINY_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = (
    "dvc.yaml",
    "params.yaml",
    "configs",
    "src",
    ".dvc/config",
    "data/raw/README.md",
    # The bento stage builds the project's wheel and the Bento of the service.
    "pyproject.toml",
    "README.md",
    "bentofile.yaml",
    "serving/service.py",
    "serving/README.md",
)
# Gates every tiny model passes, so both are promoted and the bento stage has champions.
LENIENT_GATES = [
    "evaluation.gates.risk=[{name: quality, metric: test/auprc, min: 0.0}]",
    "evaluation.gates.indicators=[{name: quality, metric: test/macro_f1, min: 0.0}]",
]

pytestmark = pytest.mark.slow


def _run(command: list[str], cwd: Path) -> str:
    # The project's own store (mlruns.db in the repo), whatever the test process has set, and
    # a BentoML store inside the temporary project, never the user's.
    environment = {
        **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "BENTOML_HOME": str(cwd / ".bentoml"),
    }
    result = subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project in a fresh git repo, with a small synthetic corpus."""
    repo = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        source, target = ROOT / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    # The real configs, composed small: 160 conversations and the tiny backbone.
    params = compose(
        [*TINY_OVERRIDES, *LENIENT_GATES, "data.sources.synthetic.conversations=160"],
        ROOT / "configs",
    )
    (repo / "params.yaml").write_text(dump_params(params))
    _run(["git", "init", "-q"], repo)
    _run(["git", "add", "."], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "i"], repo)
    _run(["dvc", "repro"], repo)
    return repo


def test_repro_produces_split_canonical_data(project: Path) -> None:
    summary = json.loads((project / "metrics" / "data_summary.json").read_text())
    report = json.loads((project / "data/interim/synthetic/import_report.json").read_text())
    assert report["conversations"]["read"] == 160
    assert summary["total"]["conversations"] == sum(
        summary[name]["conversations"] for name in ("train", "val", "test")
    )
    assert summary["total"]["conversations"] <= report["conversations"]["written"]
    assert set(summary["total"]["languages"]) == {"en", "de", "fr", "nl", "es", "it", "el", "lt"}
    assert summary["total"]["risk"]["positive"] > 0 and summary["total"]["risk"]["negative"] > 0
    test_split = list(read_corpus(project / "data/splits/test.parquet"))
    assert len(test_split) == summary["test"]["conversations"] > 0


def test_repro_trains_both_models_and_their_baselines(project: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns.db'}")
    for task in ("indicators", "risk"):
        trained = json.loads((project / "metrics" / f"train_{task}.json").read_text())
        baseline = json.loads((project / "metrics" / f"baseline_{task}.json").read_text())
        assert (project / "models" / task / "classifier.json").exists()
        assert client.get_run(trained["mlflow_run_id"]).data.tags["task"] == task
        assert client.get_run(baseline["mlflow_run_id"]).data.tags["model_type"] == "baseline"
        (version,) = client.search_model_versions(f"name='cesagram-{task}'")
        assert version.run_id == trained["mlflow_run_id"]


def test_repro_evaluates_promotes_or_explains_and_writes_cards_and_comparison(
    project: Path,
) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns.db'}")
    for task in ("indicators", "risk"):
        evaluated = json.loads((project / "metrics" / f"eval_{task}.json").read_text())
        trained = json.loads((project / "metrics" / f"train_{task}.json").read_text())
        assert evaluated["mlflow_run_id"] == trained["mlflow_run_id"]
        assert "gates/passed" in evaluated
        decision = json.loads((project / "reports" / "promotion" / f"{task}.json").read_text())
        assert decision["decision"] == "promoted" and decision["reason"]
        aliases = client.get_registered_model(f"cesagram-{task}").aliases
        assert ("champion" in aliases) == (decision["decision"] == "promoted")
        card = (project / "reports" / "cards" / task / f"cesagram-{task}.md").read_text()
        assert evaluated["mlflow_run_id"] in card and decision["reason"][:40] in card
        assert (project / "reports" / "compare" / f"compare_{task}.csv").exists()


def test_second_repro_runs_nothing_and_a_param_change_reruns_only_its_stage(
    project: Path,
) -> None:
    assert "didn't change, skipping" in _run(["dvc", "repro"], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["risk"]["optimizer"]["lr"] = 0.001
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = _run(["dvc", "repro"], project)
    assert "Running stage 'train@risk'" in output
    assert "Running stage 'train@indicators'" not in output
    assert "Running stage 'split'" not in output and "Running stage 'ingest'" not in output
    assert "risk.optimizer.lr" in _run(["dvc", "params", "diff"], project)


def test_repro_ends_with_the_bento_of_the_champions(project: Path) -> None:
    from cesagram.serving.settings import ServiceFile

    # Read the project's own store from its files: this process's BentoML uses the test store.
    store = project / ".bentoml"
    built = json.loads((project / "reports" / "bento" / "bento.json").read_text())
    service = ServiceFile.model_validate(
        yaml.safe_load((project / "serving" / "serving.yaml").read_text())
    )
    name, version = built["bento"].split(":")
    bento = store / "bentos" / name / version
    described = yaml.safe_load((bento / "bento.yaml").read_text())
    packaged = {model["tag"] for svc in described["services"] for model in svc["models"]}
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns.db'}")
    for task in ("indicators", "risk"):
        record = built["models"][task]
        assert service.models[task] == record["tag"] and record["tag"] in packaged
        champion = client.get_model_version_by_alias(f"cesagram-{task}", "champion")
        assert record["registered_version"] == str(champion.version)
        model_name, model_version = record["tag"].split(":")
        model = yaml.safe_load(
            (store / "models" / model_name / model_version / "model.yaml").read_text()
        )
        assert model["metadata"]["mlflow_run_id"] == champion.run_id
    assert (bento / "src" / "serving" / "service.py").exists()
    assert list((bento / "env" / "python" / "wheels").glob("cesagram-*.whl"))


def test_metrics_are_readable_by_dvc(project: Path) -> None:
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], project))
    flat = json.dumps(shown)
    assert "metrics/data_summary.json" in flat and "conversations" in flat


def test_a_strategy_change_retrains_both_models_with_it(project: Path) -> None:
    # Last in the file: it leaves the stages after training out of date.
    params = yaml.safe_load((project / "params.yaml").read_text())
    chosen = "full" if params["strategy"]["name"] != "full" else "linear_probe"
    params["strategy"] = compose([f"strategy={chosen}"], ROOT / "configs")["strategy"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "strategy.name" in _run(["dvc", "params", "diff"], project)
    output = _run(["dvc", "repro", "train@indicators", "train@risk"], project)
    assert "Running stage 'train@indicators'" in output and "Running stage 'train@risk'" in output
    assert "Running stage 'split'" not in output
    for task in ("indicators", "risk"):
        info = json.loads((project / "models" / task / "classifier.json").read_text())
        assert info["provenance"]["strategy"] == chosen
