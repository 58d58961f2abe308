"""Quality on the default corpus's held-out test split: each model beside its TF-IDF baseline.

Run after `make run` (or `dvc repro`), from the project root:

    .venv/bin/python benchmarks/quality.py

It evaluates the models the pipeline trained (models/indicators, models/risk) and their
baselines on the same test inputs, with the thresholds each chose on validation data, and
prints indicator macro-F1 and micro-F1, risk AUPRC, AUROC and F0.5 with 95% bootstrap intervals
(conversations resampled). Nothing is logged to MLflow and no pipeline file is changed: the
reports go to a temporary folder.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from cesagram.config import load_params
from cesagram.evaluation.evaluate import evaluate


def main() -> None:
    """Evaluate both models and print them beside the baselines."""
    with tempfile.TemporaryDirectory() as scratch:
        cfg = OmegaConf.create(load_params(Path("params.yaml")))
        cfg.evaluation.reports_dir = str(Path(scratch) / "reports")
        cfg.paths.metrics_dir = str(Path(scratch) / "metrics")
        print(f"{'task':<11} {'metric':<9} {'model [95% interval]':<28} {'TF-IDF baseline':>15}")
        for task in ("indicators", "risk"):
            report, _ = evaluate(cfg, task, log_to_mlflow=False)
            for name, interval in report["metrics"].items():
                baseline = report.get("baseline", {}).get(name)
                shown = f"{baseline:.3f}" if baseline is not None else "-"
                print(
                    f"{task:<11} {name:<9} {interval['estimate']:.3f} "
                    f"[{interval['low']:.3f}, {interval['high']:.3f}]{'':<8} {shown:>15}"
                )
            print(
                f"{'':<11} test inputs: {report['examples']['test']}, backbone: "
                f"{report['model']['backbone']}"
            )


if __name__ == "__main__":
    main()
