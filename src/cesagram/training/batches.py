"""From text examples to padded tensor batches: datasets, collation, sampling, the data module.

Examples are tokenised once, up front, into lists of ids (no padding); batches are padded only
to their own longest sequence. Training batches group examples of similar length (padding is
wasted compute: on CPU it dominates), validation batches are sorted by length and carry each
example's position so predictions map back to example order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from transformers import PreTrainedTokenizerBase

from cesagram.training.examples import IndicatorExample, RiskExample

logger = logging.getLogger(__name__)

# All of one kind (checked when encoding); the union keeps mixed-type lists from callers typed.
Examples = Sequence[IndicatorExample | RiskExample]


class EncodedItem(TypedDict):
    """One dataset item."""

    input_ids: list[int]
    labels: torch.Tensor
    index: int
    """The example's position in the list the dataset was built from."""


def _targets(examples: Examples) -> torch.Tensor:
    # Indicators: multi-hot [n, 10]; risk: [n, 1], so both tasks share BCE-with-logits code.
    if not examples:
        raise ValueError("no examples to encode")
    if all(isinstance(example, IndicatorExample) for example in examples):
        rows = [example.labels for example in examples if isinstance(example, IndicatorExample)]
        return torch.tensor(rows, dtype=torch.float32)
    if all(isinstance(example, RiskExample) for example in examples):
        risks = [[example.label] for example in examples if isinstance(example, RiskExample)]
        return torch.tensor(risks, dtype=torch.float32)
    raise TypeError("examples must be all IndicatorExample or all RiskExample")


class EncodedDataset(Dataset[EncodedItem]):
    """Token ids (unpadded, truncated) and float label vectors, one item per example.

    Items are ``{"input_ids": list[int], "labels": float tensor, "index": int}``; labels are the
    multi-hot indicator vector or the risk as a length-1 vector.
    """

    def __init__(self, input_ids: list[list[int]], labels: torch.Tensor) -> None:
        if labels.ndim != 2 or labels.shape[0] != len(input_ids):
            raise ValueError(
                f"labels must be [examples, labels] for {len(input_ids)} examples, "
                f"got shape {tuple(labels.shape)}"
            )
        self.input_ids = input_ids
        self.labels = labels
        self.lengths = [len(ids) for ids in input_ids]

    @classmethod
    def from_examples(
        cls,
        examples: Examples,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int,
        tokenize_batch_size: int = 4096,
    ) -> EncodedDataset:
        """Tokenise ``examples`` once, in batches, truncating to ``max_length`` tokens.

        Example texts put the newest message first, so truncation must cut the end of the text
        (the oldest context): a tokenizer set to truncate on the left is refused.
        """
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        if tokenizer.truncation_side != "right":
            raise ValueError(
                f"the tokenizer truncates on the {tokenizer.truncation_side!r} side; model inputs "
                "put the newest message first, so set tokenizer.truncation_side = 'right'"
            )
        texts = [example.text for example in examples]
        input_ids: list[list[int]] = []
        for start in range(0, len(texts), tokenize_batch_size):
            encoded = tokenizer(
                texts[start : start + tokenize_batch_size],
                truncation=True,
                max_length=max_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            input_ids.extend(encoded["input_ids"])
        return cls(input_ids, _targets(examples))

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> EncodedItem:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index], "index": index}


@dataclass(frozen=True)
class PaddingCollator:
    """Pads a list of items to the batch's longest sequence.

    Returns ``input_ids`` and ``attention_mask`` (long, [batch, length]), ``labels`` (float,
    [batch, labels]) and ``index`` (long, [batch]: each item's dataset position).
    ``pad_to_multiple_of`` rounds the length up (8 suits GPU tensor cores).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    @classmethod
    def for_tokenizer(
        cls, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None
    ) -> PaddingCollator:
        """A collator padding with ``tokenizer``'s pad token."""
        pad = tokenizer.pad_token_id
        if not isinstance(pad, int):
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
        return cls(pad, pad_to_multiple_of)

    def __call__(self, items: Sequence[EncodedItem]) -> dict[str, torch.Tensor]:
        length = max(len(item["input_ids"]) for item in items)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, item in enumerate(items):
            ids = item["input_ids"]
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.stack([item["labels"] for item in items]),
            "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
        }


