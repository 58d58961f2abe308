"""Benchmark training throughput: this platform's loop against a plain Hugging Face Trainer.

Trains the indicator classifier on the default backbone (multilingual-e5-small) for a fixed
number of optimisation steps, up to three ways, one after the other in this process, and prints
samples per second for each and the ratio platform / Hugging Face (``--loops`` picks them):

* ``platform``: ``ClassifierModule`` + ``ClassificationDataModule`` + a Lightning Trainer built
  from ``configs/trainer/cpu.yaml`` as ``train()`` builds it (frozen word embeddings, only the
  top ``train_top_layers`` layers trained, length-grouped dynamic padding, AdamW with the head
  at its own learning rate, gradient clipping 1.0, 32-bit, its progress bar). Validation,
  checkpoints and MLflow are left out: they are not training steps.
* ``hf``: ``transformers.Trainer`` as a user writes it: ``TrainingArguments`` with
  ``per_device_train_batch_size``, ``max_steps``, the config's learning rate and weight decay,
  ``save_strategy="no"`` (a final checkpoint is outside the timing anyway); everything else at
  its default (random sampling, optimizer ``adamw_torch_fused``, ``max_grad_norm`` 1.0, fp32,
  no ``torch.compile``, its progress bar). ``processing_class=tokenizer`` gives the default
  ``DataCollatorWithPadding`` (pads each batch to its longest sequence). The model is an
  ``nn.Module`` of the same shape as the platform's: the encoder without pooler, mean pooling,
  dropout, a linear head and the same class-weighted BCE loss, every parameter trainable.
* ``hf-tuned``: the same, with the platform's speed choices made the Hugging Face way: the
  same parameters frozen (word embeddings, and all but the top ``train_top_layers`` layers)
  and ``train_sampling_strategy="group_by_length"``. It shows how much of the difference is
  those choices and how much the loop itself.

All of them see the same examples (``data/splits/train.parquet``, the indicator examples of
``configs/model/indicators.yaml``), batch size and ``max_length``, on ``--threads`` threads.
Each runs ``--warmup-steps`` untimed steps, then ``--steps`` timed ones: the clock runs from the
end of the last warm-up step to the end of the last timed step, so it covers batching, forward,
backward, clipping and the optimizer step. Model loading and tokenisation are not timed.

Columns: samples/s (the headline), real (unpadded) tokens/s, which does not depend on which
batches fell in the timed window, the mean padded batch length, the share of real tokens, and
the CPU cores the process used while timed. On a shared machine another process skews every
figure: the load before the start is printed, and a warning when a loop got less than
``BUSY_SHARE`` of its threads' worth of CPU.

Needs ``accelerate`` (the Hugging Face Trainer requires it): ``pip install 'accelerate>=1.1'``.
The backbone comes from ``--backbone-dir`` (default ``models/backbone``); when that folder holds
no e5_small backbone, one is converted into a temporary folder (a few seconds, offline).
Trailing arguments are Hydra overrides of the platform's config, as ``cesagram train`` takes
them.

    .venv/bin/python benchmarks/train_throughput.py                  # 40 timed steps each
    .venv/bin/python benchmarks/train_throughput.py --steps 20 --batch-size 32
    .venv/bin/python benchmarks/train_throughput.py --loops platform,hf-tuned \
        +indicators.optimizer.fused=true             # the platform with fused AdamW
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# Before torch and transformers load: no hub, no telemetry (the project's rule everywhere).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cesagram.config import compose
from cesagram.models.backbones import (
    BackboneSpec,
    backbone_info,
    load_tokenizer,
    materialise_backbone,
)
from cesagram.models.encoder_classifier import Task
from cesagram.training.inputs import TaskInputs, task_inputs
from cesagram.training.train import build_training, class_weights

ROOT = Path(__file__).resolve().parents[1]
TASK: Task = "indicators"
LOOPS = ("platform", "hf", "hf-tuned")
PLATFORM_NAME = "platform (Lightning)"
BUSY_SHARE = 0.8  # of --threads cores: a loop that got less was competing with another process


@dataclass
class StepClock:
    """Times the steps after ``warmup``; fed once per optimisation step, after it ends."""

    warmup: int
    steps: int
    samples: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    started: float | None = None
    stopped: float | None = None
    cpu_seconds: float = 0.0
    batch_lengths: list[int] = field(default_factory=list)

    def step_end(self, step: int, attention_mask: torch.Tensor) -> None:
        """Record the end of global step ``step`` (1-based) whose batch had this mask."""
        now = time.perf_counter()
        if step == self.warmup:
            self.started = now
            self.cpu_seconds = -time.process_time()
        elif self.warmup < step <= self.warmup + self.steps:
            self.samples += int(attention_mask.shape[0])
            self.padded_tokens += int(attention_mask.numel())
            self.real_tokens += int(attention_mask.sum())
            self.batch_lengths.append(int(attention_mask.shape[1]))
            if step == self.warmup + self.steps:
                self.stopped = now
                self.cpu_seconds += time.process_time()

    @property
    def cores_used(self) -> float:
        """CPU seconds per wall second while timed: below --threads, something else ran."""
        return self.cpu_seconds / self.seconds

    @property
    def seconds(self) -> float:
        """Wall-clock seconds of the timed steps."""
        if self.started is None or self.stopped is None:
            raise RuntimeError("the run ended before the timed steps completed")
        return self.stopped - self.started


@dataclass(frozen=True)
class Measurement:
    """One loop's figures."""

    name: str
    clock: StepClock
    trainable: int
    """Parameters the optimizer updates."""

    @property
    def samples_per_second(self) -> float:
        """Training examples per second over the timed steps."""
        return self.clock.samples / self.clock.seconds


