"""Inference latency as the model will be served: tokenisation included, on this machine.

Per-message latency is measured at batch size 1 (one request, one message), throughput at a
serving-sized batch. The figures only mean something with the hardware beside them, so the
result carries a description of the machine.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def hardware_description() -> dict[str, str]:
    """CPU model, core count, memory, torch threads and the accelerator (if any)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory_gib": f"{memory_gib:.0f}",
        "torch_threads": str(torch.get_num_threads()),
        "device": device,
        "torch": torch.__version__,
    }


def measure_latency(
    score: Callable[[list[str]], Any],
    texts: Sequence[str],
    *,
    calls: int = 100,
    warmup: int = 5,
    batch_size: int = 32,
    batches: int = 5,
) -> dict[str, Any]:
    """Latency percentiles at batch 1 and throughput at ``batch_size``.

    Args:
        score: the model as served, from rendered texts to scores (tokenisation inside).
        texts: inputs to cycle through (real test inputs, so lengths are realistic).
        calls: timed single-text calls; ``warmup`` untimed ones come first.
        batch_size: texts per call for the throughput figure, over ``batches`` timed calls.

    Returns:
        ``p50_ms``, ``p95_ms``, ``p99_ms``, ``mean_ms`` (batch 1), ``throughput_per_s`` (texts
        per second at ``batch_size``), ``batch_size_throughput``, ``calls``, ``hardware``.
    """
    if not texts:
        raise ValueError("latency needs at least one input text")
    if calls < 1 or batches < 1 or batch_size < 1:
        raise ValueError(
            f"calls, batches and batch_size must be >= 1; got {calls}, {batches}, {batch_size}"
        )
    pool = list(texts)
    for index in range(warmup):
        score([pool[index % len(pool)]])
    timings = []
    for index in range(calls):
        started = time.perf_counter()
        score([pool[index % len(pool)]])
        timings.append((time.perf_counter() - started) * 1000)
    batch_seconds = 0.0
    for index in range(batches):
        batch = [pool[(index * batch_size + j) % len(pool)] for j in range(batch_size)]
        started = time.perf_counter()
        score(batch)
        batch_seconds += time.perf_counter() - started
    p50, p95, p99 = np.percentile(timings, [50, 95, 99])
    hardware = hardware_description()
    return {
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": float(np.mean(timings)),
        "throughput_per_s": batch_size * batches / batch_seconds,
        "batch_size_throughput": batch_size,
        "calls": calls,
        "device": hardware["device"],
        "hardware": ", ".join(f"{key} {value}" for key, value in hardware.items()),
    }
