"""Lightning callbacks that connect a training run to its Optuna trial.

``TrialPruning`` is the small piece of optuna-integration this project needs: after every
validation epoch it reports the monitored metric to the trial and stops the run when the
pruner says so. Under DDP only global rank zero talks to the study; its decision is broadcast
so every rank stops together. ``TrialRunLink`` remembers the MLflow run a trial trains in, so a
pruned or failed trial's run can still be tagged with what happened; a linear-probe trial has
no Lightning run, and the objective records the run id the probe returns instead.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning
import optuna
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger

logger = logging.getLogger(__name__)

MLFLOW_RUN_ATTR = "mlflow_run_id"


class TrialPruning(Callback):
    """Report ``monitor`` to ``trial`` each validation epoch; raise ``TrialPruned`` on its word."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor
        self.last_value = math.nan

    def on_validation_end(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        """Report the epoch's value; prune (on every rank) when the pruner decides so."""
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        value = math.nan
        should_prune = False
        if trainer.is_global_zero:
            logged = trainer.callback_metrics.get(self.monitor)
            if logged is None:
                logger.warning(
                    "trial %d: %s was not logged; nothing to prune on",
                    self.trial.number,
                    self.monitor,
                )
            else:
                value = self.last_value = float(logged)
                self.trial.report(value, step=epoch)
                should_prune = self.trial.should_prune()
        should_prune = bool(trainer.strategy.broadcast(should_prune, src=0))
        if should_prune:
            raise optuna.TrialPruned(f"epoch {epoch}: {self.monitor} = {value:.4f}")


class TrialRunLink(Callback):
    """Record the trial's MLflow run id as soon as training starts (rank zero has the logger)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.run_id: str | None = None

    def on_fit_start(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        """Link the Lightning run's MLflow run to the trial."""
        run_logger = trainer.logger
        if trainer.is_global_zero and isinstance(run_logger, MLFlowLogger) and run_logger.run_id:
            self.record(run_logger.run_id)

    def record(self, run_id: str) -> None:
        """Keep ``run_id`` and store it on the trial, where a resumed study finds it."""
        if run_id != self.run_id:
            self.run_id = run_id
            self.trial.set_user_attr(MLFLOW_RUN_ATTR, run_id)
