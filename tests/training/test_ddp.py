"""`trainer=ddp` on CPU: two gloo processes through the real CLI, one run, one set of outputs.

Lightning's DDP launcher re-executes ``sys.argv`` for the other ranks, so training runs in a
subprocess (``cesagram train ...``), never inside pytest's process. The same command is also
started by ``torchrun``, the other launch that ``configs/trainer/ddp.yaml`` documents, where
every rank starts at once.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from cesagram.config import compose
from cesagram.models.encoder_classifier import load_classifier, predict_proba
from cesagram.training.inputs import task_inputs
from cesagram.training.module import score_task
from tests.tiny import ROOT, TINY_OVERRIDES

BIN = Path(sys.executable).parent
# An odd number of validation examples: the distributed sampler pads one rank with a repeated
# example, which scoring must count once. Small eval batches give each rank several batches.
DDP_OVERRIDES = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
    "indicators.max_val_examples=63",
    "indicators.eval_batch_size=16",
]
# Far above the ~35 s a run takes on 2 cores; a stuck process group must not hang the suite.
TIMEOUT_S = 300
LAUNCHERS = {
    "lightning": [str(BIN / "cesagram")],
    # --standalone: a rendezvous on a free port, so parallel test runs do not collide.
    "torchrun": [
        str(BIN / "torchrun"),
        "--standalone",
        "--nproc-per-node=2",
        str(BIN / "cesagram"),
    ],
}


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in its own process group, killed whole (every rank) on a time-out."""
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        # One thread per rank: two ranks on two cores, no oversubscription.
        "OMP_NUM_THREADS": "1",
    }
    for inherited in ("MLFLOW_TRACKING_URI", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "RANK"):
        environment.pop(inherited, None)
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command} ran over {TIMEOUT_S}s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    ["lightning", "torchrun"],
)
def test_ddp_on_two_cpu_processes_logs_and_exports_once(
    tiny_workspace: Path, tmp_path: Path, launcher: str
) -> None:
    # The run's working directory holds only a link to configs/ (the CLI composes ./configs),
    # so anything a rank writes to a relative path shows up here as an unexpected entry.
    (tmp_path / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    overrides = [
        *TINY_OVERRIDES,
        *DDP_OVERRIDES,
        f"paths.splits_dir={tiny_workspace / 'splits'}",
        f"paths.backbone_dir={tiny_workspace / 'backbone'}",
        f"paths.models_dir={tmp_path / 'models'}",
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"paths.metrics_dir={tmp_path / 'metrics'}",
        f"logger.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}",
        f"logger.artifact_location={tmp_path / 'mlartifacts'}",
    ]
    result = _run([*LAUNCHERS[launcher], "train", "indicators", *overrides], tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "distributed_backend=gloo" in log, log  # really two ranks, over gloo
    assert "Starting with 2 processes" in log, log
    assert log.count("indicators: validation") == 1, log  # one summary table, from rank zero

    # One set of outputs, nothing written relative to the working directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "configs",
        "metrics",
        "mlartifacts",
        "mlruns.db",
        "models",
        "outputs",
    ]
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["indicators"]
    # The default strategy (lp_ft) caches the probe's embeddings beside the training outputs.
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == [
        "embedding_cache",
        "indicators",
    ]
    assert [p.name for p in (tmp_path / "metrics").iterdir()] == ["train_indicators.json"]

    # Exactly one MLflow run (rank zero logs), with one validation per epoch and the model.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [run.info.run_name for run in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.strategy"] == "ddp"
    assert run.data.params["trainer.devices"] == "2"
    assert {"val/macro_f1", "val/micro_f1", "val/macro_f1_best", "val/loss"} <= set(
        run.data.metrics
    )
    assert len(client.get_metric_history(run.info.run_id, "val/macro_f1")) == 1
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/classifier.json", "model/head.safetensors", "model/encoder"} <= artifacts
    versions = client.search_model_versions("name='cesagram-indicators'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run.info.run_id)]
    # The run-id file that `ckpt_path=last` resumes from names that one run.
    assert run.info.run_id in (tmp_path / "outputs" / "indicators" / "mlflow_run.json").read_text()

    # The gathered, de-duplicated validation scores are those of every validation example
    # scored once: re-score them in one process with the exported (best = only) epoch's model.
    # Counting the padded duplicate twice moves these scores by ~5e-5 here.
    cfg = OmegaConf.create(compose(overrides, ROOT / "configs"))
    model, tokenizer, info = load_classifier(tmp_path / "models" / "indicators")
    assert info.provenance["mlflow_run_id"] == run.info.run_id
    inputs = task_inputs(
        "indicators",
        cfg.indicators,
        tiny_workspace / "splits",
        text_prefix=info.text_prefix,
        seed=cfg.seed,
    )
    assert len(inputs.val) == 63
    probabilities = predict_proba(model, tokenizer, inputs.val_texts, max_length=info.max_length)
    expected = score_task("indicators", info.label_names, inputs.val_labels, probabilities)
    for name, value in expected.items():
        logged = run.data.metrics[f"val/{name}"]
        assert math.isclose(logged, value, abs_tol=1e-6) or (
            math.isnan(logged) and math.isnan(value)
        ), (name, logged, value)
