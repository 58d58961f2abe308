"""The test-split inputs an exported variant is compared on, rendered as the model reads them.

Indicators: a seeded sample of test messages with their context; risk: every labelled test
conversation's last window, the evaluation's headline inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cesagram.data.schema import read_corpus_table
from cesagram.evaluation.conversations import conversations_by_id
from cesagram.training.examples import indicator_examples, render_messages


def parity_inputs(
    classifier: dict[str, Any], split: Path, *, limit: int, seed: int = 0
) -> tuple[list[str], npt.NDArray[np.int8]]:
    """Rendered inputs and their labels (``[n, labels]``) from a split file for one model."""
    table = read_corpus_table(split)
    prefix = classifier.get("text_prefix", "")
    if classifier["task"] == "indicators":
        examples = indicator_examples(
            table,
            context_messages=int(classifier.get("context_messages") or 0),
            prefix=prefix,
            max_examples=limit,
            seed=seed,
        )
        labels = np.asarray([example.labels for example in examples], dtype=np.int8)
        return [example.text for example in examples], labels
    window = int(classifier["window"])
    views = [view for view in conversations_by_id(table).values() if view.risk is not None]
    rng = np.random.default_rng(seed)
    if len(views) > limit:
        views = [views[i] for i in sorted(rng.choice(len(views), limit, replace=False))]
    texts = [
        render_messages(view.authors[-window:], view.texts[-window:], prefix=prefix)
        for view in views
    ]
    return texts, np.asarray([[view.risk] for view in views], dtype=np.int8)
