"""Evaluation renders conversations exactly as training does."""

from __future__ import annotations

from pathlib import Path

from cesagram.data.schema import read_corpus_table
from cesagram.evaluation.conversations import conversations_by_id, data_provenance, group_values
from cesagram.training.examples import indicator_examples, render_messages, risk_examples


def test_last_windows_and_message_contexts_match_the_training_renderings(
    tiny_workspace: Path,
) -> None:
    table = read_corpus_table(tiny_workspace / "splits" / "test.parquet")
    views = conversations_by_id(table)
    for example in risk_examples(table, prefix="query: ", segments_per_conversation=1):
        view = views[example.conversation_id]
        assert example.end_index == len(view.texts) - 1
        assert example.text == render_messages(
            view.authors[-50:], view.texts[-50:], prefix="query: "
        )
    for example in indicator_examples(table, context_messages=2, max_examples=50):
        view = views[example.conversation_id]
        first = max(0, example.message_index - 2)
        end = example.message_index + 1
        assert example.text == render_messages(view.authors[first:end], view.texts[first:end])


def test_groups_and_provenance_count_every_conversation(tiny_workspace: Path) -> None:
    table = read_corpus_table(tiny_workspace / "splits" / "test.parquet")
    views = conversations_by_id(table)
    ids = list(views)
    groups = group_values(views, ids)
    assert "language" in groups and all(len(values) == len(ids) for values in groups.values())
    provenance = data_provenance(table, "test")
    assert provenance["conversations"] == len(ids) == sum(provenance["languages"].values())
    assert provenance["messages"] == sum(len(view.texts) for view in views.values())
