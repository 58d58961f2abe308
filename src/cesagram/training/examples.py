"""Turn a canonical corpus into the text examples the two models train on.

Two tasks read the same conversations:

* the **indicator** model classifies one message (multi-label over ``INDICATOR_IDS``) and sees
  that message plus up to ``context_messages`` previous ones (:func:`indicator_examples`);
* the **risk** model scores a conversation after a message from the last ``window`` messages, as
  in the eSPD early-detection protocol (:func:`risk_examples` for training on segments,
  :func:`windows_after_each_message` for scoring after every message at evaluation time).

Both render their messages with :func:`render_messages`, so training, evaluation and serving
feed the models identical strings. Rendering, most recent message first::

    query: A: <the target or newest message>
    B: <the message before it>
    A: <...>

Speaker letters follow the first appearance in the rendered string (the author of the newest
message is always ``A``): authors are pseudonymous ids, so only "same or different speaker" means
anything. Most-recent-first order means a tokenizer's plain right truncation drops the oldest
context, never the message being classified.

Budget controls (CPU training manages about 14 samples/s at 64 tokens) subsample
deterministically for a seed. Sampling changes class priors: ``negative_ratio`` raises the share
of labelled messages, ``segments_per_conversation`` weights every conversation equally instead of
by its length, so a model's raw scores are not calibrated to the corpus. Thresholds are therefore
tuned later on unsampled validation data.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from cesagram.taxonomy import INDICATOR_IDS

logger = logging.getLogger(__name__)

# The eSPD protocol (Vogt et al. 2021) scores a conversation from its last 50 messages.
ESPD_WINDOW = 50

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class IndicatorExample:
    """One message to classify, rendered with its previous messages as context."""

    conversation_id: str
    language: str
    message_index: int
    """0-based index of the target message in its conversation."""
    text: str
    """The rendered model input (:func:`render_messages`), target message first."""
    labels: tuple[int, ...]
    """Multi-hot over ``INDICATOR_IDS`` (all zero: no indicator)."""


@dataclass(frozen=True)
class RiskExample:
    """A conversation as the risk model sees it after one of its messages."""

    conversation_id: str
    language: str
    end_index: int
    """0-based index of the message after which the conversation is scored."""
    text: str
    """The rendered window (:func:`render_messages`): message ``end_index`` first."""
    label: int
    """The conversation's risk, 0 or 1 (the same for every window of a conversation)."""


def speaker_letter(position: int) -> str:
    """The letter for the ``position``-th distinct speaker: A..Z, then AA, AB, ... (0-based)."""
    if position < 0:
        raise ValueError(f"speaker position must be >= 0, got {position}")
    letters = ""
    position += 1
    while position:
        position, remainder = divmod(position - 1, 26)
        letters = _ALPHABET[remainder] + letters
    return letters


# Windows are at most 50 messages, so 64 precomputed letters cover nearly every call.
_LETTERS = tuple(speaker_letter(position) for position in range(64))


def one_line(text: str) -> str:
    """A message as the renderings hold it: its own line breaks become spaces.

    "\n" separates messages in a rendering (and in the robustness suite's joined windows).
    """
    # The membership test skips the regex for the vast majority of messages (speed).
    return _LINE_BREAK.sub(" ", text) if "\n" in text or "\r" in text else text


def _render_one_line(authors: Sequence[str], texts: Sequence[str], prefix: str) -> str:
    # ``texts`` are already single lines; messages arrive oldest first and render newest first.
    letters: dict[str, str] = {}
    lines = []
    for author, text in zip(reversed(authors), reversed(texts), strict=True):
        letter = letters.get(author)
        if letter is None:
            count = len(letters)
            letter = _LETTERS[count] if count < len(_LETTERS) else speaker_letter(count)
            letters[author] = letter
        lines.append(f"{letter}: {text}")
    return prefix + "\n".join(lines)


