"""An encoder with a head on mean-pooled hidden states, and its on-disk format.

Both models of the platform are this shape: the indicator classifier (10 sigmoid outputs) and
the conversation risk model (1 sigmoid output). The BERT pooler is never used: e5's weights have
none, and mean pooling is what the encoders were trained for. The head is one linear layer, or
(the linear probe's ``mlp`` head) Linear -> GELU -> Linear with ``head_hidden_size`` units.

A saved classifier is a folder that needs no Lightning and no training code to load:
``encoder/`` (Hugging Face config, safetensors weights, tokenizer), ``head.safetensors`` and
``classifier.json`` (task, labels, input rendering, thresholds, temperature, provenance).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from cesagram.models.backbones import load_encoder

CLASSIFIER_FILE = "classifier.json"
HEAD_FILE = "head.safetensors"
ENCODER_FOLDER = "encoder"

Task = Literal["indicators", "risk"]


class ClassifierInfo(BaseModel):
    """Everything needed to turn conversations into the inputs a saved model expects."""

    model_config = ConfigDict(extra="forbid")

    task: Task
    label_names: list[str]
    text_prefix: str = ""
    max_length: int
    context_messages: int | None = Field(default=None, description="indicators: k previous")
    window: int | None = Field(default=None, description="risk: messages seen per score")
    thresholds: list[float] = Field(description="decision threshold per label")
    temperature: float = Field(default=1.0, description="logits are divided by it")
    head_hidden_size: int | None = Field(
        default=None, description="width of the head's hidden layer; null: a linear head"
    )
    backbone: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict, description="run id, commit, data")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the hidden states over real (non-padding) tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def classifier_head(in_features: int, num_labels: int, hidden_size: int | None = None) -> nn.Module:
    """A head on pooled embeddings: ``nn.Linear``, or an MLP when ``hidden_size`` is given.

    The MLP is Linear -> GELU -> Linear; its state-dict keys are ``0.*`` and ``2.*`` (the
    linear head's stay ``weight`` and ``bias``).
    """
    if hidden_size is None:
        return nn.Linear(in_features, num_labels)
    if hidden_size < 1:
        raise ValueError(f"head hidden size {hidden_size}: expected a positive width or None")
    return nn.Sequential(
        nn.Linear(in_features, hidden_size), nn.GELU(), nn.Linear(hidden_size, num_labels)
    )


class EncoderClassifier(nn.Module):
    """Encoder -> mean pooling -> dropout -> head (see ``classifier_head``); returns logits."""

    def __init__(
        self,
        encoder: nn.Module,
        num_labels: int,
        dropout: float = 0.1,
        head_hidden_size: int | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        hidden_size = int(getattr(encoder.config, "hidden_size"))  # noqa: B009 (HF config)
        self.num_labels = num_labels
        self.head_hidden_size = head_hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = classifier_head(hidden_size, num_labels, head_hidden_size)

    @classmethod
    def from_backbone(
        cls,
        backbone_dir: Path,
        num_labels: int,
        dropout: float = 0.1,
        head_hidden_size: int | None = None,
    ) -> EncoderClassifier:
        """A new classifier on a prepared backbone, with a freshly initialised head."""
        return cls(load_encoder(backbone_dir), num_labels, dropout, head_hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of shape [batch, num_labels]."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        pooled = mean_pool(hidden.last_hidden_state, attention_mask)
        logits: torch.Tensor = self.head(self.dropout(pooled))
        return logits

    def freeze_word_embeddings(self) -> None:
        """Stop training the word embeddings (most of a multilingual model's parameters)."""
        embeddings = self.encoder.get_input_embeddings()  # type: ignore[operator]
        assert isinstance(embeddings, nn.Embedding)
        embeddings.weight.requires_grad_(False)

    def train_top_layers_only(self, top: int) -> None:
        """Train only the ``top`` highest transformer layers (and the head); freeze the rest.

        Gradients then stop at the first trainable layer, so a backward pass through a
        12-layer encoder training its top 4 costs a third of a full one. A backbone with no
        more than ``top`` layers stays fully trainable.
        """
        if top < 1:
            raise ValueError(f"train_top_layers={top}: train at least 1 layer (or null for all)")
        layers = transformer_layers(self.encoder)
        count = max(len(layers) - top, 0)
        if count == 0:
            return
        embeddings = getattr(self.encoder, "embeddings", None)
        for module in [embeddings, *layers[:count]]:
            if module is not None:
                module.requires_grad_(False)

    def save(self, directory: Path, tokenizer: Any, info: ClassifierInfo) -> None:
        """Write the classifier folder (see the module docstring).

        ``classifier.json`` records this model's head (``head_hidden_size``), whatever ``info``
        says, so the folder always loads into the head it holds.
        """
        directory.mkdir(parents=True, exist_ok=True)
        info = info.model_copy(update={"head_hidden_size": self.head_hidden_size})
        encoder_dir = directory / ENCODER_FOLDER
        self.encoder.save_pretrained(encoder_dir, safe_serialization=True)  # type: ignore[operator]
        tokenizer.save_pretrained(encoder_dir)
        save_file(
            {k: v.contiguous() for k, v in self.head.state_dict().items()}, directory / HEAD_FILE
        )
        (directory / CLASSIFIER_FILE).write_text(info.model_dump_json(indent=2) + "\n")


_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers)\.(\d+)\.")


def layer_depth(parameter_name: str, layer_count: int) -> int:
    """The depth of an encoder parameter: 1 + its transformer layer index, 0 below the layers
    (embeddings), ``layer_count`` above them (e.g. a final LayerNorm)."""
    found = _LAYER_INDEX.search(parameter_name)
    if found:
        return int(found.group(1)) + 1
    return 0 if "embed" in parameter_name else layer_count


def transformer_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer layers, lowest first."""
    # BERT-style (BERT, RoBERTa, XLM-R, MiniLM, e5) and DistilBERT-style layouts.
    for path in ("encoder.layer", "transformer.layer", "layers"):
        module: Any = encoder
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"{type(encoder).__name__}: cannot find its transformer layers to freeze")


def load_classifier(directory: Path) -> tuple[EncoderClassifier, Any, ClassifierInfo]:
    """Load a saved classifier folder: (model in eval mode, tokenizer, info)."""
    from transformers import AutoModel, AutoTokenizer

    info_path = directory / CLASSIFIER_FILE
    if not info_path.exists():
        raise FileNotFoundError(f"{directory}: not a saved classifier (no {CLASSIFIER_FILE})")
    info = ClassifierInfo.model_validate_json(info_path.read_text())
    encoder_dir = directory / ENCODER_FOLDER
    options: dict[str, Any] = {"use_safetensors": True}
    if json.loads((encoder_dir / "config.json").read_text()).get("model_type") == "bert":
        options["add_pooling_layer"] = False
    encoder = AutoModel.from_pretrained(encoder_dir, **options)
    model = EncoderClassifier(
        encoder, len(info.label_names), dropout=0.0, head_hidden_size=info.head_hidden_size
    )
    head = load_file(directory / HEAD_FILE)
    expected = {name: tuple(value.shape) for name, value in model.head.state_dict().items()}
    found = {name: tuple(value.shape) for name, value in head.items()}
    if found != expected:
        raise ValueError(
            f"{directory / HEAD_FILE}: expected head tensors {expected} for "
            f"{len(info.label_names)} labels and head_hidden_size={info.head_hidden_size} "
            f"({CLASSIFIER_FILE}); found {found}"
        )
    model.head.load_state_dict(head)
    model.eval()
    return model, AutoTokenizer.from_pretrained(encoder_dir), info


@torch.inference_mode()
def predict_proba(
    model: EncoderClassifier,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    temperature: float = 1.0,
    batch_size: int = 32,
) -> np.ndarray:
    """Sigmoid probabilities [n, num_labels] for rendered input texts (tokenisation included).

    Texts are processed in length order so each batch pads little, then put back in order.
    """
    model.eval()
    order = np.argsort([len(text) for text in texts], kind="stable")
    outputs = np.zeros((len(texts), model.num_labels), dtype=np.float32)
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        chunk = order[start : start + batch_size]
        encoded = tokenizer(
            [texts[i] for i in chunk],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        logits = model(encoded["input_ids"].to(device), encoded["attention_mask"].to(device))
        outputs[chunk] = torch.sigmoid(logits.float() / temperature).cpu().numpy()
    return outputs