def _config(args: argparse.Namespace) -> DictConfig:
    sizes = [f"{TASK}.batch_size={args.batch_size}", f"{TASK}.max_length={args.max_length}"]
    return OmegaConf.create(compose([*args.overrides, *sizes], ROOT / "configs"))


@contextmanager
def _backbone(requested: Path, cfg: DictConfig) -> Iterator[Path]:
    """``requested`` when it holds the configured backbone, else a fresh temporary copy."""
    info_file = requested / "backbone.json"
    if info_file.exists() and backbone_info(requested)["name"] == cfg.backbone.name:
        yield requested
        return
    print(f"{requested} holds no {cfg.backbone.name} backbone: converting one (offline)")
    spec = BackboneSpec.model_validate(OmegaConf.to_container(cfg.backbone, resolve=True))
    with tempfile.TemporaryDirectory(prefix="backbone-") as scratch:
        yield materialise_backbone(spec, Path(scratch) / "backbone")


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_platform(
    cfg: DictConfig, inputs: TaskInputs, backbone_dir: Path, warmup: int, steps: int
) -> Measurement:
    """The platform's loop, built as ``cesagram.training.train.train`` builds it."""
    import lightning
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import Callback

    clock = StepClock(warmup, steps)

    class Timer(Callback):
        def on_train_batch_end(
            self,
            trainer: lightning.Trainer,
            pl_module: lightning.LightningModule,
            outputs: Any,
            batch: dict[str, torch.Tensor],
            batch_idx: int,
        ) -> None:
            clock.step_end(trainer.global_step, batch["attention_mask"])

    lightning.seed_everything(cfg.seed, workers=True)
    datamodule, module = build_training(
        cfg, TASK, inputs, load_tokenizer(backbone_dir), backbone_dir, "e5_small"
    )
    with tempfile.TemporaryDirectory(prefix="platform-") as scratch:
        trainer: lightning.Trainer = instantiate(
            cfg.trainer,
            max_steps=warmup + steps,
            max_epochs=-1,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            callbacks=[Timer(), instantiate(cfg.callbacks.progress_bar)],
            default_root_dir=scratch,
        )
        trainer.fit(module, datamodule=datamodule)
    return Measurement(PLATFORM_NAME, clock, _trainable(module))