def render_messages(authors: Sequence[str], texts: Sequence[str], *, prefix: str = "") -> str:
    """Render consecutive messages, given oldest first, as one model input.

    The output starts with ``prefix`` (E5 backbones expect ``"query: "``) and lists the messages
    newest first, one per line, as ``"<letter>: <text>"``. Letters follow first appearance in
    that newest-first order, so the newest message's author is ``A``. Line breaks inside a
    message become spaces, keeping one message per line.
    """
    if len(authors) != len(texts):
        raise ValueError(f"{len(authors)} authors but {len(texts)} texts; expected one each")
    return _render_one_line(authors, [one_line(text) for text in texts], prefix)


def windows_after_each_message(
    authors: Sequence[str], texts: Sequence[str], *, window: int = ESPD_WINDOW, prefix: str = ""
) -> list[str]:
    """The risk model's inputs for scoring ONE conversation after each of its messages.

    ``authors`` and ``texts`` are the conversation's messages in order. Element ``i`` renders
    messages ``max(0, i - window + 1) .. i``, exactly as :func:`risk_examples` renders the
    example with ``end_index == i``; the list has one entry per message (eSPD protocol).
    """
    _check_positive("window", window)
    if len(authors) != len(texts):
        raise ValueError(f"{len(authors)} authors but {len(texts)} texts; expected one each")
    lines = [one_line(text) for text in texts]
    windows = []
    for end in range(len(lines)):
        first = max(0, end - window + 1)
        windows.append(_render_one_line(authors[first : end + 1], lines[first : end + 1], prefix))
    return windows


@dataclass(frozen=True)
class _FlatCorpus:
    """A corpus table flattened into per-message Python lists and numpy arrays."""

    conversation_ids: list[str]
    languages: list[str]
    risks: list[int | None]
    starts: npt.NDArray[np.int64]
    """Conversation ``c`` holds messages ``starts[c]:starts[c + 1]`` of the flat lists."""
    authors: list[str]
    texts: list[str]
    """Messages as single lines (see :func:`render_messages`)."""
    labels: npt.NDArray[np.uint8]
    """Multi-hot [messages, indicators]."""

    def conversation_of_messages(self) -> npt.NDArray[np.int64]:
        """The conversation position of every flat message."""
        lengths = np.diff(self.starts)
        return np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)


