"""Batches: tokenised datasets, padding, length-grouped sampling (DDP too), the data module."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from cesagram.taxonomy import INDICATOR_IDS
from cesagram.training.batches import (
    ClassificationDataModule,
    EncodedDataset,
    LengthGroupedSampler,
    PaddingCollator,
    ordered_dataloader,
)
from cesagram.training.examples import IndicatorExample, RiskExample

SENTENCES = [
    "A: hi how are you",
    "B: fine thanks and you",
    "A: what did you do at school today",
    "B: we played football after class",
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on a few sentences, with [CLS] ... [SEP] around texts."""
    core = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.train_from_iterator(
        SENTENCES, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    )
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )


def _indicator(text: str, *hot: str, index: int = 0) -> IndicatorExample:
    labels = tuple(int(indicator in hot) for indicator in INDICATOR_IDS)
    return IndicatorExample("c", "en", index, text, labels)


def _risk(text: str, label: int) -> RiskExample:
    return RiskExample("c", "en", 0, text, label)


def test_encoded_dataset_truncates_and_keeps_labels(tokenizer: PreTrainedTokenizerFast) -> None:
    long_text = "A: hi how are you\nB: fine thanks and you\nA: what did you do at school today"
    examples = [_indicator("A: hi", "access"), _indicator(long_text, "secrecy", "meeting")]
    dataset = EncodedDataset.from_examples(examples, tokenizer, max_length=8)

    assert len(dataset) == 2
    assert dataset.lengths == [5, 8]  # [CLS] A : hi [SEP]
    full = tokenizer(long_text)["input_ids"]
    # Right truncation keeps the start of the text: the newest message.
    assert dataset[1]["input_ids"] == [*full[:7], tokenizer.sep_token_id]
    assert dataset[1]["index"] == 1
    assert dataset.labels.shape == (2, len(INDICATOR_IDS))
    assert dataset.labels.dtype == torch.float32
    assert dataset[1]["labels"].nonzero().flatten().tolist() == [
        INDICATOR_IDS.index("secrecy"),
        INDICATOR_IDS.index("meeting"),
    ]


def test_risk_labels_are_length_one_vectors(tokenizer: PreTrainedTokenizerFast) -> None:
    dataset = EncodedDataset.from_examples(
        [_risk("A: hi", 1), _risk("B: fine", 0)], tokenizer, max_length=16
    )
    assert dataset.labels.tolist() == [[1.0], [0.0]]


