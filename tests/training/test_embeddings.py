from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cesagram.models.backbones import BACKBONE_INFO_FILE, load_encoder, load_tokenizer
from cesagram.models.encoder_classifier import mean_pool
from cesagram.training.embeddings import (
    NAMESPACE_FILE,
    SHARD_PATTERN,
    CacheStats,
    EmbeddingCache,
    EmbeddingCacheError,
    embed_texts,
)

TEXTS = [
    "A: hi, how was school today?",
    "B: fine",
    "A: are your parents home?",
    "B: we can play the new map later if you want, my brother is online too",
]


def test_second_call_is_all_hits_and_identical(tiny_workspace: Path, tmp_path: Path) -> None:
    backbone = tiny_workspace / "backbone"
    first = EmbeddingCache(tmp_path / "cache")
    vectors = embed_texts(first, backbone, TEXTS, max_length=32)
    assert first.last_stats == CacheStats(hits=0, misses=len(TEXTS))
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 64)

    # A new cache object on the same folder stands for a rerun or another tuning trial.
    rerun = EmbeddingCache(tmp_path / "cache")
    again = embed_texts(rerun, backbone, TEXTS, max_length=32)
    assert rerun.last_stats == CacheStats(hits=len(TEXTS), misses=0)
    assert np.array_equal(again, vectors)


def test_a_new_text_is_one_miss_and_rows_follow_input_order(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    backbone = tiny_workspace / "backbone"
    cache = EmbeddingCache(tmp_path / "cache")
    vectors = embed_texts(cache, backbone, TEXTS, max_length=32)
    new = "A: don't tell anyone about this chat"
    shuffled = [TEXTS[2], new, TEXTS[0], TEXTS[2], TEXTS[3], TEXTS[1]]
    result = embed_texts(cache, backbone, shuffled, max_length=32)
    assert cache.last_stats == CacheStats(hits=4, misses=1)  # distinct texts
    expected_rows = {0: 2, 2: 0, 3: 2, 4: 3, 5: 1}
    for row, source in expected_rows.items():
        assert np.array_equal(result[row], vectors[source])
    assert not any(np.allclose(result[1], row) for row in vectors)


def test_max_length_pooling_and_backbone_each_invalidate(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    backbone = tiny_workspace / "backbone"
    cache = EmbeddingCache(tmp_path / "cache")
    base = embed_texts(cache, backbone, TEXTS, max_length=32)

    embed_texts(cache, backbone, TEXTS, max_length=8)
    assert cache.last_stats == CacheStats(hits=0, misses=len(TEXTS))
    cls_vectors = embed_texts(cache, backbone, TEXTS, max_length=32, pooling="cls")
    assert cache.last_stats == CacheStats(hits=0, misses=len(TEXTS))
    assert not np.allclose(cls_vectors, base)

    # The same files under another weights hash: a retrained or replaced backbone.
    changed = tmp_path / "backbone"
    shutil.copytree(backbone, changed)
    info = json.loads((changed / BACKBONE_INFO_FILE).read_text())
    info["weights_sha256"] = "0" * 64
    (changed / BACKBONE_INFO_FILE).write_text(json.dumps(info))
    embed_texts(cache, changed, TEXTS, max_length=32)
    assert cache.last_stats == CacheStats(hits=0, misses=len(TEXTS))

    # The original namespace is untouched by the others.
    embed_texts(cache, backbone, TEXTS, max_length=32)
    assert cache.last_stats == CacheStats(hits=len(TEXTS), misses=0)


def test_vectors_equal_a_direct_mean_pooled_forward(tiny_workspace: Path, tmp_path: Path) -> None:
    backbone = tiny_workspace / "backbone"
    cached = embed_texts(EmbeddingCache(tmp_path / "cache"), backbone, TEXTS, max_length=16)
    encoder, tokenizer = load_encoder(backbone).eval(), load_tokenizer(backbone)
    with torch.inference_mode():
        for row, text in enumerate(TEXTS):  # one at a time: no padding at all
            encoded = tokenizer([text], truncation=True, max_length=16, return_tensors="pt")
            hidden = encoder(
                input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
            ).last_hidden_state
            direct = mean_pool(hidden, encoded["attention_mask"])[0].numpy()
            np.testing.assert_allclose(cached[row], direct, atol=1e-5)


def test_a_damaged_shard_is_named(tiny_workspace: Path, tmp_path: Path) -> None:
    backbone = tiny_workspace / "backbone"
    cache = EmbeddingCache(tmp_path / "cache")
    embed_texts(cache, backbone, TEXTS, max_length=32)
    (shard,) = (tmp_path / "cache").glob(f"*/{SHARD_PATTERN}")
    shard.write_bytes(b"not an npz file")
    with pytest.raises(EmbeddingCacheError, match=rf"{shard.name}: unreadable .* delete it"):
        embed_texts(cache, backbone, TEXTS, max_length=32)


def test_texts_are_never_stored(tiny_workspace: Path, tmp_path: Path) -> None:
    embed_texts(
        EmbeddingCache(tmp_path / "cache"), tiny_workspace / "backbone", TEXTS, max_length=32
    )
    stored = b"".join(
        path.read_bytes() for path in (tmp_path / "cache").rglob("*") if path.is_file()
    )
    assert b"parents" not in stored and "parents".encode("utf-32-le") not in stored


def test_a_namespace_of_other_weights_is_refused_but_a_renamed_backbone_hits(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    backbone = tmp_path / "backbone"
    shutil.copytree(tiny_workspace / "backbone", backbone)
    cache = EmbeddingCache(tmp_path / "cache")
    embed_texts(cache, backbone, TEXTS, max_length=32)
    info = json.loads((backbone / BACKBONE_INFO_FILE).read_text())
    (backbone / BACKBONE_INFO_FILE).write_text(json.dumps({**info, "name": "renamed"}))
    embed_texts(cache, backbone, TEXTS, max_length=32)
    assert cache.last_stats == CacheStats(hits=len(TEXTS), misses=0)

    (namespace,) = (tmp_path / "cache").glob(f"*/{NAMESPACE_FILE}")
    meta = json.loads(namespace.read_text())
    # Same 16-character folder prefix, other weights: never served as a hit.
    meta["backbone_weights_sha256"] = meta["backbone_weights_sha256"][:16] + "0" * 48
    namespace.write_text(json.dumps(meta))
    with pytest.raises(EmbeddingCacheError, match=rf"{NAMESPACE_FILE}: expected .*weights"):
        embed_texts(cache, backbone, TEXTS, max_length=32)
