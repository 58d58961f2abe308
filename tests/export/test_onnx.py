"""The ONNX fast path on a real (randomly initialised) tiny classifier: export, score, ship."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from cesagram.evaluation.scorers import Scorer
from cesagram.export.onnx import (
    CANDIDATES,
    ONNX_FILE,
    PARITY_FILE,
    OnnxReport,
    OnnxScorer,
    build_onnx_variant,
    export_fp32,
    exporter_of,
)
from cesagram.models.backbones import load_tokenizer
from cesagram.models.encoder_classifier import (
    ENCODER_FOLDER,
    ClassifierInfo,
    EncoderClassifier,
    Task,
    load_classifier,
    predict_proba,
)

# Neutral chat lines of very different lengths (padding and truncation both happen).
TEXTS = [
    "hi",
    "ok see you",
    "did you finish the maths homework yet",
    "the bus was late again this morning so I missed the first lesson",
    "lol",
    "what time does practice start on saturday",
    "my cat knocked the plant off the window and now there is soil everywhere, "
    "my mum is not happy about it at all and I have to clean it before dinner " * 3,
    "thanks!",
    "are you coming to the library after school",
    "we lost the match 2-1 but it was close",
    "can you send me the link to the science project",
    "good night",
    "I think the new level is really hard, I got stuck at the boss three times",
    "which film did you pick for friday",
    "brb",
    "the weather is so nice today we should go to the park",
    "did the teacher say the test is on tuesday or wednesday",
    "haha same",
    "I am going to my grandparents this weekend",
    "see you tomorrow at lunch",
]
INDICATOR_LABELS = [f"label_{index}" for index in range(10)]


def _save_classifier(
    backbone: Path,
    folder: Path,
    task: Task,
    labels: list[str],
    head_hidden_size: int | None = None,
) -> Path:
    torch.manual_seed(7)  # the head is random: fix it so scores are the same every run
    model = EncoderClassifier.from_backbone(
        backbone, len(labels), head_hidden_size=head_hidden_size
    )
    info = ClassifierInfo(
        task=task,
        label_names=labels,
        max_length=64,
        thresholds=[0.5] * len(labels),
    )
    model.save(folder, load_tokenizer(backbone), info)
    return folder


def _labels_from_pytorch(model_dir: Path) -> tuple[np.ndarray, list[float]]:
    """Labels PyTorch gets partly right: above the per-label median score, with noise."""
    model, tokenizer, info = load_classifier(model_dir)
    scores = predict_proba(model, tokenizer, TEXTS, max_length=info.max_length)
    medians = np.median(scores, axis=0)
    labels = (scores >= medians).astype(np.int64)
    labels[::4] = 1 - labels[::4]
    return labels, [float(m) for m in medians]


@pytest.fixture(scope="module")
def indicator_model(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("onnx") / "indicators"
    return _save_classifier(tiny_workspace / "backbone", folder, "indicators", INDICATOR_LABELS)


@pytest.fixture(scope="module")
def fp32_onnx(indicator_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_fp32(indicator_model, tmp_path_factory.mktemp("fp32") / "fp32.onnx")


def test_fp32_export_scores_like_pytorch_at_any_batch_size(
    indicator_model: Path, fp32_onnx: Path
) -> None:
    model, tokenizer, info = load_classifier(indicator_model)
    scorer = OnnxScorer(fp32_onnx, indicator_model / ENCODER_FOLDER, max_length=info.max_length)
    graph = onnx.load(fp32_onnx).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["logits"]
    assert exporter_of(fp32_onnx) in ("dynamo", "torchscript")
    for batch_size in (1, 3, 32):
        expected = predict_proba(
            model, tokenizer, TEXTS, max_length=info.max_length, batch_size=batch_size
        )
        found = scorer.scores(TEXTS, batch_size=batch_size)
        assert found.dtype == np.float64 and found.shape == (len(TEXTS), 10)
        np.testing.assert_allclose(found, expected, atol=1e-4)


def test_a_classifier_with_an_mlp_head_exports_and_scores_like_pytorch(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    folder = _save_classifier(
        tiny_workspace / "backbone", tmp_path / "mlp", "risk", ["risk"], head_hidden_size=8
    )
    model, tokenizer, info = load_classifier(folder)
    assert info.head_hidden_size == 8
    path = export_fp32(folder, tmp_path / "mlp.onnx")
    found = OnnxScorer(path, folder / ENCODER_FOLDER, max_length=info.max_length).scores(TEXTS)
    expected = predict_proba(model, tokenizer, TEXTS, max_length=info.max_length)
    assert found.shape == (len(TEXTS), 1)
    np.testing.assert_allclose(found, expected, atol=1e-4)


def test_the_torchscript_fallback_exports_the_same_model(
    indicator_model: Path, fp32_onnx: Path, tmp_path: Path
) -> None:
    path = export_fp32(indicator_model, tmp_path / "ts.onnx", exporters=("torchscript",))
    assert exporter_of(path) == "torchscript"
    tokenizer_dir = indicator_model / ENCODER_FOLDER
    traced = OnnxScorer(path, tokenizer_dir, max_length=64).scores(TEXTS, batch_size=5)
    dynamo = OnnxScorer(fp32_onnx, tokenizer_dir, max_length=64).scores(TEXTS, batch_size=5)
    np.testing.assert_allclose(traced, dynamo, atol=1e-4)


def test_onnx_scorer_returns_rows_in_input_order(indicator_model: Path, fp32_onnx: Path) -> None:
    scorer: Scorer = OnnxScorer(
        fp32_onnx, indicator_model / ENCODER_FOLDER, max_length=64, threads=1
    )
    assert scorer.label_names == INDICATOR_LABELS  # read from classifier.json
    assert scorer.text_prefix == "" and scorer.max_length == 64
    forward = scorer.scores(TEXTS, batch_size=4)
    backward = scorer.scores(TEXTS[::-1], batch_size=4)
    np.testing.assert_allclose(backward, forward[::-1], atol=1e-5)
    alone = np.vstack([scorer.scores([text]) for text in TEXTS[:5]])
    np.testing.assert_allclose(alone, forward[:5], atol=1e-5)
    assert scorer.scores([]).shape == (0, 10)


def test_onnx_scorer_without_label_names_says_where_it_looked(
    fp32_onnx: Path, indicator_model: Path, tmp_path: Path
) -> None:
    import shutil

    tokenizer_dir = shutil.copytree(indicator_model / ENCODER_FOLDER, tmp_path / "tokenizer")
    with pytest.raises(FileNotFoundError, match="pass label_names"):
        OnnxScorer(fp32_onnx, tokenizer_dir, max_length=64)
    named = OnnxScorer(fp32_onnx, tokenizer_dir, max_length=64, label_names=list("abcdefghij"))
    assert named.label_names == list("abcdefghij")


def test_a_candidate_ships_when_the_tolerance_is_generous(
    indicator_model: Path, tmp_path: Path
) -> None:
    labels, thresholds = _labels_from_pytorch(indicator_model)
    out_dir = tmp_path / "onnx"
    report = build_onnx_variant(
        indicator_model,
        out_dir,
        texts=TEXTS,
        labels=labels,
        thresholds=thresholds,
        task="indicators",
        tolerance_points=100.0,
        batch_tolerance=1.0,
        min_speedup=None,  # speed is measured, not required, on a tiny model
    )
    assert report.shipped and report.chosen == CANDIDATES[0].name and report.reason is None
    assert sorted(p.name for p in out_dir.iterdir()) == [ONNX_FILE, PARITY_FILE]
    assert json.loads((out_dir / PARITY_FILE).read_text()) == report.to_dict()
    assert report.texts_compared == len(TEXTS) and report.metric == "macro_f1"
    [candidate] = report.candidates  # the first one passed: the slower ones were not needed
    assert candidate.passed and candidate.file_size_bytes == (out_dir / ONNX_FILE).stat().st_size
    assert candidate.pytorch_value is not None and candidate.candidate_value is not None
    assert candidate.delta_points == pytest.approx(
        (candidate.candidate_value - candidate.pytorch_value) * 100
    )
    assert 0 <= (candidate.flipped_decisions or 0) <= labels.size
    assert candidate.speedup is not None and candidate.speedup > 0
    shipped = OnnxScorer(out_dir / ONNX_FILE, indicator_model / ENCODER_FOLDER, max_length=64)
    model, tokenizer, _ = load_classifier(indicator_model)
    expected = predict_proba(model, tokenizer, TEXTS, max_length=64)
    difference = np.abs(shipped.scores(TEXTS) - expected).max()
    assert difference == pytest.approx(candidate.max_abs_score_diff, abs=1e-6)


def test_nothing_ships_when_no_candidate_can_pass(tiny_workspace: Path, tmp_path: Path) -> None:
    risk_model = _save_classifier(tiny_workspace / "backbone", tmp_path / "risk", "risk", ["risk"])
    out_dir = tmp_path / "onnx"
    out_dir.mkdir()
    (out_dir / ONNX_FILE).write_bytes(b"a stale model from an earlier run")
    labels = np.array([index % 3 == 0 for index in range(len(TEXTS))], dtype=np.int64)
    report = build_onnx_variant(
        risk_model,
        out_dir,
        texts=TEXTS,
        labels=labels,
        thresholds=0.5,
        task="risk",
        tolerance_points=-1.0,  # |delta| <= -1 is impossible
    )
    assert not report.shipped and report.chosen is None
    assert [p.name for p in out_dir.iterdir()] == [PARITY_FILE]
    assert report.reason is not None and "PyTorch will be served" in report.reason
    assert report.metric == "auprc"
    assert [c.name for c in report.candidates] == [c.name for c in CANDIDATES]
    for candidate in report.candidates:
        assert not candidate.passed and candidate.reason and "allowed ±-1" in candidate.reason
        assert candidate.reason in report.reason
    written = json.loads((out_dir / PARITY_FILE).read_text())
    assert OnnxReport.model_validate(written) == report
    assert json.loads(json.dumps(report.to_dict())) == written


def test_a_folder_holding_other_files_is_refused(indicator_model: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"found notes\.txt"):
        build_onnx_variant(
            indicator_model,
            tmp_path,
            texts=TEXTS,
            labels=np.zeros((len(TEXTS), 10), dtype=np.int64),
            thresholds=0.5,
            task="indicators",
        )
    with pytest.raises(ValueError, match="expected task risk; found indicators"):
        build_onnx_variant(
            indicator_model,
            tmp_path / "out",
            texts=TEXTS,
            labels=np.zeros(len(TEXTS), dtype=np.int64),
            thresholds=0.5,
            task="risk",
        )


def test_a_candidate_slower_than_required_is_refused(indicator_model: Path, tmp_path: Path) -> None:
    labels, thresholds = _labels_from_pytorch(indicator_model)
    report = build_onnx_variant(
        indicator_model,
        tmp_path / "onnx",
        texts=TEXTS,
        labels=labels,
        thresholds=thresholds,
        task="indicators",
        tolerance_points=100.0,
        batch_tolerance=1.0,
        min_speedup=1e9,  # no quantised model is a billion times faster
    )
    assert not report.shipped and report.min_speedup == 1e9
    assert all("PyTorch's speed" in (c.reason or "") for c in report.candidates)
    assert "PyTorch will be served" in (report.reason or "")
