"""Model cards: what a trained model is for, how well it did and where it falls short.

`render_markdown`, `render_html` and `write_card` turn an evaluation report and its run record
into a card after Mitchell et al. ("Model Cards for Model Reporting") and the Hugging Face
template, using only the numbers the evaluation recorded: an absent section reads
"not recorded", an undefined value "n/a". The report's keys, all optional except ``task``:

- ``task`` (``"indicators"`` or ``"risk"``), ``model`` (name, version, run_id, backbone,
  label_names, git_commit, data_sha256, dvc_data_md5, model_type);
- ``data`` and ``train_data`` (counts, languages, sources, translated), ``threshold``,
  ``temperature``;
- ``metrics`` (``{name: {estimate, low, high}}``), ``per_indicator``, ``baseline``;
- ``early_detection``, ``calibration``, ``robustness``, ``fairness``, ``latency``;
- ``gates``, ``promotion`` and ``plots`` (``{key: filename}``).

    >>> from cesagram.cards import write_card
    >>> md_path, html_path = write_card(report, run, plots, Path("cards"), "risk-v3")
"""

from cesagram.cards.render import (
    NOT_RECORDED,
    format_count,
    format_interval,
    format_metric,
    render_html,
    render_markdown,
    write_card,
)

__all__ = [
    "NOT_RECORDED",
    "format_count",
    "format_interval",
    "format_metric",
    "render_html",
    "render_markdown",
    "write_card",
]
