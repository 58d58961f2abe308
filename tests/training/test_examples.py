"""Examples: rendering, context windows, budget sampling and class weights."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cesagram.data.schema import Conversation, read_corpus_table
from cesagram.taxonomy import INDICATOR_IDS
from cesagram.training.examples import (
    indicator_examples,
    indicator_label_counts,
    positive_weights,
    render_messages,
    risk_examples,
    speaker_letter,
    windows_after_each_message,
)
from tests.factories import conversation, corpus_file


def _table(tmp_path: Path, conversations: list[Conversation]) -> pa.Table:
    return read_corpus_table(corpus_file(tmp_path / "corpus.parquet", conversations))


# Three speakers, one message with a line break, labels on messages 1 and 3.
CRAFTED = conversation(
    "c1",
    authors=("u1", "u2", "u1", "u3"),
    texts=("hi", "how old are you", "twelve\nwhy", "hello all"),
    labels={1: ("access",), 3: ("trust_building", "meeting")},
    risk=1,
)


def test_render_messages_newest_first_with_letters_by_first_appearance() -> None:
    rendered = render_messages(["u1", "u2", "u1", "u3"], ["a", "b", "c\r\nd", "e"], prefix="q: ")
    assert rendered == "q: A: e\nB: c d\nC: b\nB: a"


def test_speaker_letters_go_past_z() -> None:
    assert [speaker_letter(i) for i in (0, 25, 26, 27, 51, 52)] == [
        "A",
        "Z",
        "AA",
        "AB",
        "AZ",
        "BA",
    ]


def test_indicator_examples_render_target_then_k_previous(tmp_path: Path) -> None:
    examples = indicator_examples(_table(tmp_path, [CRAFTED]), context_messages=2, prefix="query: ")

    assert [example.message_index for example in examples] == [0, 1, 2, 3]
    assert [example.text for example in examples] == [
        "query: A: hi",
        "query: A: how old are you\nB: hi",
        "query: A: twelve why\nB: how old are you\nA: hi",
        "query: A: hello all\nB: twelve why\nC: how old are you",
    ]
    assert {(e.conversation_id, e.language) for e in examples} == {("c1", "en")}


def test_indicator_examples_multi_hot_in_taxonomy_order(tmp_path: Path) -> None:
    examples = indicator_examples(_table(tmp_path, [CRAFTED]), context_messages=0)

    def hot(*ids: str) -> tuple[int, ...]:
        return tuple(int(indicator in ids) for indicator in INDICATOR_IDS)

    assert [example.labels for example in examples] == [
        hot(),
        hot("access"),
        hot(),
        hot("trust_building", "meeting"),
    ]
    assert examples[0].text == "A: hi"
    assert indicator_label_counts(examples).tolist() == list(
        hot("access", "trust_building", "meeting")
    )


def test_indicator_examples_include_unlabelled_conversations(tmp_path: Path) -> None:
    table = _table(tmp_path, [conversation("c1", risk=None), conversation("c2", risk=0)])
    assert len(indicator_examples(table, context_messages=1)) == 8


def _sixty_messages() -> Conversation:
    return conversation("long", texts=[f"m{i}" for i in range(60)], risk=1)


def test_risk_windows_keep_the_last_fifty_messages(tmp_path: Path) -> None:
    examples = risk_examples(_table(tmp_path, [_sixty_messages()]), prefix="query: ")
    by_end = {example.end_index: example for example in examples}
    # The newest message's author is always A: here "b" wrote the odd messages, "a" the even.

    assert sorted(by_end) == list(range(60))
    assert all(example.label == 1 for example in examples)
    assert by_end[0].text == "query: A: m0"
    full = by_end[49].text.removeprefix("query: ").split("\n")
    assert len(full) == 50 and full[0] == "A: m49" and full[-1] == "B: m0"
    slid = by_end[50].text.removeprefix("query: ").split("\n")
    assert len(slid) == 50 and slid[0] == "A: m50" and slid[-1] == "B: m1"
    last = by_end[59].text.removeprefix("query: ").split("\n")
    assert len(last) == 50 and last[-1] == "B: m10"


def test_windows_after_each_message_match_risk_examples(tmp_path: Path) -> None:
    chat = _sixty_messages()
    windows = windows_after_each_message(
        [message.author for message in chat.messages],
        [message.text for message in chat.messages],
        prefix="query: ",
    )
    examples = risk_examples(_table(tmp_path, [chat]), prefix="query: ")

    assert len(windows) == len(chat.messages) == 60
    assert windows == [example.text for example in examples]


def test_risk_examples_skip_conversations_without_risk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = _table(tmp_path, [conversation("known", risk=0), conversation("unknown", risk=None)])
    with caplog.at_level(logging.INFO):
        examples = risk_examples(table)
    assert {example.conversation_id for example in examples} == {"known"}
    assert "1 without a risk label skipped" in caplog.text


def _labelled_corpus(tmp_path: Path) -> pa.Table:
    # 6 conversations x 10 messages; messages 2 and 7 carry a label: 12 positives, 48 negatives.
    return _table(
        tmp_path,
        [
            conversation(
                f"c{i}",
                texts=[f"message {j}" for j in range(10)],
                labels={2: ("secrecy",), 7: ("meeting",)},
                risk=i % 2,
            )
            for i in range(6)
        ],
    )


def test_negative_ratio_keeps_every_positive(tmp_path: Path) -> None:
    table = _labelled_corpus(tmp_path)
    examples = indicator_examples(table, context_messages=1, negative_ratio=2.0, seed=3)
    positives = [example for example in examples if any(example.labels)]

    assert len(positives) == 12
    assert len(examples) == 12 + 24
    assert examples == indicator_examples(table, context_messages=1, negative_ratio=2.0, seed=3)
    assert examples != indicator_examples(table, context_messages=1, negative_ratio=2.0, seed=4)
    # Corpus order is kept.
    keys = [(example.conversation_id, example.message_index) for example in examples]
    assert keys == sorted(keys)


def test_max_examples_caps_and_keeps_the_mix(tmp_path: Path) -> None:
    table = _labelled_corpus(tmp_path)
    ratio = indicator_examples(
        table, context_messages=1, negative_ratio=2.0, max_examples=12, seed=0
    )
    assert len(ratio) == 12
    assert sum(any(example.labels) for example in ratio) == 4

    capped = indicator_examples(table, context_messages=1, max_examples=30, seed=0)
    assert len(capped) == 30
    assert sum(any(example.labels) for example in capped) == 6  # corpus share 12/60
    assert capped == indicator_examples(table, context_messages=1, max_examples=30, seed=0)


def test_segments_per_conversation(tmp_path: Path) -> None:
    table = _labelled_corpus(tmp_path)
    sampled = risk_examples(table, segments_per_conversation=3, seed=1)

    assert len(sampled) == 18
    for conversation_id in {example.conversation_id for example in sampled}:
        ends = [e.end_index for e in sampled if e.conversation_id == conversation_id]
        assert len(ends) == 3 and 9 in ends
    assert sampled == risk_examples(table, segments_per_conversation=3, seed=1)
    assert sampled != risk_examples(table, segments_per_conversation=3, seed=2)
    assert len(risk_examples(table)) == 60
    assert len(risk_examples(table, segments_per_conversation=50)) == 60

    capped = risk_examples(table, segments_per_conversation=3, max_examples=10, seed=1)
    assert len(capped) == 10
    assert sum(example.label for example in capped) == 5


def test_positive_weights_by_hand(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        weights = positive_weights(
            np.array([10, 0, 50, 1]), 101, power=0.5, max_weight=9.0, names=["a", "b", "c", "d"]
        )
    # (91/10)^0.5, no positives, (51/50)^0.5, (100/1)^0.5 clipped to 9.
    assert weights == pytest.approx([np.sqrt(9.1), 1.0, np.sqrt(51 / 50), 9.0])
    assert "['b']" in caplog.text


def test_positive_weights_name_indicators_by_default(caplog: pytest.LogCaptureFixture) -> None:
    counts = np.full(len(INDICATOR_IDS), 5)
    counts[INDICATOR_IDS.index("desensitisation")] = 0
    with caplog.at_level(logging.WARNING):
        weights = positive_weights(counts, 45, power=1.0)
    assert weights.tolist() == [8.0] * 5 + [1.0] + [8.0] * 4
    assert "desensitisation" in caplog.text