def _flatten(table: pa.Table) -> _FlatCorpus:
    messages = table.column("messages")
    lengths = pc.list_value_length(messages).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = pc.list_flatten(messages)
    texts = pc.struct_field(flat, "text").to_pylist()

    # Label lists become a multi-hot matrix in one vectorised pass.
    message_labels = pc.struct_field(flat, "labels")
    label_counts = pc.list_value_length(message_labels).to_numpy(zero_copy_only=False)
    label_ids = pc.list_flatten(message_labels)
    columns = pc.index_in(label_ids, value_set=pa.array(INDICATOR_IDS))
    if columns.null_count:
        unknown = sorted(set(pc.filter(label_ids, pc.is_null(columns)).to_pylist()))
        raise ValueError(
            f"unknown indicator label(s) {unknown} in the corpus; expected one of "
            f"{list(INDICATOR_IDS)}: validate it with `cesagram data validate`"
        )
    labels = np.zeros((int(starts[-1]), len(INDICATOR_IDS)), dtype=np.uint8)
    rows = np.repeat(np.arange(len(label_counts)), label_counts)
    labels[rows, columns.to_numpy(zero_copy_only=False)] = 1

    return _FlatCorpus(
        conversation_ids=table.column("conversation_id").to_pylist(),
        languages=table.column("language").to_pylist(),
        risks=table.column("risk").to_pylist(),
        starts=starts,
        authors=pc.struct_field(flat, "author").to_pylist(),
        texts=[one_line(text) for text in texts],
        labels=labels,
    )


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _sample(
    rows: npt.NDArray[np.int64], count: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    if count >= len(rows):
        return rows
    return np.sort(rng.choice(rows, size=count, replace=False))


def _capped(
    positive: npt.NDArray[np.bool_],
    *,
    max_examples: int | None,
    negative_ratio: float | None,
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """Rows to keep, in their original order, after the negative ratio and the cap.

    The cap shrinks positives and negatives by the same factor, so it keeps the class mix that
    the data (or ``negative_ratio``) set and only changes the size.
    """
    positives = np.flatnonzero(positive).astype(np.int64)
    negatives = np.flatnonzero(~positive).astype(np.int64)
    if negative_ratio is not None:
        if negative_ratio < 0:
            raise ValueError(f"negative_ratio must be >= 0, got {negative_ratio}")
        negatives = _sample(negatives, int(negative_ratio * len(positives)), rng)
    total = len(positives) + len(negatives)
    if max_examples is not None and total > max_examples:
        _check_positive("max_examples", max_examples)
        keep_positives = round(max_examples * len(positives) / total)
        positives = _sample(positives, keep_positives, rng)
        negatives = _sample(negatives, max_examples - keep_positives, rng)
    return np.sort(np.concatenate([positives, negatives]))


def indicator_examples(
    table: pa.Table,
    *,
    context_messages: int,
    prefix: str = "",
    max_examples: int | None = None,
    negative_ratio: float | None = None,
    seed: int = 0,
) -> list[IndicatorExample]:
    """One example per message: the message and up to ``context_messages`` previous ones.

    Every conversation counts, labelled for risk or not; a message without indicator labels is
    a negative (all-zero multi-hot). Budget controls, both seeded:

    * ``negative_ratio``: keep every labelled message and at most ``negative_ratio`` times as
      many unlabelled ones (raises the share of positives above the corpus's);
    * ``max_examples``: cap the count, shrinking labelled and unlabelled messages by the same
      factor, so the mix set by the corpus or by ``negative_ratio`` stays (labelled messages
      are sampled too once the total exceeds the cap).

    Examples come in corpus order (conversation, then message).
    """
    if context_messages < 0:
        raise ValueError(f"context_messages must be >= 0, got {context_messages}")
    corpus = _flatten(table)
    positive = corpus.labels.max(axis=1) > 0
    rows = _capped(
        positive,
        max_examples=max_examples,
        negative_ratio=negative_ratio,
        rng=np.random.default_rng(seed),
    )
    conversation_of = corpus.conversation_of_messages()
    examples = []
    for row in rows.tolist():
        conversation = int(conversation_of[row])
        start = int(corpus.starts[conversation])
        first = max(start, row - context_messages)
        examples.append(
            IndicatorExample(
                conversation_id=corpus.conversation_ids[conversation],
                language=corpus.languages[conversation],
                message_index=row - start,
                text=_render_one_line(
                    corpus.authors[first : row + 1], corpus.texts[first : row + 1], prefix
                ),
                labels=tuple(corpus.labels[row].tolist()),
            )
        )
    logger.info(
        "indicator examples: %d (%d with labels) of %d messages in %d conversations",
        len(examples),
        int(positive[rows].sum()),
        len(positive),
        len(corpus.conversation_ids),
    )
    return examples


def _end_positions(
    length: int, segments: int | None, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    # The last message is always kept: the whole conversation is the most informative window.
    if segments is None or segments >= length:
        return np.arange(length, dtype=np.int64)
    earlier = rng.choice(length - 1, size=segments - 1, replace=False)
    return np.sort(np.append(earlier, length - 1)).astype(np.int64)


def risk_examples(
    table: pa.Table,
    *,
    window: int = ESPD_WINDOW,
    prefix: str = "",
    segments_per_conversation: int | None = None,
    seed: int = 0,
    max_examples: int | None = None,
) -> list[RiskExample]:
    """Windows of the last ``window`` messages, each labelled with its conversation's risk.

    Conversations whose ``risk`` is unknown (null) are skipped. ``segments_per_conversation``
    keeps that many end positions per conversation, drawn uniformly and always including the
    last message (None: every position, as eSPD scores after each message); this weights
    conversations equally instead of by length. ``max_examples`` then caps the count, shrinking
    risk and non-risk windows by the same factor. Both are seeded; examples come in corpus order.
    """
    _check_positive("window", window)
    if segments_per_conversation is not None:
        _check_positive("segments_per_conversation", segments_per_conversation)
    corpus = _flatten(table)
    rng = np.random.default_rng(seed)
    owners: list[npt.NDArray[np.int64]] = []
    ends: list[npt.NDArray[np.int64]] = []
    skipped = 0
    for conversation, risk in enumerate(corpus.risks):
        if risk is None:
            skipped += 1
            continue
        length = int(corpus.starts[conversation + 1] - corpus.starts[conversation])
        positions = _end_positions(length, segments_per_conversation, rng)
        owners.append(np.full(len(positions), conversation, dtype=np.int64))
        ends.append(positions)
    owner = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
    end = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
    labels = np.array([corpus.risks[c] for c in owner.tolist()], dtype=np.int64)
    rows = _capped(labels == 1, max_examples=max_examples, negative_ratio=None, rng=rng)

    examples = []
    chosen = zip(owner[rows].tolist(), end[rows].tolist(), labels[rows].tolist(), strict=True)
    for conversation, end_index, label in chosen:
        start = int(corpus.starts[conversation])
        last = start + end_index
        first = max(start, last - window + 1)
        examples.append(
            RiskExample(
                conversation_id=corpus.conversation_ids[conversation],
                language=corpus.languages[conversation],
                end_index=end_index,
                text=_render_one_line(
                    corpus.authors[first : last + 1], corpus.texts[first : last + 1], prefix
                ),
                label=label,
            )
        )
    logger.info(
        "risk examples: %d (%d positive) from %d conversations; %d without a risk label skipped",
        len(examples),
        sum(example.label for example in examples),
        len(corpus.conversation_ids) - skipped,
        skipped,
    )
    return examples


def indicator_label_counts(examples: Sequence[IndicatorExample]) -> npt.NDArray[np.int64]:
    """Positive examples per indicator, in ``INDICATOR_IDS`` order."""
    if not examples:
        return np.zeros(len(INDICATOR_IDS), dtype=np.int64)
    matrix = np.array([example.labels for example in examples], dtype=np.int64)
    counts: npt.NDArray[np.int64] = matrix.sum(axis=0)
    return counts


def positive_weights(
    counts: npt.ArrayLike,
    total: int,
    *,
    power: float = 0.5,
    max_weight: float = 50.0,
    names: Sequence[str] | None = None,
) -> npt.NDArray[np.float64]:
    """Per-label ``pos_weight`` for a BCE loss: ``(negatives / positives) ** power``, clipped.

    ``counts`` are positives per label out of ``total`` examples. ``power`` 0.5 softens the
    imbalance rather than inverting it fully (full inversion over-predicts rare indicators);
    ``max_weight`` bounds the weight of the rarest. A label without positives gets 1.0 (there
    is nothing to up-weight) and a warning naming it; ``names`` defaults to ``INDICATOR_IDS``
    when there are as many counts, else to column numbers.
    """
    positives = np.asarray(counts, dtype=np.float64)
    if positives.ndim != 1:
        raise ValueError(f"counts must be one number per label, got shape {positives.shape}")
    if (positives < 0).any() or (positives > total).any():
        raise ValueError(f"counts must lie between 0 and total ({total}), got {positives.tolist()}")
    if names is None:
        names = INDICATOR_IDS if len(positives) == len(INDICATOR_IDS) else None
    elif len(names) != len(positives):
        raise ValueError(f"{len(names)} names for {len(positives)} counts")
    missing = positives == 0
    if missing.any():
        labels = [names[i] if names else f"column {i}" for i in np.flatnonzero(missing).tolist()]
        logger.warning("no positive examples for %s: their loss weight stays 1.0", labels)
    ratio = (total - positives) / np.where(missing, 1.0, positives)
    weights: npt.NDArray[np.float64] = np.where(missing, 1.0, np.minimum(ratio**power, max_weight))
    return weights
