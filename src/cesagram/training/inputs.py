"""The training and validation examples of a task, as its configuration asks for them.

One place builds them for the transformer and for the TF-IDF baseline, so both models see the
same inputs and are scored on the same validation examples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cesagram.config import ConfigError
from cesagram.data.schema import read_corpus_table
from cesagram.models.encoder_classifier import Task
from cesagram.taxonomy import INDICATOR_IDS
from cesagram.training.examples import (
    IndicatorExample,
    RiskExample,
    indicator_examples,
    risk_examples,
)

logger = logging.getLogger(__name__)

RISK_LABELS = ["risk"]

Example = IndicatorExample | RiskExample


@dataclass(frozen=True)
class TaskInputs:
    """A task's examples, label names and label matrices."""

    task: Task
    label_names: list[str]
    train: list[Example]
    val: list[Example]

    @property
    def train_texts(self) -> list[str]:
        """Rendered training inputs."""
        return [example.text for example in self.train]

    @property
    def val_texts(self) -> list[str]:
        """Rendered validation inputs."""
        return [example.text for example in self.val]

    @property
    def train_labels(self) -> np.ndarray:
        """[n, labels] 0/1."""
        return label_matrix(self.train)

    @property
    def val_labels(self) -> np.ndarray:
        """[n, labels] 0/1."""
        return label_matrix(self.val)


def label_matrix(examples: list[Example]) -> np.ndarray:
    """Stack example labels into an [n, labels] int array (risk: one column)."""
    rows = [
        example.labels if isinstance(example, IndicatorExample) else (example.label,)
        for example in examples
    ]
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), -1)


def _split_table(splits_dir: Path, name: str) -> Any:
    path = splits_dir / f"{name}.parquet"
    if not path.exists():
        raise ConfigError(
            f"{path}: not found; run the data stages first (`dvc repro split` or `make run`)"
        )
    return read_corpus_table(path)


def task_inputs(
    task: Task, settings: Any, splits_dir: Path, *, text_prefix: str, seed: int
) -> TaskInputs:
    """Build the train and validation examples of ``task`` from the splits in ``splits_dir``.

    ``settings`` is the task's config section (``indicators`` or ``risk``).
    """
    try:
        train, val, label_names = _build(task, settings, splits_dir, text_prefix, seed)
    except ValueError as error:
        raise ConfigError(f"{task}: {error}") from error
    for name, examples in (("train", train), ("val", val)):
        if not examples:
            raise ConfigError(
                f"the {name} split gives no {task} examples; check data.split and "
                f"{task}.max_examples / {task}.max_val_examples (and that {splits_dir} is filled)"
            )
    logger.info("%s examples: %d train, %d validation", task, len(train), len(val))
    return TaskInputs(task=task, label_names=label_names, train=train, val=val)


def _build(
    task: Task, settings: Any, splits_dir: Path, text_prefix: str, seed: int
) -> tuple[list[Example], list[Example], list[str]]:
    train_table = _split_table(splits_dir, "train")
    val_table = _split_table(splits_dir, "val")
    if task == "indicators":
        train: list[Example] = list(
            indicator_examples(
                train_table,
                context_messages=settings.context_messages,
                prefix=text_prefix,
                max_examples=settings.max_examples,
                negative_ratio=settings.negative_ratio,
                seed=seed,
            )
        )
        val: list[Example] = list(
            indicator_examples(
                val_table,
                context_messages=settings.context_messages,
                prefix=text_prefix,
                max_examples=settings.max_val_examples,
                seed=seed,
            )
        )
        label_names = list(INDICATOR_IDS)
    else:
        train = list(
            risk_examples(
                train_table,
                window=settings.window,
                prefix=text_prefix,
                segments_per_conversation=settings.segments_per_conversation,
                max_examples=settings.max_examples,
                seed=seed,
            )
        )
        val = list(
            risk_examples(
                val_table,
                window=settings.window,
                prefix=text_prefix,
                segments_per_conversation=settings.segments_per_conversation,
                max_examples=settings.max_val_examples,
                seed=seed,
            )
        )
        label_names = RISK_LABELS
    return train, val, label_names