class LengthGroupedSampler(DistributedSampler[int]):
    """Shuffled indices whose consecutive ``batch_size`` windows have similar lengths.

    Each epoch, the indices are shuffled, cut into mega-batches of ``batches_per_megabatch``
    batches, each sorted by length and cut into batches; the batch order is shuffled and the
    batch holding the longest example goes first, so an out-of-memory error shows at once
    rather than hours in. Only the last batch may be short. The order depends on ``seed`` and
    the epoch (:meth:`set_epoch`) only.

    Distributed training: the sampler shards itself. It is a ``DistributedSampler`` so that
    Lightning leaves it alone: Lightning would otherwise wrap it in ``DistributedSamplerWrapper``
    with ``shuffle=True`` for training, which scatters the length groups. With ``num_replicas``
    R, batches are built R times larger and rank r takes every R-th index, so each rank's batch
    ``i`` comes from the same length group; ranks get equally many indices (the order is padded
    by repeating its last indices). Wrapped in Lightning's ``DistributedSamplerWrapper`` instead
    (``num_replicas=1``), ranks still get disjoint indices covering the data, but ungrouped.
    The data loader's batch size must equal ``batch_size``.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        batches_per_megabatch: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1 or batches_per_megabatch < 1:
            raise ValueError(
                f"batch_size and batches_per_megabatch must be >= 1, "
                f"got {batch_size} and {batches_per_megabatch}"
            )
        # DistributedSampler only needs len() of its dataset; the lengths provide it.
        super().__init__(
            lengths,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=seed,
        )
        self.lengths: npt.NDArray[np.int64] = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.batches_per_megabatch = batches_per_megabatch

    def _global_batches(self, rng: np.random.Generator) -> list[npt.NDArray[np.int64]]:
        # One "global" batch feeds all ranks' batches of the same step.
        size = self.batch_size * self.num_replicas
        megabatch = size * self.batches_per_megabatch
        shuffled = rng.permutation(len(self.lengths))
        batches: list[npt.NDArray[np.int64]] = []
        for start in range(0, len(shuffled), megabatch):
            chunk = shuffled[start : start + megabatch]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + size] for i in range(0, len(chunk), size))
        # Mega-batches are whole batches, so only the very last batch can be short; it stays
        # last so that every other batch (and every rank's share of it) is full.
        short = [batches.pop()] if batches and len(batches[-1]) < size else []
        batches = [batches[i] for i in rng.permutation(len(batches))]
        if batches:
            longest = max(range(len(batches)), key=lambda i: int(self.lengths[batches[i][0]]))
            batches[0], batches[longest] = batches[longest], batches[0]
            if short and self.lengths[short[0][0]] > self.lengths[batches[0][0]]:
                # The single longest example sits in the short batch: swap it into the first.
                first, last = batches[0].copy(), short[0].copy()
                first[-1], last[0] = last[0], first[-1]
                batches[0], short[0] = first, last
        return batches + short

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = np.concatenate(self._global_batches(rng)) if len(self.lengths) else np.zeros(0)
        # Pad so every rank gets num_samples indices, repeating the last (similar-length) ones.
        padding = self.total_size - len(order)
        order = np.concatenate([order, np.resize(order[::-1], padding)]).astype(np.int64)
        return iter(order[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def ordered_dataloader(
    dataset: EncodedDataset,
    collator: PaddingCollator,
    *,
    batch_size: int,
    num_workers: int = 0,
) -> DataLoader[EncodedItem]:
    """Batches in decreasing length order, for validation and scoring.

    Sorting removes most padding; each batch's ``index`` tensor holds the dataset positions of
    its rows, so ``predictions[batch["index"]] = batch_predictions`` restores example order.
    Under DDP Lightning shards this order across ranks and pads it with repeated indices: keep
    the first prediction per index when gathering.
    """
    order = np.argsort(-np.asarray(dataset.lengths, dtype=np.int64), kind="stable").tolist()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        collate_fn=collator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def _require_examples(split: str, examples: Examples) -> None:
    if not examples:
        raise ValueError(
            f"the {split} split has no examples: the corpus or the sampling settings left none; "
            "check data.split or the corpus"
        )


class ClassificationDataModule(LightningDataModule):
    """Train and validation batches for either task, from example lists and a tokenizer.

    Tokenises once (in :meth:`setup`, or on the first dataloader request). Training batches are
    length-grouped (:class:`LengthGroupedSampler`, sharded per rank under DDP) or, with
    ``group_by_length=False``, seeded random. Validation batches come from
    :func:`ordered_dataloader`: sorted by length, each with an ``index`` tensor mapping rows
    back to positions in ``val_examples``.
    """

    def __init__(
        self,
        train_examples: Examples,
        val_examples: Examples,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int = 128,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        group_by_length: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        super().__init__()
        _require_examples("train", train_examples)
        _require_examples("val", val_examples)
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(
                f"batch sizes must be >= 1, got batch_size={batch_size}, "
                f"eval_batch_size={eval_batch_size}"
            )
        self.train_examples = train_examples
        self.val_examples = val_examples
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.group_by_length = group_by_length
        self.seed = seed
        self.num_workers = num_workers
        self.collator = PaddingCollator.for_tokenizer(tokenizer, pad_to_multiple_of)
        self._train: EncodedDataset | None = None
        self._val: EncodedDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Tokenise both splits (once; later calls reuse them)."""
        if self._train is not None and self._val is not None:
            return
        started = time.perf_counter()
        self._train = EncodedDataset.from_examples(
            self.train_examples, self.tokenizer, max_length=self.max_length
        )
        self._val = EncodedDataset.from_examples(
            self.val_examples, self.tokenizer, max_length=self.max_length
        )
        logger.info(
            "tokenised %d train and %d val examples (max_length %d, %.1f%% truncated) in %.1fs",
            len(self._train),
            len(self._val),
            self.max_length,
            100.0 * np.mean(np.asarray(self._train.lengths) >= self.max_length),
            time.perf_counter() - started,
        )

    @property
    def train_dataset(self) -> EncodedDataset:
        """The tokenised training split."""
        self.setup()
        assert self._train is not None
        return self._train

    @property
    def val_dataset(self) -> EncodedDataset:
        """The tokenised validation split."""
        self.setup()
        assert self._val is not None
        return self._val

    def _replicas(self) -> tuple[int, int]:
        # (world size, global rank) from the attached trainer; 1 process without one.
        trainer: Any = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def train_dataloader(self) -> DataLoader[EncodedItem]:
        """Length-grouped (or seeded random) training batches."""
        dataset = self.train_dataset
        sampler: DistributedSampler[int] | RandomSampler
        if self.group_by_length:
            num_replicas, rank = self._replicas()
            sampler = LengthGroupedSampler(
                dataset.lengths,
                self.batch_size,
                seed=self.seed,
                num_replicas=num_replicas,
                rank=rank,
            )
        else:
            # Under DDP Lightning swaps this for a seeded, shuffling DistributedSampler.
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(self.seed))
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader[EncodedItem]:
        """Validation batches in decreasing length order; ``batch["index"]`` maps rows back."""
        return ordered_dataloader(
            self.val_dataset,
            self.collator,
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
        )
