"""The ONNX int8 fast path: export a saved classifier, quantise it, ship it only if it keeps up.

`export_fp32` writes the classifier (encoder -> mean pooling -> head) as one ONNX graph with
dynamic batch and sequence axes, trying the dynamo exporter first and the TorchScript exporter if
that fails; the exporter used is stored in the file's metadata (`exporter_of`).

`build_onnx_variant` quantises that graph with onnxruntime, fastest candidate first, and scores
the given texts with each candidate against PyTorch. A candidate ships only when

- its quality metric (macro-F1 for indicators, AUPRC for risk, at the given thresholds) stays
  within ``tolerance_points`` points of PyTorch's, and
- its scores do not depend on the batch: dynamic int8 quantises activations with one scale per
  tensor, so a text's score can move with the other texts (and padding) in its batch.

The output folder then holds ``model.onnx`` and ``parity.json``; when no candidate passes it holds
only ``parity.json``, saying why PyTorch is served instead. `OnnxScorer` serves a shipped file
behind the same interface as the PyTorch scorers (`cesagram.evaluation.scorers.Scorer`).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
import torch
from pydantic import BaseModel, ConfigDict
from scipy.special import expit  # type: ignore[import-untyped]  # scipy ships no types

from cesagram.evaluation.metrics import indicator_metrics, risk_metrics
from cesagram.models.encoder_classifier import (
    CLASSIFIER_FILE,
    ENCODER_FOLDER,
    ClassifierInfo,
    load_classifier,
    predict_proba,
)

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
PARITY_FILE = "parity.json"
DEFAULT_OPSET = 21
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"
EXPORTER_KEY = "cesagram.exporter"
# Texts scored one at a time and all together to measure batch dependence.
BATCH_SAMPLE_SIZE = 16
# An exported graph whose logits differ more than this from PyTorch's is a broken export.
EXPORT_ATOL = 1e-3

Exporter = Literal["dynamo", "torchscript"]

# Neutral stand-ins of different lengths: the export traces the graph with the first pair and
# checks it on the second, whose batch and sequence sizes differ (a traced graph that froze a
# shape fails there, not in production).
_TRACE_TEXTS = ["hello", "see you after school tomorrow"]
_CHECK_TEXTS = ["ok", "what time does the film start tonight", "good luck with the match"]


class CandidateParity(BaseModel):
    """How one quantised candidate compares with PyTorch on the same texts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    metric: str
    pytorch_value: float | None = None
    candidate_value: float | None = None
    delta_points: float | None = None
    max_abs_score_diff: float | None = None
    flipped_decisions: int | None = None
    batch_dependence: float | None = None
    speedup: float | None = None
    file_size_bytes: int | None = None
    passed: bool = False
    reason: str | None = None


class OnnxReport(BaseModel):
    """What `build_onnx_variant` tried, what it shipped and why (written as ``parity.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shipped: bool
    chosen: str | None
    task: str
    metric: str
    exporter: Exporter
    opset: int
    texts_compared: int
    batch_sample_size: int
    tolerance_points: float
    batch_tolerance: float
    min_speedup: float | None = None
    fp32_size_bytes: int
    candidates: list[CandidateParity]
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (undefined metrics become ``None``)."""
        result: dict[str, Any] = json.loads(self.model_dump_json())
        return result


# ---------------------------------------------------------------------------------------------
# Export