class MeanPooledClassifier(nn.Module):
    """The Hugging Face user's model: encoder, mean pooling, dropout, head, BCE loss."""

    def __init__(
        self, backbone_dir: Path, num_labels: int, pos_weight: list[float], dropout: float
    ) -> None:
        from transformers import AutoModel

        super().__init__()
        # No pooler: e5 ships none (a fresh one would be unused weights), as the platform does.
        self.encoder = AutoModel.from_pretrained(backbone_dir, add_pooling_layer=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.encoder.config.hidden_size, num_labels)
        self.loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
        self.last_attention_mask = torch.zeros(0, 0)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"logits"}``, plus ``"loss"`` when labels are given (what the Trainer reads)."""
        self.last_attention_mask = attention_mask
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        mask = attention_mask.unsqueeze(-1).to(hidden.last_hidden_state.dtype)
        pooled = (hidden.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits: torch.Tensor = self.head(self.dropout(pooled))
        if labels is None:
            return {"logits": logits}
        return {"loss": self.loss(logits, labels.float()), "logits": logits}


def _freeze_like_platform(encoder: Any, settings: DictConfig) -> None:
    """The platform's freezing, written as a Hugging Face user would (BERT layout)."""
    if settings.freeze_word_embeddings:
        encoder.get_input_embeddings().weight.requires_grad_(False)
    top = settings.get("train_top_layers")
    layers = encoder.encoder.layer
    if top is not None and len(layers) > top:
        for module in [encoder.embeddings, *layers[: len(layers) - top]]:
            module.requires_grad_(False)


def run_hugging_face(
    cfg: DictConfig,
    inputs: TaskInputs,
    backbone_dir: Path,
    warmup: int,
    steps: int,
    *,
    tuned: bool,
) -> Measurement:
    """``transformers.Trainer`` on the same examples; ``tuned`` freezes and groups as we do."""
    from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    settings = cfg[TASK]
    clock = StepClock(warmup, steps)
    tokenizer = AutoTokenizer.from_pretrained(backbone_dir)
    encoded = tokenizer(inputs.train_texts, truncation=True, max_length=settings.max_length)
    labels = inputs.train_labels.astype("float32").tolist()
    dataset = [
        {"input_ids": ids, "attention_mask": mask, "labels": row}
        for ids, mask, row in zip(
            encoded["input_ids"], encoded["attention_mask"], labels, strict=True
        )
    ]
    model = MeanPooledClassifier(
        backbone_dir, len(inputs.label_names), class_weights(settings, inputs), settings.dropout
    )
    if tuned:
        _freeze_like_platform(model.encoder, settings)

    class Timer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.step_end(state.global_step, model.last_attention_mask)

    with tempfile.TemporaryDirectory(prefix="hf-") as scratch:
        options: dict[str, Any] = {}
        if tuned:
            # transformers 5 names the option train_sampling_strategy; 4.x had group_by_length.
            names = {option.name for option in fields(TrainingArguments)}
            if "train_sampling_strategy" in names:
                options["train_sampling_strategy"] = "group_by_length"
            else:
                options["group_by_length"] = True
        arguments = TrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=settings.batch_size,
            max_steps=warmup + steps,
            learning_rate=settings.optimizer.lr,
            weight_decay=settings.optimizer.weight_decay,
            save_strategy="no",
            seed=cfg.seed,
            **options,
        )
        trainer = Trainer(
            model=model,
            args=arguments,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[Timer()],
        )
        trainer.train()
    name = "Hugging Face, our freezing + grouped" if tuned else "Hugging Face Trainer defaults"
    return Measurement(name, clock, _trainable(model))


def _quiet() -> None:
    # The figures are the output: keep library chatter (GPU lines, tips, worker hints) out.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")


