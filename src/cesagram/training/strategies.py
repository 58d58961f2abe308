"""One entry point for every training strategy (``configs/strategy/``).

`cesagram train`, tuning trials and the cross-lingual matrix all train through
`train_with_strategy`, so a strategy chosen in the config means the same thing everywhere.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from cesagram.config import ConfigError
from cesagram.models.encoder_classifier import Task

STRATEGIES = ("full", "linear_probe", "lp_ft")


def train_with_strategy(
    cfg: DictConfig,
    task: Task,
    *,
    parent_run_id: str | None = None,
    extra_callbacks: list[Callback] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Train the ``task`` model with ``cfg.strategy``; returns ``(metrics, objects)``.

    ``extra_callbacks`` (tuning's pruning) reach the Lightning trainer of ``full`` and
    ``lp_ft``; the linear probe has no epochs to report, so it ignores them.
    """
    from cesagram.training.probe import MLP_HIDDEN_SIZE, train_linear_probe, train_lp_ft
    from cesagram.training.train import train

    strategy = cfg.strategy
    # The probe's head (linear_probe, lp_ft); settings saved before the MLP head have neither key.
    head = strategy.get("head", "logistic")
    hidden_size = int(strategy.get("hidden_size", MLP_HIDDEN_SIZE))
    if strategy.name == "linear_probe":
        return train_linear_probe(
            cfg,
            task,
            C=float(strategy.C),
            class_weight=strategy.class_weight,
            head=head,
            hidden_size=hidden_size,
            parent_run_id=parent_run_id,
        )
    if strategy.name == "lp_ft":
        return train_lp_ft(
            cfg,
            task,
            C=float(strategy.C),
            class_weight=strategy.class_weight,
            head=head,
            hidden_size=hidden_size,
            learning_rate=lp_ft_learning_rate(strategy, task),
            parent_run_id=parent_run_id,
            extra_callbacks=extra_callbacks,
        )
    if strategy.name == "full":
        return train(cfg, task, extra_callbacks=extra_callbacks, parent_run_id=parent_run_id)
    raise ConfigError(f"strategy.name={strategy.name!r}: expected one of {', '.join(STRATEGIES)}")


def lp_ft_learning_rate(strategy: DictConfig, task: Task) -> float:
    """LP-FT's fine-tuning learning rate for ``task``.

    ``learning_rate``, when set, serves both tasks; otherwise the task's ``task_learning_rate``.
    """
    if strategy.get("learning_rate") is not None:
        return float(strategy.learning_rate)
    rates = strategy.get("task_learning_rate") or {}
    if rates.get(task) is None:
        raise ConfigError(
            f"strategy.learning_rate is null and strategy.task_learning_rate.{task} is not set: "
            "give lp_ft a fine-tuning learning rate (configs/strategy/lp_ft.yaml)"
        )
    return float(rates[task])