def export_fp32(
    model_dir: Path,
    out_path: Path,
    *,
    opset: int = DEFAULT_OPSET,
    exporters: Sequence[Exporter] = ("dynamo", "torchscript"),
) -> Path:
    """Export a saved classifier folder to one ONNX file of float32 logits.

    Inputs ``input_ids`` and ``attention_mask`` (int64, ``[batch, sequence]``), output ``logits``
    (``[batch, num_labels]``). The exporters are tried in order, the dynamo one first: when one
    raises, or its graph disagrees with PyTorch, the next is tried. The exporter used is
    recorded in the file's metadata (see `exporter_of`). Every export is checked in onnxruntime
    against PyTorch on inputs of another shape than the ones it was traced with.

    Raises:
        RuntimeError: when every exporter failed (the last error is chained).
    """
    if not exporters:
        raise ValueError("exporters is empty: give at least one of dynamo, torchscript")
    model, tokenizer, _ = load_classifier(model_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for position, exporter in enumerate(exporters):
        try:
            _export_with(exporter, model, tokenizer, out_path, opset)
            break
        except Exception as error:
            out_path.unlink(missing_ok=True)
            if position == len(exporters) - 1:
                raise RuntimeError(
                    f"{model_dir}: ONNX export failed with every exporter tried "
                    f"({', '.join(exporters)})"
                ) from error
            message = str(error).splitlines()[0] if str(error) else ""
            logger.warning(
                "%s ONNX export failed (%s: %s); trying the %s exporter",
                exporter,
                type(error).__name__,
                message,
                exporters[position + 1],
            )
    exported = onnx.load(out_path)
    onnx.helper.set_model_props(exported, {EXPORTER_KEY: exporter})
    onnx.save(exported, out_path)
    logger.info(
        "Exported the classifier to ONNX with the %s exporter (opset %d, %d bytes)",
        exporter,
        opset,
        out_path.stat().st_size,
    )
    return out_path


def _export_with(
    exporter: Exporter, model: torch.nn.Module, tokenizer: Any, out_path: Path, opset: int
) -> None:
    trace = tokenizer(_TRACE_TEXTS, padding=True, return_tensors="pt")
    example = (trace["input_ids"], trace["attention_mask"])
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    common: dict[str, Any] = {
        "input_names": list(INPUT_NAMES),
        "output_names": [OUTPUT_NAME],
        "opset_version": opset,
    }
    if exporter == "dynamo":
        with _quiet("onnx_ir"):  # it logs every deduplicated initializer at INFO
            torch.onnx.export(
                model,
                example,
                out_path,
                **common,
                dynamo=True,
                external_data=False,
                verbose=False,
                dynamic_shapes=axes,
            )
    else:
        torch.onnx.export(
            model,
            example,
            out_path,
            **common,
            dynamo=False,
            dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}},
        )
    _check_export(model, tokenizer, out_path)


def exporter_of(onnx_path: Path) -> Exporter:
    """Which exporter wrote a file made by `export_fp32` (``dynamo`` or ``torchscript``)."""
    props = {prop.key: prop.value for prop in onnx.load(onnx_path).metadata_props}
    found = props.get(EXPORTER_KEY)
    if found not in ("dynamo", "torchscript"):
        raise ValueError(
            f"{onnx_path}: expected metadata {EXPORTER_KEY} = dynamo or torchscript "
            f"(a file written by export_fp32); found {found!r}"
        )
    return "dynamo" if found == "dynamo" else "torchscript"


def _check_export(model: torch.nn.Module, tokenizer: Any, onnx_path: Path) -> None:
    """Refuse a graph that onnxruntime cannot load or whose logits differ from PyTorch's."""
    session = _session(onnx_path, threads=None)
    encoded = tokenizer(_CHECK_TEXTS, padding=True, return_tensors="np")
    feeds = {name: np.asarray(encoded[name], dtype=np.int64) for name in INPUT_NAMES}
    exported = np.asarray(session.run([OUTPUT_NAME], feeds)[0])
    with torch.inference_mode():
        expected = model(*(torch.from_numpy(feeds[name]) for name in INPUT_NAMES)).numpy()
    difference = float(np.abs(exported - expected).max())
    if not difference <= EXPORT_ATOL:
        raise RuntimeError(
            f"{onnx_path}: the exported graph's logits differ from PyTorch's by {difference:.2e} "
            f"(expected at most {EXPORT_ATOL:.0e}) on a batch of another shape than the trace"
        )


def _session(onnx_path: Path, *, threads: int | None) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# Scoring