def _report(results: list[Measurement], args: argparse.Namespace, setting: str) -> None:
    print()
    print(
        f"indicator classifier, {setting}, batch size {args.batch_size}, "
        f"max_length {args.max_length}, {args.threads} threads, "
        f"{args.warmup_steps} warm-up + {args.steps} timed steps"
    )
    if any(result.clock.cores_used < BUSY_SHARE * args.threads for result in results):
        print("warning: other processes were using the CPU: the figures are low and noisy")
    # tokens/s (real, unpadded) is robust to which batches fell in the timed window;
    # samples/s is the headline because every loop sees the same examples.
    header = (
        f"{'loop':<38}{'samples/s':>10}{'tokens/s':>10}{'s/step':>9}{'padded len':>12}"
        f"{'real tokens':>13}{'cores used':>12}{'trained':>10}"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        clock = result.clock
        print(
            f"{result.name:<38}{result.samples_per_second:>10.2f}"
            f"{clock.real_tokens / clock.seconds:>10.0f}"
            f"{clock.seconds / args.steps:>9.3f}"
            f"{sum(clock.batch_lengths) / len(clock.batch_lengths):>12.1f}"
            f"{clock.real_tokens / clock.padded_tokens:>13.0%}"
            f"{clock.cores_used:>12.2f}"
            f"{result.trainable / 1e6:>9.1f}M"
        )
    if results[0].name != PLATFORM_NAME:
        return
    platform = results[0].samples_per_second
    for result in results[1:]:
        ratio = platform / result.samples_per_second
        print(f"ratio platform / {result.name}: {ratio:.2f}")


def _loops(value: str) -> list[str]:
    chosen = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(LOOPS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"expected names from {','.join(LOOPS)}, got {value!r}")
    return chosen


def main() -> None:
    """Parse options, run the chosen loops and print their throughput."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per loop")
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--max-length", type=int, default=None, help="default: the config's")
    parser.add_argument("--backbone-dir", type=Path, default=ROOT / "models" / "backbone")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--loops",
        type=_loops,
        default=list(LOOPS),
        help=f"comma-separated, of {','.join(LOOPS)} (default: all; ratios need the platform)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides of the config, as `cesagram train` takes them, e.g. "
        "+indicators.optimizer.fused=true (Hugging Face reads only batch size, max_length, "
        "learning rate, weight decay, dropout and class weights from it)",
    )
    args = parser.parse_args()
    if args.steps < 1 or args.warmup_steps < 1:
        parser.error("--steps and --warmup-steps must be >= 1")
    if importlib.util.find_spec("accelerate") is None:
        sys.exit(
            "error: transformers.Trainer needs the accelerate package, which is not installed; "
            "install it with: .venv/bin/pip install 'accelerate>=1.1'"
        )
    defaults = OmegaConf.create(compose(args.overrides, ROOT / "configs"))
    args.batch_size = args.batch_size or defaults[TASK].batch_size
    args.max_length = args.max_length or defaults[TASK].max_length
    cfg = _config(args)
    splits_dir = ROOT / cfg.paths.splits_dir
    if not (splits_dir / "train.parquet").exists():
        sys.exit(f"error: {splits_dir / 'train.parquet'} not found; run `dvc repro` first")

    # Other processes on a small machine skew every figure: measure and report the load.
    load = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    _quiet()
    with _backbone(args.backbone_dir, cfg) as backbone_dir:
        prefix = backbone_info(backbone_dir)["text_prefix"]
        inputs = task_inputs(TASK, cfg[TASK], splits_dir, text_prefix=prefix, seed=cfg.seed)
        results = []
        for loop in LOOPS:  # always in this order: the platform first, the ratios' numerator
            if loop not in args.loops:
                continue
            if loop == "platform":
                result = run_platform(cfg, inputs, backbone_dir, args.warmup_steps, args.steps)
            else:
                result = run_hugging_face(
                    cfg,
                    inputs,
                    backbone_dir,
                    args.warmup_steps,
                    args.steps,
                    tuned=loop == "hf-tuned",
                )
            results.append(result)
            gc.collect()
    if torch.get_num_threads() != args.threads:
        print(f"warning: a library changed torch's threads to {torch.get_num_threads()}")
    setting = (
        f"{cfg.backbone.name}, {len(inputs.train)} training examples, load before start {load:.2f}"
    )
    _report(results, args, setting)


if __name__ == "__main__":
    main()
