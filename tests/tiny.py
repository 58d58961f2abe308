"""A tiny but real project for tests: synthetic splits, a tiny backbone, MLflow in a folder."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cesagram.config import compose
from cesagram.data.prepare import PrepareConfig, prepare_corpus
from cesagram.data.schema import messages_frame, read_corpus_table
from cesagram.data.sources import SyntheticSource, run_source
from cesagram.data.split import SplitConfig, split_corpus
from cesagram.models.backbones import BackboneSpec, materialise_backbone

ROOT = Path(__file__).resolve().parents[1]

# Small enough for seconds per run on 2 cores, large enough for every split to hold both classes.
TINY_OVERRIDES = [
    "backbone=tiny",
    "backbone.tiny.vocab_size=600",
    "indicators.max_examples=96",
    "indicators.max_val_examples=64",
    "indicators.batch_size=16",
    "risk.max_examples=48",
    "risk.max_val_examples=32",
    "risk.max_length=128",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    # Evaluation sized for seconds: few resamples, few timed calls, small samples.
    "evaluation.bootstrap.resamples=40",
    "evaluation.latency.calls=5",
    "evaluation.latency.batches=1",
    "evaluation.latency.batch_size=8",
    "evaluation.robustness_samples=24",
    "evaluation.risk_robustness_samples=12",
    "evaluation.early_conversations=8",
    "evaluation.curve_conversations=3",
    "evaluation.max_messages=240",
    "evaluation.max_val_messages=240",
    "evaluation.min_group_size=2",
]


def build_tiny_workspace(root: Path) -> Path:
    """Splits of a 120-conversation synthetic corpus and a tiny backbone in ``root``."""
    run_source(
        "synthetic",
        SyntheticSource(conversations=120, seed=3),
        root / "interim" / "synthetic",
    )
    corpus = root / "prepared.parquet"
    prepare_corpus(
        [root / "interim" / "synthetic" / "conversations.parquet"], corpus, PrepareConfig()
    )
    split_corpus(corpus, root / "splits", SplitConfig())
    texts = messages_frame(read_corpus_table(root / "splits" / "train.parquet"))["text"]
    backbone = compose(["backbone=tiny", "backbone.tiny.vocab_size=600"], ROOT / "configs")
    spec = BackboneSpec.model_validate(backbone["backbone"])
    materialise_backbone(spec, root / "backbone", training_texts=[str(t) for t in texts])
    return root


def tiny_paths(workspace: Path, run_dir: Path) -> list[str]:
    """Overrides reading the workspace's splits and backbone and writing inside ``run_dir``."""
    return [
        f"paths.splits_dir={workspace / 'splits'}",
        f"paths.backbone_dir={workspace / 'backbone'}",
        f"paths.models_dir={run_dir / 'models'}",
        f"paths.output_dir={run_dir / 'outputs'}",
        f"paths.metrics_dir={run_dir / 'metrics'}",
        f"logger.tracking_uri=sqlite:///{run_dir / 'mlruns.db'}",
        f"logger.artifact_location={run_dir / 'mlartifacts'}",
        f"evaluation.reports_dir={run_dir / 'reports'}",
    ]


def tiny_config(workspace: Path, run_dir: Path, *overrides: str) -> DictConfig:
    """The real configs, composed with tiny settings and paths inside ``run_dir``."""
    paths = tiny_paths(workspace, run_dir)
    return OmegaConf.create(compose([*TINY_OVERRIDES, *paths, *overrides], ROOT / "configs"))