class OnnxScorer:
    """An exported classifier in onnxruntime, tokenised exactly as `predict_proba` does.

    Follows `cesagram.evaluation.scorers.Scorer`. ``label_names`` and ``text_prefix`` come from
    the arguments or else from the ``classifier.json`` found in ``tokenizer_dir`` or its parent
    (a saved classifier's ``encoder/`` folder holds its tokenizer).
    """

    def __init__(
        self,
        onnx_path: Path,
        tokenizer_dir: Path,
        *,
        max_length: int,
        threads: int | None = None,
        label_names: Sequence[str] | None = None,
        text_prefix: str | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        info = _find_classifier_info(tokenizer_dir) if label_names is None else None
        if label_names is None:
            if info is None:
                raise FileNotFoundError(
                    f"{tokenizer_dir}: pass label_names, or keep the tokenizer in a saved "
                    f"classifier's {ENCODER_FOLDER}/ folder (no {CLASSIFIER_FILE} in it or its "
                    "parent)"
                )
            label_names = info.label_names
        self.label_names: list[str] = list(label_names)
        if text_prefix is None:
            text_prefix = info.text_prefix if info is not None else ""
        self.text_prefix: str = text_prefix
        self.max_length: int | None = max_length
        self.onnx_path = onnx_path
        self.tokenizer: Any = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.session: Any = _session(onnx_path, threads=threads)

    def scores(self, texts: list[str], *, batch_size: int = 32) -> npt.NDArray[np.float64]:
        """Sigmoid probabilities ``[n, labels]`` in input order, batched by length."""
        assert self.max_length is not None
        order = np.argsort([len(text) for text in texts], kind="stable")
        outputs = np.zeros((len(texts), len(self.label_names)), dtype=np.float64)
        for start in range(0, len(texts), batch_size):
            chunk = order[start : start + batch_size]
            encoded = self.tokenizer(
                [texts[i] for i in chunk],
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="np",
            )
            feeds = {name: np.asarray(encoded[name], dtype=np.int64) for name in INPUT_NAMES}
            logits = np.asarray(self.session.run([OUTPUT_NAME], feeds)[0], dtype=np.float64)
            outputs[chunk] = expit(logits)
        return outputs


def _find_classifier_info(tokenizer_dir: Path) -> ClassifierInfo | None:
    for folder in (tokenizer_dir, tokenizer_dir.parent):
        path = folder / CLASSIFIER_FILE
        if path.exists():
            return ClassifierInfo.model_validate_json(path.read_text())
    return None


# ---------------------------------------------------------------------------------------------
# Quantisation candidates


@dataclass(frozen=True)
class QuantisationCandidate:
    """One way to quantise the float32 graph: ``quantise(source, destination)``."""

    name: str
    description: str
    quantise: Callable[[Path, Path], None]


def _dynamic_int8(source: Path, destination: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs every tensor it leaves alone on the root logger at INFO.
    with _quiet(""):
        quantize_dynamic(
            source,
            destination,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=True,
            weight_type=QuantType.QInt8,
        )


def _weight_only_int8(source: Path, destination: Path) -> None:
    # The module calls logging.basicConfig(level=INFO) on import and logs every node at INFO.
    with _quiet("onnxruntime.quantization.matmul_nbits_quantizer"):
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        config = DefaultWeightOnlyQuantConfig(
            block_size=32, is_symmetric=True, bits=8, op_types_to_quantize=("MatMul",)
        )
        quantizer = MatMulNBitsQuantizer(onnx.load(source), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(destination), use_external_data_format=False)


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    library_logger = logging.getLogger(name)
    level = library_logger.level
    library_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        library_logger.setLevel(level)


CANDIDATES: tuple[QuantisationCandidate, ...] = (
    QuantisationCandidate(
        "dynamic_int8",
        "int8 MatMul/Gemm weights per channel, activations quantised at run time per tensor "
        "(integer matrix products; scores can depend on the batch)",
        _dynamic_int8,
    ),
    QuantisationCandidate(
        "weight_only_int8",
        "int8 MatMul weights in blocks of 32 (MatMulNBits), float32 activations "
        "(no activation quantisation, so no batch dependence)",
        _weight_only_int8,
    ),
)


def _pre_process(source: Path, destination: Path) -> Path:
    """onnxruntime's quantisation pre-processing, or the source itself when it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        # Symbolic shape inference gives up on the dynamo graph's Min(512, sequence) slice.
        quant_pre_process(source, destination, skip_symbolic_shape=True)
    except Exception as error:
        logger.warning(
            "Quantisation pre-processing failed (%s); quantising the exported graph as is",
            type(error).__name__,
        )
        return source
    return destination


# ---------------------------------------------------------------------------------------------
# Choosing the variant


def build_onnx_variant(
    model_dir: Path,
    out_dir: Path,
    *,
    texts: list[str],
    labels: npt.ArrayLike,
    thresholds: list[float] | float,
    task: str,
    tolerance_points: float = 0.5,
    batch_tolerance: float = 0.01,
    min_speedup: float | None = 1.0,
    opset: int = DEFAULT_OPSET,
) -> OnnxReport:
    """Export, quantise and keep the first candidate that scores like PyTorch, faster.

    Args:
        model_dir: a saved classifier folder.
        out_dir: receives ``model.onnx`` (only if a candidate passes) and ``parity.json``; it
            must hold nothing else.
        texts: rendered inputs (with the model's text prefix) to compare on, e.g. validation.
        labels: their 0/1 labels, ``[n, labels]`` for indicators, ``[n]`` or ``[n, 1]`` for risk.
        thresholds: decision thresholds, one per label or one for all.
        task: ``indicators`` (macro-F1) or ``risk`` (AUPRC); must match the saved model's.
        tolerance_points: largest allowed |metric difference| to PyTorch, in points (0.5 =
            0.005 absolute).
        batch_tolerance: largest allowed score difference between scoring the first
            ``BATCH_SAMPLE_SIZE`` texts one at a time and all in one batch.
        min_speedup: the candidate must score ``texts`` at least this many times as fast as
            PyTorch on this machine (None: speed is reported, not required); a "fast path"
            slower than PyTorch would only cost quality.
        opset: ONNX opset of the export.

    Returns:
        The report also written to ``out_dir/parity.json``.
    """
    model, tokenizer, info = load_classifier(model_dir)
    if task not in ("indicators", "risk"):
        raise ValueError(f"task must be 'indicators' or 'risk'; got {task!r}")
    if task != info.task:
        raise ValueError(f"{model_dir / CLASSIFIER_FILE}: expected task {task}; found {info.task}")
    if not texts:
        raise ValueError("texts is empty: there is nothing to compare on")
    truth = np.asarray(labels)
    if truth.shape[0] != len(texts):
        raise ValueError(f"labels has {truth.shape[0]} rows but {len(texts)} texts were given")
    cutoff_count = np.asarray(thresholds).size
    if cutoff_count not in (1, len(info.label_names)):
        raise ValueError(
            f"thresholds: expected 1 or {len(info.label_names)} (one per label of "
            f"{model_dir / CLASSIFIER_FILE}); found {cutoff_count}"
        )
    _prepare_out_dir(out_dir)

    started = time.perf_counter()
    reference = predict_proba(model, tokenizer, texts, max_length=info.max_length).astype(
        np.float64
    )
    pytorch_seconds = time.perf_counter() - started
    del model
    metric_name = "macro_f1" if task == "indicators" else "auprc"

    def quality(scores: npt.NDArray[np.float64]) -> float:
        if task == "indicators":
            return indicator_metrics(truth, scores, thresholds, label_names=info.label_names)[
                "macro_f1"
            ]
        cutoff = float(np.asarray(thresholds, dtype=np.float64).reshape(-1)[0])
        return risk_metrics(truth.reshape(-1), scores[:, 0], cutoff)["auprc"]

    baseline = _Baseline(
        texts=texts,
        scores=reference,
        cutoffs=np.broadcast_to(np.asarray(thresholds, dtype=np.float64), reference.shape),
        metric=metric_name,
        value=quality(reference),
        quality=quality,
        seconds=pytorch_seconds,
    )
    logger.info(
        "PyTorch %s on %d texts: %.4f; trying %d ONNX candidates",
        metric_name,
        len(texts),
        baseline.value,
        len(CANDIDATES),
    )

    results: list[CandidateParity] = []
    chosen: str | None = None
    with tempfile.TemporaryDirectory(prefix=".onnx-build-", dir=out_dir) as work:
        workdir = Path(work)
        fp32 = export_fp32(model_dir, workdir / "fp32.onnx", opset=opset)
        exporter = exporter_of(fp32)
        fp32_size = fp32.stat().st_size
        source = _pre_process(fp32, workdir / "fp32-pre.onnx")
        for candidate in CANDIDATES:
            path = workdir / f"{candidate.name}.onnx"
            try:
                candidate.quantise(source, path)
            except Exception as error:  # an onnxruntime without this quantiser, an odd op
                logger.warning(
                    "ONNX candidate %s failed (%s)", candidate.name, type(error).__name__
                )
                results.append(
                    CandidateParity(
                        name=candidate.name,
                        description=candidate.description,
                        metric=metric_name,
                        pytorch_value=baseline.value,
                        reason=f"quantisation failed: {type(error).__name__}: {error}",
                    )
                )
                continue
            scorer = OnnxScorer(
                path,
                model_dir / ENCODER_FOLDER,
                max_length=info.max_length,
                label_names=info.label_names,
                text_prefix=info.text_prefix,
            )
            parity = _compare(
                candidate, scorer, baseline, tolerance_points, batch_tolerance, min_speedup
            )
            results.append(parity)
            if parity.passed:
                chosen = candidate.name
                path.replace(out_dir / ONNX_FILE)
                break

    reason = None
    if chosen is None:
        refusals = "; ".join(f"{result.name}: {result.reason}" for result in results)
        reason = (
            "no ONNX candidate kept PyTorch's quality at a higher speed, so PyTorch will be "
            f"served ({refusals})"
        )
        logger.warning("No ONNX candidate passed; PyTorch will be served")
    report = OnnxReport(
        shipped=chosen is not None,
        chosen=chosen,
        task=task,
        metric=metric_name,
        exporter=exporter,
        opset=opset,
        texts_compared=len(texts),
        batch_sample_size=min(BATCH_SAMPLE_SIZE, len(texts)),
        tolerance_points=tolerance_points,
        batch_tolerance=batch_tolerance,
        min_speedup=min_speedup,
        fp32_size_bytes=fp32_size,
        candidates=results,
        reason=reason,
    )
    (out_dir / PARITY_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _prepare_out_dir(out_dir: Path) -> None:
    """Clear a previous run's files; refuse a folder holding anything else."""
    out_dir.mkdir(parents=True, exist_ok=True)
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in (ONNX_FILE, PARITY_FILE))
    if others:
        raise FileExistsError(
            f"{out_dir}: expected an empty folder or one holding only {ONNX_FILE} and "
            f"{PARITY_FILE}; found {', '.join(others)}"
        )
    for name in (ONNX_FILE, PARITY_FILE):
        (out_dir / name).unlink(missing_ok=True)


@dataclass(frozen=True)
class _Baseline:
    """PyTorch's scores and quality on the comparison texts."""

    texts: list[str]
    scores: npt.NDArray[np.float64]
    cutoffs: npt.NDArray[np.float64]
    metric: str
    value: float
    quality: Callable[[npt.NDArray[np.float64]], float]
    seconds: float


def _compare(
    candidate: QuantisationCandidate,
    scorer: OnnxScorer,
    baseline: _Baseline,
    tolerance_points: float,
    batch_tolerance: float,
    min_speedup: float | None,
) -> CandidateParity:
    """Measure one quantised candidate against PyTorch's scores and speed."""
    started = time.perf_counter()
    scores = scorer.scores(baseline.texts)
    speedup = baseline.seconds / max(time.perf_counter() - started, 1e-9)
    value = baseline.quality(scores)
    delta = (value - baseline.value) * 100
    sample = baseline.texts[:BATCH_SAMPLE_SIZE]
    one_at_a_time = scorer.scores(sample, batch_size=1)
    together = scorer.scores(sample, batch_size=len(sample))
    batch_dependence = float(np.abs(one_at_a_time - together).max())

    reasons = []
    if not math.isfinite(delta):
        reasons.append(f"{baseline.metric} is undefined on these texts")
    elif not abs(delta) <= tolerance_points:
        reasons.append(
            f"{baseline.metric} moved {delta:+.2f} points (allowed ±{tolerance_points:g})"
        )
    if not batch_dependence <= batch_tolerance:
        reasons.append(
            f"scores depend on the batch by up to {batch_dependence:.4f} "
            f"(allowed {batch_tolerance:g})"
        )
    if min_speedup is not None and speedup < min_speedup:
        reasons.append(f"{speedup:.2f}x PyTorch's speed (required {min_speedup:g}x)")
    flipped = (scores >= baseline.cutoffs) != (baseline.scores >= baseline.cutoffs)
    parity = CandidateParity(
        name=candidate.name,
        description=candidate.description,
        metric=baseline.metric,
        pytorch_value=baseline.value,
        candidate_value=value,
        delta_points=delta,
        max_abs_score_diff=float(np.abs(scores - baseline.scores).max()),
        flipped_decisions=int(np.count_nonzero(flipped)),
        batch_dependence=batch_dependence,
        speedup=speedup,
        file_size_bytes=scorer.onnx_path.stat().st_size,
        passed=not reasons,
        reason="; ".join(reasons) or None,
    )
    logger.info(
        "ONNX candidate %s: %s %.4f (%+.2f points), batch dependence %.4f, %.2fx PyTorch's "
        "speed, %d bytes, %s",
        candidate.name,
        baseline.metric,
        value,
        delta,
        batch_dependence,
        speedup,
        scorer.onnx_path.stat().st_size,
        "passed" if parity.passed else "refused",
    )
    return parity
