"""The classifier folder's head: a linear one loads as before, an MLP one round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cesagram.models.backbones import load_tokenizer
from cesagram.models.encoder_classifier import (
    CLASSIFIER_FILE,
    HEAD_FILE,
    ClassifierInfo,
    EncoderClassifier,
    load_classifier,
    predict_proba,
)

LABELS = ["first", "second", "third"]
TEXTS = ["hi", "see you at practice", "did you finish the homework yet", "ok"]


def _saved(backbone: Path, folder: Path, head_hidden_size: int | None) -> EncoderClassifier:
    torch.manual_seed(0)
    model = EncoderClassifier.from_backbone(
        backbone, len(LABELS), dropout=0.0, head_hidden_size=head_hidden_size
    )
    model.eval()
    # info says nothing of the head: save records the model's own.
    info = ClassifierInfo(
        task="indicators", label_names=LABELS, max_length=32, thresholds=[0.5] * len(LABELS)
    )
    model.save(folder, load_tokenizer(backbone), info)
    return model


def _same_scores(model: EncoderClassifier, folder: Path) -> EncoderClassifier:
    loaded, tokenizer, info = load_classifier(folder)
    expected = predict_proba(model, tokenizer, TEXTS, max_length=info.max_length)
    found = predict_proba(loaded, tokenizer, TEXTS, max_length=info.max_length)
    assert found.shape == (len(TEXTS), len(LABELS))
    np.testing.assert_array_equal(found, expected)
    return loaded


def test_a_linear_head_saved_before_head_hidden_size_existed_still_loads(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    model = _saved(tiny_workspace / "backbone", tmp_path, head_hidden_size=None)
    assert set(load_file(tmp_path / HEAD_FILE)) == {"weight", "bias"}
    # classifier.json as it was written before the field existed.
    info = json.loads((tmp_path / CLASSIFIER_FILE).read_text())
    assert info.pop("head_hidden_size") is None
    (tmp_path / CLASSIFIER_FILE).write_text(json.dumps(info))
    loaded = _same_scores(model, tmp_path)
    assert isinstance(loaded.head, nn.Linear) and loaded.head_hidden_size is None


def test_an_mlp_head_round_trips_and_a_mismatched_head_is_refused(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    model = _saved(tiny_workspace / "backbone", tmp_path, head_hidden_size=8)
    info = json.loads((tmp_path / CLASSIFIER_FILE).read_text())
    assert info["head_hidden_size"] == 8
    assert {name: tuple(t.shape) for name, t in load_file(tmp_path / HEAD_FILE).items()} == {
        "0.weight": (8, model.encoder.config.hidden_size),
        "0.bias": (8,),
        "2.weight": (len(LABELS), 8),
        "2.bias": (len(LABELS),),
    }
    loaded = _same_scores(model, tmp_path)
    assert isinstance(loaded.head, nn.Sequential) and loaded.head_hidden_size == 8

    info["head_hidden_size"] = None
    (tmp_path / CLASSIFIER_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"head\.safetensors: expected head tensors .*found"):
        load_classifier(tmp_path)
