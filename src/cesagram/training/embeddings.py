"""Frozen-encoder embeddings, computed once and kept on disk.

A linear probe, and every tuning trial or rerun of one, needs the same pooled encoder outputs
for the same texts. ``embed_texts`` looks each text up in an ``EmbeddingCache`` and runs the
encoder only on the misses.

A vector's key is (backbone weights SHA-256, pooling, max length, SHA-256 of the text): the first
three name a namespace folder under the cache root, the text hash is the key inside it::

    <root>/<weights sha256[:16]>-<pooling>-len<max_length>/
        namespace.json               what the folder holds (full weights hash, pooling, ...)
        shard-<time>-<random>.npz    keys [n] (text SHA-256 hex), vectors [n, hidden] float32

Every call that computes something adds one shard, written to a temporary file and renamed into
place, so readers never see half a shard and concurrent writers (parallel tuning trials) never
overwrite each other; a duplicate key in two shards holds the same vector. Texts themselves are
never stored, only their hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from rich.progress import track

from cesagram.models.backbones import backbone_info, load_encoder, load_tokenizer
from cesagram.models.encoder_classifier import mean_pool

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "cls"]
POOLINGS: tuple[Pooling, ...] = ("mean", "cls")
FORMAT_VERSION = 1
NAMESPACE_FILE = "namespace.json"
SHARD_PATTERN = "shard-*.npz"
# SHA-256 in hex: every key has exactly this many characters.
KEY_LENGTH = 64
# What a namespace folder is keyed by; namespace.json must agree on every one of them.
NAMESPACE_KEY_FIELDS = ("format_version", "backbone_weights_sha256", "pooling", "max_length")

Vectors = npt.NDArray[np.float32]


class EmbeddingCacheError(ValueError):
    """A cache folder holds something other than what its namespace promises."""


@dataclass(frozen=True)
class CacheStats:
    """Distinct texts of one call found in the cache (hits) and computed (misses)."""

    hits: int = 0
    misses: int = 0


def text_key(text: str) -> str:
    """The cache key of a text inside its namespace: SHA-256 of its UTF-8 bytes, in hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Pooled encoder vectors on disk under ``root``, one folder per namespace."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.last_stats = CacheStats()

    def namespace(self, weights_sha256: str, pooling: Pooling, max_length: int) -> Path:
        """The folder holding vectors of one backbone, pooling and max length."""
        return self.root / f"{weights_sha256[:16]}-{pooling}-len{max_length}"

    def lookup(
        self, folder: Path, keys: Sequence[str], expected: dict[str, Any]
    ) -> tuple[dict[str, Vectors], int | None]:
        """Vectors of the ``keys`` found in ``folder``, and the folder's hidden size (if any).

        ``expected`` is the namespace description the folder must hold (see ``append``).

        Raises:
            EmbeddingCacheError: the folder describes another namespace, or a shard is
                unreadable or has the wrong shape.
        """
        hidden_size = self._checked_namespace(folder, expected)
        wanted = set(keys)
        found: dict[str, Vectors] = {}
        for shard in sorted(folder.glob(SHARD_PATTERN)):
            if len(found) == len(wanted):
                break
            shard_keys, vectors = _read_shard(shard, hidden_size)
            for row, key in enumerate(shard_keys.tolist()):
                if key in wanted and key not in found:
                    found[key] = vectors[row]
        return found, hidden_size

    def append(
        self, folder: Path, keys: Sequence[str], vectors: Vectors, description: dict[str, Any]
    ) -> Path:
        """Add one shard of ``vectors`` [n, hidden] under ``keys``; returns the shard's path.

        ``description`` (backbone, pooling, max length) is written to ``namespace.json`` the
        first time, with the hidden size added.
        """
        if vectors.ndim != 2 or vectors.shape[0] != len(keys):
            raise ValueError(f"expected vectors [{len(keys)}, hidden]; found {vectors.shape}")
        folder.mkdir(parents=True, exist_ok=True)
        namespace_path = folder / NAMESPACE_FILE
        if not namespace_path.exists():
            meta = {"format_version": FORMAT_VERSION, **description}
            meta["hidden_size"] = int(vectors.shape[1])
            _write_atomically(
                namespace_path, lambda handle: handle.write(json.dumps(meta, indent=2).encode())
            )
        shard = folder / f"shard-{time.time_ns()}-{uuid.uuid4().hex[:8]}.npz"
        keys_array = np.asarray(keys, dtype=f"<U{KEY_LENGTH}")
        _write_atomically(
            shard,
            lambda handle: np.savez(
                handle, keys=keys_array, vectors=vectors.astype(np.float32, copy=False)
            ),
        )
        return shard

    def _checked_namespace(self, folder: Path, expected: dict[str, Any]) -> int | None:
        path = folder / NAMESPACE_FILE
        if not path.exists():
            return None
        try:
            meta: dict[str, Any] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise EmbeddingCacheError(
                f"{path}: unreadable ({error}); delete {folder} and the cache rebuilds it"
            ) from error
        # The key fields only: a backbone renamed in the config is still the same weights.
        wanted = {"format_version": FORMAT_VERSION, **expected}
        wanted = {key: value for key, value in wanted.items() if key in NAMESPACE_KEY_FIELDS}
        different = {key: meta.get(key) for key, value in wanted.items() if meta.get(key) != value}
        if different:
            expected_values = {key: wanted[key] for key in different}
            raise EmbeddingCacheError(
                f"{path}: expected {expected_values}, found {different}; delete {folder} "
                "and the cache rebuilds it"
            )
        return int(meta["hidden_size"])


