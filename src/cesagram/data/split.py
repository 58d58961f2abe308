"""Leak-free train/validation/test splits.

The same offenders recur across corpora, so conversations are grouped before splitting: two
conversations that share an author land in the same group (union-find over authors), and whole
groups go to one split. Groups are stratified by (language, risk) and assigned greedily to the
split furthest below its target share, largest groups first, in a seeded order.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cesagram.data.schema import read_corpus_table
from cesagram.taxonomy import AuthorRole

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
# A group larger than this share of the corpus cannot respect the split fractions.
LARGE_GROUP_WARNING = 0.25


class AuthorGrouping(StrEnum):
    """Which shared authors tie conversations together."""

    ALL = "all"  # any shared author (strictest)
    OFFENDERS = "offenders"  # only authors with role offender
    NONE = "none"  # conversations only


@dataclass(frozen=True)
class SplitConfig:
    """Target shares, seed and grouping of a split."""

    fractions: Mapping[str, float] = field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1}
    )
    seed: int = 13
    group_authors: AuthorGrouping = AuthorGrouping.ALL

    def __post_init__(self) -> None:
        if set(self.fractions) != set(SPLIT_NAMES):
            raise ValueError(
                f"split fractions must name exactly {list(SPLIT_NAMES)}; "
                f"found {sorted(self.fractions)}"
            )
        if any(share < 0 for share in self.fractions.values()):
            raise ValueError(f"split fractions must not be negative; found {dict(self.fractions)}")
        if abs(sum(self.fractions.values()) - 1.0) > 1e-6:
            raise ValueError(
                f"split fractions must sum to 1; found {dict(self.fractions)} "
                f"(sum {sum(self.fractions.values()):.3f})"
            )


@dataclass
class SplitResult:
    """Row indexes of each split, plus what the grouping found."""

    indexes: dict[str, np.ndarray]
    groups: int
    largest_group: int
    shared_authors: int  # authors appearing in more than one split; 0 unless grouping is relaxed


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, first: int, second: int) -> None:
        first_root, second_root = self.find(first), self.find(second)
        if first_root != second_root:
            self.parent[max(first_root, second_root)] = min(first_root, second_root)


def _conversation_authors(table: pa.Table, grouping: AuthorGrouping) -> list[set[str]]:
    if grouping is AuthorGrouping.NONE:
        return [set() for _ in range(table.num_rows)]
    authors: list[set[str]] = []
    for messages in table.column("messages").to_pylist():
        authors.append(
            {
                message["author"]
                for message in messages
                if grouping is AuthorGrouping.ALL
                or message["author_role"] == AuthorRole.OFFENDER.value
            }
        )
    return authors


def assign_splits(table: pa.Table, config: SplitConfig) -> SplitResult:
    """Assign every conversation of a corpus table to train, val or test."""
    if table.num_rows == 0:
        raise ValueError("cannot split an empty corpus")
    authors = _conversation_authors(table, config.group_authors)
    union_find = _UnionFind(table.num_rows)
    first_conversation_of: dict[str, int] = {}
    for row, row_authors in enumerate(authors):
        for author in sorted(row_authors):
            union_find.union(row, first_conversation_of.setdefault(author, row))

    groups: dict[int, list[int]] = {}
    for row in range(table.num_rows):
        groups.setdefault(union_find.find(row), []).append(row)

    languages = table.column("language").to_pylist()
    risks = table.column("risk").to_pylist()
    strata: dict[tuple[str, int], list[list[int]]] = {}
    for members in groups.values():
        language = Counter(languages[row] for row in members).most_common(1)[0][0]
        risk = max((risks[row] for row in members if risks[row] is not None), default=-1)
        strata.setdefault((language, risk), []).append(members)

    rng = np.random.default_rng(config.seed)
    assigned: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for stratum in sorted(strata):
        members_list = strata[stratum]
        order = rng.permutation(len(members_list))
        # Stable sort on size after the seeded shuffle: big groups placed first, ties random.
        ordered = sorted((members_list[i] for i in order), key=len, reverse=True)
        total = sum(len(members) for members in ordered)
        filled = dict.fromkeys(SPLIT_NAMES, 0)
        for members in ordered:
            target = max(
                SPLIT_NAMES,
                key=lambda name: config.fractions[name] * total - filled[name],
            )
            filled[target] += len(members)
            assigned[target].extend(members)

    largest = max(len(members) for members in groups.values())
    if largest > LARGE_GROUP_WARNING * table.num_rows:
        logger.warning(
            "one group of conversations linked by shared authors holds %d of %d conversations; "
            "split shares will be off. Consider group_authors=offenders.",
            largest,
            table.num_rows,
        )
    indexes = {name: np.array(sorted(rows), dtype=np.int64) for name, rows in assigned.items()}
    # Verify on every author, whatever tied the groups: relaxed grouping must show its cost.
    if config.group_authors is not AuthorGrouping.ALL:
        authors = _conversation_authors(table, AuthorGrouping.ALL)
    return SplitResult(
        indexes=indexes,
        groups=len(groups),
        largest_group=largest,
        shared_authors=count_shared_authors(
            {name: [authors[row] for row in rows] for name, rows in indexes.items()}
        ),
    )


def count_shared_authors(split_authors: Mapping[str, list[set[str]]]) -> int:
    """How many authors appear in more than one split."""
    seen_in: dict[str, set[str]] = {}
    for name, conversation_authors in split_authors.items():
        for row_authors in conversation_authors:
            for author in row_authors:
                seen_in.setdefault(author, set()).add(name)
    return sum(1 for splits in seen_in.values() if len(splits) > 1)


def split_corpus(corpus: Path, out_dir: Path, config: SplitConfig) -> dict[str, Path]:
    """Split a corpus file into ``train/val/test.parquet`` in ``out_dir``; returns the paths."""
    table = read_corpus_table(corpus)
    result = assign_splits(table, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in SPLIT_NAMES:
        paths[name] = out_dir / f"{name}.parquet"
        pq.write_table(table.take(pa.array(result.indexes[name])), paths[name], compression="zstd")
    report = {
        "corpus": str(corpus),
        "seed": config.seed,
        "fractions": dict(config.fractions),
        "group_authors": config.group_authors.value,
        "groups": result.groups,
        "largest_group": result.largest_group,
        "authors_in_several_splits": result.shared_authors,
        "conversations": {name: len(rows) for name, rows in result.indexes.items()},
    }
    (out_dir / "split_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return paths
