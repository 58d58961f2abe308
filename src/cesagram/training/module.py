"""The LightningModule that fine-tunes an ``EncoderClassifier`` for either task.

Indicators are multi-label (one sigmoid per indicator, class-weighted BCE for the rare ones);
risk is binary (one sigmoid). Validation gathers every prediction (across processes under DDP)
and scores it with the same metric functions as the baselines, so the numbers compare.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from cesagram.config import ConfigError
from cesagram.evaluation.metrics import indicator_metrics, risk_metrics
from cesagram.models.encoder_classifier import (
    EncoderClassifier,
    Task,
    layer_depth,
    transformer_layers,
)

OptimizerFactory = Callable[[Iterable[dict[str, Any]]], torch.optim.Optimizer]

# The number each task's early stopping, checkpointing and tuning optimise.
OBJECTIVES: dict[Task, str] = {"indicators": "macro_f1", "risk": "auprc"}


def _no_decay(name: str) -> bool:
    # Biases and LayerNorm weights are not regularised (standard for transformers).
    return name.endswith(".bias") or "LayerNorm" in name or "layer_norm" in name


def score_task(
    task: Task, label_names: list[str], labels: np.ndarray, probabilities: np.ndarray
) -> dict[str, float]:
    """A task's headline validation metrics at threshold 0.5 (tuned later, at evaluation).

    ``labels`` and ``probabilities`` are [n, labels] (risk: one column).
    """
    if task == "indicators":
        scores = indicator_metrics(labels.astype(int), probabilities, label_names=label_names)
        keep: tuple[str, ...] = ("macro_f1", "micro_f1", "macro_f1_supported")
    else:
        scores = risk_metrics(labels[:, 0].astype(int), probabilities[:, 0])
        keep = ("auprc", "auroc", "f1", "f05")
    return {name: float(scores[name]) for name in keep}


class ClassifierModule(lightning.LightningModule):
    """Fine-tunes an encoder classifier; logs ``train/loss`` and ``val/<metric>``.

    ``head_hidden_size`` gives the classifier an MLP head (see ``classifier_head``): LP-FT
    fine-tuning from the linear probe's ``mlp`` head.
    """

    def __init__(
        self,
        *,
        backbone_dir: str,
        task: Task,
        label_names: list[str],
        optimizer: OptimizerFactory,
        warmup_ratio: float = 0.1,
        head_learning_rate: float | None = None,
        dropout: float = 0.1,
        freeze_word_embeddings: bool = True,
        train_top_layers: int | None = None,
        layer_decay: float | None = None,
        positive_weights: list[float] | None = None,
        head_hidden_size: int | None = None,
    ) -> None:
        super().__init__()
        # The optimizer factory is a Hydra partial; it is rebuilt from the config, not stored.
        self.save_hyperparameters(ignore=["optimizer"])
        self.task = task
        self.label_names = label_names
        self.optimizer_factory = optimizer
        self.warmup_ratio = warmup_ratio
        self.head_learning_rate = head_learning_rate
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise ValueError(f"layer_decay={layer_decay}: expected a number in (0, 1] or null")
        self.layer_decay = layer_decay
        self.model = EncoderClassifier.from_backbone(
            Path(backbone_dir), len(label_names), dropout, head_hidden_size
        )
        if freeze_word_embeddings:
            self.model.freeze_word_embeddings()
        if train_top_layers is not None:
            self.model.train_top_layers_only(train_top_layers)
        # from_pretrained returns the encoder in eval mode, and Lightning keeps each
        # submodule's mode: without this, dropout would be off during training.
        self.model.train()
        weights = torch.tensor(positive_weights or [1.0] * len(label_names), dtype=torch.float32)
        self.loss = nn.BCEWithLogitsLoss(pos_weight=weights)
        self.objective = OBJECTIVES[task]
        self.best_objective = -math.inf
        self._val_probabilities: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._val_indexes: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [batch, labels]."""
        logits: torch.Tensor = self.model(input_ids, attention_mask)
        return logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        """One optimisation step's loss."""
        logits = self(batch["input_ids"], batch["attention_mask"])
        loss: torch.Tensor = self.loss(logits.float(), batch["labels"].float())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> None:
        """Collect probabilities; scored once per epoch."""
        logits = self(batch["input_ids"], batch["attention_mask"])
        self.log(
            "val/loss",
            self.loss(logits.float(), batch["labels"].float()),
            batch_size=len(logits),
            sync_dist=True,
        )
        self._val_probabilities.append(torch.sigmoid(logits.float()).detach())
        self._val_labels.append(batch["labels"].detach())
        self._val_indexes.append(batch["index"].detach())

    def on_validation_epoch_end(self) -> None:
        """Score the whole validation set and log ``val/*`` and the best objective so far."""
        if not self._val_probabilities:
            return
        probabilities = self._gathered(self._val_probabilities)
        labels = self._gathered(self._val_labels)
        # Under DDP the sampler pads ranks with repeated examples: score each example once.
        _, first = np.unique(self._gathered(self._val_indexes), return_index=True)
        probabilities, labels = probabilities[first], labels[first]
        for collected in (self._val_probabilities, self._val_labels, self._val_indexes):
            collected.clear()
        metrics = self.score(labels, probabilities)
        # Every rank scored the same gathered set: sync_dist only averages equal values.
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name == self.objective, sync_dist=True)
        current = metrics[self.objective]
        if not math.isnan(current) and current > self.best_objective:
            self.best_objective = current
        self.log(f"val/{self.objective}_best", self.best_objective, sync_dist=True)

    def score(self, labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
        """The task's headline metrics (see ``score_task``)."""
        return score_task(self.task, self.label_names, labels, probabilities)

    def _gathered(self, parts: list[torch.Tensor]) -> np.ndarray:
        local = torch.cat(parts)
        if self.trainer.world_size > 1:
            # Every rank scores the full validation set so every rank logs the same numbers.
            gathered = self.all_gather(local)
            assert isinstance(gathered, torch.Tensor)
            local = gathered.flatten(0, 1)
        return local.float().cpu().numpy()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the best objective so a resumed run reports the true best."""
        checkpoint["best_objective"] = self.best_objective

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the best objective of the interrupted run; refuse another label map."""
        found = (checkpoint.get("hyper_parameters") or {}).get("label_names")
        if found is not None and list(found) != list(self.label_names):
            raise ConfigError(
                f"the checkpoint was trained on labels {list(found)} but this run's label map "
                f"is {list(self.label_names)}; the taxonomy or task changed since: start a new "
                "run (drop ckpt_path) or resume with the configuration it was trained with"
            )
        self.best_objective = checkpoint.get("best_objective", -math.inf)

    def _head_options(self) -> dict[str, Any]:
        return {} if self.head_learning_rate is None else {"lr": self.head_learning_rate}

    def _encoder_groups(self) -> list[dict[str, Any]]:
        """Trainable encoder parameters by weight decay and, with ``layer_decay``, by depth.

        Layer-wise learning-rate decay: layer ``i`` of ``L`` learns at
        ``lr * layer_decay ** (L - 1 - i)`` and the embeddings at ``lr * layer_decay ** L``,
        so the general lower layers move least.
        """
        encoder = [(n, p) for n, p in self.model.encoder.named_parameters() if p.requires_grad]
        if self.layer_decay is None:
            return [
                {"params": [p for n, p in encoder if not _no_decay(n)]},
                {"params": [p for n, p in encoder if _no_decay(n)], "weight_decay": 0.0},
            ]
        base = float(getattr(self.optimizer_factory, "keywords", {}).get("lr", 1e-3))
        count = len(transformer_layers(self.model.encoder))
        groups = []
        for depth in range(count + 1):  # 0: embeddings and anything below the layers
            names = [(n, p) for n, p in encoder if layer_depth(n, count) == depth]
            lr = base * self.layer_decay ** (count - depth)
            for no_decay in (False, True):
                params = [p for n, p in names if _no_decay(n) == no_decay]
                if params:
                    groups.append(
                        {"params": params, "lr": lr, **({"weight_decay": 0.0} if no_decay else {})}
                    )
        return groups

    def configure_optimizers(self) -> Any:
        """The configured optimizer (AdamW by default) with linear warm-up and decay."""
        groups: list[dict[str, Any]] = [
            *self._encoder_groups(),
            # The head starts from scratch: it may learn faster than the pretrained encoder.
            {"params": list(self.model.head.parameters()), **self._head_options()},
        ]
        optimizer = self.optimizer_factory(groups)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(  # type: ignore[no-untyped-call]
            optimizer, int(self.warmup_ratio * total), max(total, 1)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