def _write_atomically(path: Path, write: Any) -> None:
    # Written beside the target, then renamed: the rename is atomic on one file system.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        try:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            handle.close()
            Path(handle.name).unlink(missing_ok=True)
            raise
    Path(handle.name).replace(path)


def _read_shard(path: Path, hidden_size: int | None) -> tuple[npt.NDArray[np.str_], Vectors]:
    try:
        with np.load(path, allow_pickle=False) as shard:
            keys = shard["keys"]
            vectors = shard["vectors"]
    except (OSError, ValueError, KeyError) as error:
        raise EmbeddingCacheError(
            f"{path}: unreadable embedding cache shard ({error}); delete it and the cache "
            "recomputes what it held"
        ) from error
    if (
        vectors.ndim != 2
        or vectors.shape[0] != keys.shape[0]
        or (hidden_size is not None and vectors.shape[1] != hidden_size)
    ):
        raise EmbeddingCacheError(
            f"{path}: expected {keys.shape[0]} vectors of size {hidden_size}, found "
            f"{vectors.shape}; delete it and the cache recomputes what it held"
        )
    return keys, vectors.astype(np.float32, copy=False)


def embed_texts(
    cache: EmbeddingCache,
    backbone_dir: Path,
    texts: Sequence[str],
    *,
    max_length: int,
    pooling: Pooling = "mean",
    batch_size: int = 32,
    device: str | None = None,
) -> Vectors:
    """Pooled frozen-encoder vectors [len(texts), hidden] float32, in input order.

    Vectors come from ``cache`` where present; the rest are computed (tokenised as
    ``predict_proba`` does: truncation at ``max_length``, padding, length-sorted batches) and
    added to it. ``cache.last_stats`` then counts distinct texts found and computed.
    ``"mean"`` pooling is exactly what ``EncoderClassifier`` feeds its head. ``device`` defaults
    to CUDA when available.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}: expected one of {list(POOLINGS)}")
    info = backbone_info(backbone_dir)
    weights_sha256 = info.get("weights_sha256")
    if not weights_sha256:
        raise EmbeddingCacheError(
            f"{backbone_dir}/backbone.json: has no weights_sha256 to key the cache by; "
            "prepare the backbone again with `cesagram backbone`"
        )
    description = {
        "backbone": str(info.get("name")),
        "backbone_weights_sha256": str(weights_sha256),
        "pooling": pooling,
        "max_length": int(max_length),
    }
    folder = cache.namespace(str(weights_sha256), pooling, max_length)
    keys = [text_key(text) for text in texts]
    distinct = dict.fromkeys(keys)
    found, hidden_size = cache.lookup(folder, list(distinct), description)
    missing = [key for key in distinct if key not in found]
    if missing:
        first_text = dict(zip(keys, texts, strict=True))
        computed = _encode(
            backbone_dir,
            [first_text[key] for key in missing],
            max_length=max_length,
            pooling=pooling,
            batch_size=batch_size,
            device=device,
        )
        cache.append(folder, missing, computed, description)
        found.update(zip(missing, computed, strict=True))
        hidden_size = int(computed.shape[1])
    cache.last_stats = CacheStats(hits=len(distinct) - len(missing), misses=len(missing))
    logger.info(
        "embeddings of %d texts: %d distinct found in %s, %d computed",
        len(keys),
        cache.last_stats.hits,
        folder,
        cache.last_stats.misses,
    )
    if not keys:
        return np.zeros((0, hidden_size or _hidden_size(backbone_dir)), dtype=np.float32)
    return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)


def _hidden_size(backbone_dir: Path) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(backbone_dir).hidden_size)


@torch.inference_mode()
def _encode(
    backbone_dir: Path,
    texts: Sequence[str],
    *,
    max_length: int,
    pooling: Pooling,
    batch_size: int,
    device: str | None,
) -> Vectors:
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder = load_encoder(backbone_dir).to(target)
    encoder.eval()
    tokenizer = load_tokenizer(backbone_dir)
    # Length order: each batch pads little; rows are put back in input order.
    order = np.argsort([len(text) for text in texts], kind="stable")
    outputs: Vectors | None = None
    starts = range(0, len(texts), batch_size)
    # Transient: the bar disappears when done, and prints nothing when not on a terminal.
    for start in track(starts, description="embedding", transient=True):
        chunk = order[start : start + batch_size]
        encoded = tokenizer(
            [texts[i] for i in chunk],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        mask = encoded["attention_mask"].to(target)
        hidden = encoder(
            input_ids=encoded["input_ids"].to(target), attention_mask=mask
        ).last_hidden_state
        pooled = mean_pool(hidden, mask) if pooling == "mean" else hidden[:, 0]
        if outputs is None:
            outputs = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
        outputs[chunk] = pooled.float().cpu().numpy()
    assert outputs is not None
    return outputs