def test_left_truncation_and_mixed_examples_are_refused(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    with pytest.raises(TypeError, match="all IndicatorExample or all RiskExample"):
        EncodedDataset.from_examples(
            [_indicator("A: hi"), _risk("A: hi", 1)], tokenizer, max_length=8
        )
    tokenizer.truncation_side = "left"
    try:
        with pytest.raises(ValueError, match="truncation_side = 'right'"):
            EncodedDataset.from_examples([_risk("A: hi", 1)], tokenizer, max_length=8)
    finally:
        tokenizer.truncation_side = "right"


def test_collator_pads_to_the_longest_and_masks(tokenizer: PreTrainedTokenizerFast) -> None:
    collator = PaddingCollator.for_tokenizer(tokenizer)
    items = [
        {"input_ids": [2, 5, 3], "labels": torch.tensor([1.0]), "index": 4},
        {"input_ids": [2, 3], "labels": torch.tensor([0.0]), "index": 7},
    ]
    batch = collator(items)  # type: ignore[arg-type]

    assert batch["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[1.0], [0.0]]
    assert batch["index"].tolist() == [4, 7]
    assert PaddingCollator(0, pad_to_multiple_of=8)(items)["input_ids"].shape == (2, 8)  # type: ignore[arg-type]


def _batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def _spread(batches: list[list[int]], lengths: np.ndarray) -> float:
    # Mean max/min length ratio within batches: 1.0 means no padding at all.
    return float(np.mean([lengths[b].max() / lengths[b].min() for b in batches]))


LENGTHS = np.random.default_rng(0).integers(1, 200, size=1000)


def test_sampler_groups_lengths_and_covers_every_index_once() -> None:
    sampler = LengthGroupedSampler(LENGTHS.tolist(), 16, seed=0)
    indices = list(sampler)

    assert len(sampler) == 1000
    assert sorted(indices) == list(range(1000))
    random_order = np.random.default_rng(1).permutation(1000).tolist()
    grouped, scattered = (
        _spread(_batches(indices, 16), LENGTHS),
        _spread(_batches(random_order, 16), LENGTHS),
    )
    assert grouped < 1.5 < 10 < scattered
    # The longest example comes in the first batch, the short batch last.
    assert int(np.argmax(LENGTHS)) in indices[:16]
    assert sorted(len(batch) for batch in _batches(indices, 16))[0] == len(
        _batches(indices, 16)[-1]
    )


def test_sampler_reshuffles_per_epoch_deterministically() -> None:
    sampler = LengthGroupedSampler(LENGTHS.tolist(), 16, seed=0)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == sorted(first)
    assert list(LengthGroupedSampler(LENGTHS.tolist(), 16, seed=0)) == first
    assert list(LengthGroupedSampler(LENGTHS.tolist(), 16, seed=5)) != first


@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_under_lightning_distributed_wrapper(shuffle: bool) -> None:
    # What Lightning does to a plain custom sampler with use_distributed_sampler=True.
    ranks = []
    for rank in range(2):
        wrapper = DistributedSamplerWrapper(
            LengthGroupedSampler(LENGTHS.tolist(), 8, seed=0),
            num_replicas=2,
            rank=rank,
            shuffle=shuffle,
            seed=0,
        )
        wrapper.set_epoch(3)
        ranks.append(list(wrapper))

    assert len(ranks[0]) == len(ranks[1]) == 500
    assert not set(ranks[0]) & set(ranks[1])
    assert set(ranks[0]) | set(ranks[1]) == set(range(1000))


def test_sampler_shards_itself_across_ranks() -> None:
    lengths = LENGTHS[:999].tolist()
    ranks = [
        list(LengthGroupedSampler(lengths, 8, seed=0, num_replicas=2, rank=rank))
        for rank in range(2)
    ]

    # 999 indices: 500 per rank, one index repeated so both ranks run the same batch count.
    assert len(ranks[0]) == len(ranks[1]) == 500
    assert set(ranks[0]) | set(ranks[1]) == set(range(999))
    assert len(set(ranks[0]) & set(ranks[1])) == 1
    for indices in ranks:
        assert _spread(_batches(indices, 8), LENGTHS) < 1.5


def _examples(count: int) -> list[IndicatorExample]:
    return [
        _indicator(" ".join(SENTENCES[: 1 + i % 4]), "access" if i % 3 else "meeting", index=i)
        for i in range(count)
    ]


def test_datamodule_refuses_an_empty_split(tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ValueError, match=r"the val split has no examples: .*check data\.split"):
        ClassificationDataModule(_examples(4), [], tokenizer)


def test_datamodule_batches(tokenizer: PreTrainedTokenizerFast) -> None:
    val_examples = _examples(10)
    datamodule = ClassificationDataModule(
        _examples(20), val_examples, tokenizer, max_length=32, batch_size=4, eval_batch_size=3
    )
    datamodule.setup("fit")

    train = list(datamodule.train_dataloader())
    assert [len(batch["index"]) for batch in train] == [4] * 5
    assert sorted(torch.cat([batch["index"] for batch in train]).tolist()) == list(range(20))
    assert set(train[0]) == {"input_ids", "attention_mask", "labels", "index"}
    assert train[0]["labels"].shape == (4, len(INDICATOR_IDS))

    val = list(datamodule.val_dataloader())
    order = torch.cat([batch["index"] for batch in val]).tolist()
    assert sorted(order) == list(range(10))
    widths = [batch["input_ids"].shape[1] for batch in val]
    assert widths == sorted(widths, reverse=True)
    # The index maps every row back to its example.
    lengths = datamodule.val_dataset.lengths
    for batch in val:
        for row, position in zip(batch["attention_mask"], batch["index"].tolist(), strict=True):
            assert int(row.sum()) == lengths[position]


def test_datamodule_shards_training_under_ddp(tokenizer: PreTrainedTokenizerFast) -> None:
    ranks = []
    for rank in range(2):
        datamodule = ClassificationDataModule(
            _examples(16), _examples(2), tokenizer, batch_size=4, seed=1
        )
        datamodule.trainer = SimpleNamespace(world_size=2, global_rank=rank)  # type: ignore[assignment]
        loader = datamodule.train_dataloader()
        # A DistributedSampler, so Lightning does not wrap (and re-shuffle) it.
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        ranks.append(torch.cat([batch["index"] for batch in loader]).tolist())

    assert len(ranks[0]) == len(ranks[1]) == 8
    assert sorted(ranks[0] + ranks[1]) == list(range(16))


def test_datamodule_random_order_without_grouping(tokenizer: PreTrainedTokenizerFast) -> None:
    def order(seed: int) -> list[int]:
        datamodule = ClassificationDataModule(
            _examples(30), _examples(2), tokenizer, group_by_length=False, seed=seed
        )
        return torch.cat([b["index"] for b in datamodule.train_dataloader()]).tolist()

    assert order(0) == order(0) != order(1)
    assert sorted(order(0)) == list(range(30))


def test_ordered_dataloader_on_risk_examples(tokenizer: PreTrainedTokenizerFast) -> None:
    dataset = EncodedDataset.from_examples(
        [_risk(sentence, i % 2) for i, sentence in enumerate(SENTENCES)], tokenizer, max_length=64
    )
    loader = ordered_dataloader(dataset, PaddingCollator.for_tokenizer(tokenizer), batch_size=2)
    batches = list(loader)
    assert [batch["labels"].shape for batch in batches] == [(2, 1), (2, 1)]
    assert batches[0]["index"].tolist()[0] == int(np.argmax(dataset.lengths))
