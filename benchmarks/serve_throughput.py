"""Benchmark the BentoML service: concurrent clients against plain Hugging Face pipelines.

Drives ``POST /classify_messages`` of a running service (``serving/service.py``) with
``--clients`` concurrent clients (asyncio + httpx, one keep-alive connection each) for
``--warmup`` untimed seconds, then ``--duration`` timed seconds. Each client sends its next
request as soon as the previous answer arrived; a request carries ``--messages-per-request``
messages, each with its 2 previous messages as context (the service's adaptive batching merges
the concurrent requests). What is timed:

* throughput: the requests that *completed* inside the timed window, divided by its length;
  messages/s counts their messages. Requests still in flight when the window closes are
  awaited but not counted;
* latency: send-to-answer of those requests, client side (serialisation, HTTP, queueing in the
  batcher, the model, the reply), as p50/p95/p99;
* errors: every request of the run (warm-up included) that got no 200 or no well-formed list
  of ``--messages-per-request`` results, or raised (timeout, refused connection).

Then, in this process and after the service has stopped (so they do not compete for the
CPU), the baselines a user would otherwise write, each for ``--duration`` seconds on the same
rendered inputs (``render_messages``, as ``ServingRuntime.indicator_input`` renders them) and
on ``--threads`` torch threads: ``transformers.pipeline("text-classification", model=...,
tokenizer=..., function_to_apply="sigmoid", top_k=None)`` called once per message, and the
same pipeline called with lists of 256 messages and ``batch_size=32``. Our classifier is not a
standard Hugging Face architecture (encoder, mean pooling, linear head), so the pipeline gets
the fairest equivalent: the exported model's own encoder and head (``load_classifier`` on
``<exported>/model``, the folder the service's indicators tag names) inside a minimal
``PreTrainedModel`` whose forward returns the logits, so the unmodified
``TextClassificationPipeline`` tokenises (truncating to the model's ``max_length``), pads,
runs it and applies the sigmoid. Its probabilities are checked against ``predict_proba``.

Efficiency: an fp32 ``torch.matmul`` of two 2048x2048 matrices on ``--threads`` threads (best
of 5) gives the machine's attainable FLOP/s; the model's FLOPs per message are estimated from
the encoder config as 2 x (matmul parameters) x tokens plus the attention score and mix terms
(4 x tokens^2 x hidden per layer), averaged over the real (unpadded) token counts of the inputs;
the achieved model FLOP/s of each row are printed as a share of the matmul figure. Padding is
not counted, so this is useful work; with an ONNX int8 backend the fp32 figure is only a scale.

By default the script starts ``bentoml serve serving.service:Cesagram`` itself on 127.0.0.1
with a free port, the service file ``--serving-file``, the current ``BENTOML_HOME`` and a
generated API key, waits for ``/readyz`` and stops it at the end; ``--url`` targets a service
already running on this machine (127.0.0.1 or localhost only). The server's resident memory
(its process and children) is sampled every 2 s. ``--load`` is the bounded load test: 32
clients for 60 s unless ``--clients``/``--duration`` say otherwise, no baselines, the RSS
series printed with its growth after the first quarter (a leak shows as steady growth).

Inputs come from ``--corpus`` (default ``data/splits/test.parquet``) when it exists, else from
made-up neutral chat messages. Message text is never printed or logged; only counts and
figures are. The figures are printed, never asserted: the issue's goals (>= 3x the
one-at-a-time pipeline, 0 errors, p95 < 100 ms at 8 clients) are shown beside them. The
clients run on the same machine as the service and take CPU from it: their share is printed.

    .venv/bin/python benchmarks/serve_throughput.py                      # 8 clients, 30 s
    .venv/bin/python benchmarks/serve_throughput.py --clients 16 --messages-per-request 4
    .venv/bin/python benchmarks/serve_throughput.py --load               # 32 clients, 60 s
    .venv/bin/python benchmarks/serve_throughput.py --url http://127.0.0.1:3000 --skip-baseline
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import count, cycle, islice
from pathlib import Path
from typing import Any

# Before torch, transformers and bentoml load: no hub, no telemetry (the project's rule).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import httpx
import numpy as np
import torch
import yaml

from cesagram.config import validated
from cesagram.serving.settings import SERVICE_FILE_ENV, ServiceFile, ServingSettings
from cesagram.training.examples import render_messages

ROOT = Path(__file__).resolve().parents[1]
CONTEXT_MESSAGES = 2  # sent with every message; the service reads the newest ones it needs
INPUT_POOL = 1024  # distinct messages cycled through by the clients
BASELINE_CHUNK = 256  # messages per call of the batched pipeline
BASELINE_BATCH = 32
MATMUL_SIZE = 2048
RSS_EVERY_S = 2.0
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
GOAL_RATIO, GOAL_P95_MS, GOAL_CLIENTS = 3.0, 100.0, 8

# Made-up, deliberately neutral chat lines (the corpus is preferred when present).
NEUTRAL_MESSAGES = (
    "did you finish the maths homework yet",
    "the bus was late again this morning",
    "are you coming to practice on thursday",
    "my sister borrowed my charger and lost it",
    "that film was way too long honestly",
    "can you send me the notes from biology",
    "we are having pasta tonight i think",
    "the wifi at school is so slow today",
    "who won the match yesterday",
    "i need to walk the dog before dinner",
    "lol that meme is everywhere now",
    "what time does the library close on saturday",
    "my phone is on 3 percent brb",
    "the new level in that game is really hard",
    "did the teacher say the test is next week",
    "it is raining so much here",
    "i am going to my grandparents this weekend",
    "have you started the history project",
    "that song has been stuck in my head all day",
    "see you tomorrow at the usual place",
    "my cousin is visiting from abroad",
    "do you know how to fix a flat bike tyre",
    "i forgot my lunch again",
    "the concert tickets sold out in minutes",
)


# ------------------------------------------------------------------------------------------
# Inputs


def _clip(text: str, limit: int) -> str:
    return text[:limit] if len(text) > limit else text


def corpus_inputs(path: Path, pool: int, seed: int) -> list[dict[str, Any]]:
    """Up to ``pool`` messages of a corpus file, each with its previous messages as context."""
    from cesagram.data.schema import messages_frame, read_corpus_table

    frame = messages_frame(read_corpus_table(path)).sort_values(["conversation_id", "index"])
    items: list[dict[str, Any]] = []
    for _, conversation in frame.groupby("conversation_id", sort=False):
        authors = conversation["author"].tolist()
        texts = conversation["text"].tolist()
        for position in range(len(texts)):
            first = max(0, position - CONTEXT_MESSAGES)
            context = [{"text": texts[i], "author": authors[i]} for i in range(first, position)]
            items.append({"text": texts[position], "author": authors[position], "context": context})
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(items))[:pool]
    return [items[int(i)] for i in chosen]


def neutral_inputs(pool: int, seed: int) -> list[dict[str, Any]]:
    """``pool`` made-up neutral messages from two speakers, each with its 2 previous ones."""
    rng = np.random.default_rng(seed)
    lines = [NEUTRAL_MESSAGES[int(i)] for i in rng.integers(len(NEUTRAL_MESSAGES), size=pool + 2)]
    authors = ["u1" if i % 2 == 0 else "u2" for i in range(pool + 2)]
    return [
        {
            "text": lines[i],
            "author": authors[i],
            "context": [{"text": lines[j], "author": authors[j]} for j in range(i - 2, i)],
        }
        for i in range(2, pool + 2)
    ]


def within_limits(items: list[dict[str, Any]], settings: ServingSettings) -> list[dict[str, Any]]:
    """The items cut to the service's limits, so that no request is refused for its size."""
    limits = settings.limits

    def message(item: dict[str, Any]) -> dict[str, Any]:
        return {
            "text": _clip(item["text"], limits.max_chars_per_message),
            "author": _clip(item["author"], limits.max_author_chars),
        }

    keep = limits.max_context_messages
    return [
        {**message(item), "context": [message(c) for c in item["context"]][-keep:] if keep else []}
        for item in items
    ]


def request_bodies(items: list[dict[str, Any]], per_request: int) -> list[bytes]:
    """Serialised request bodies of ``per_request`` consecutive items (cycling), one per item."""
    stream = cycle(items)
    return [
        json.dumps({"messages": list(islice(stream, per_request))}).encode()
        for _ in range(len(items))
    ]


def rendered(items: list[dict[str, Any]], context_messages: int, prefix: str) -> list[str]:
    """The model inputs, as ``ServingRuntime.indicator_input`` renders each item."""
    texts = []
    for item in items:
        context = item["context"][-context_messages:] if context_messages else []
        texts.append(
            render_messages(
                [*(c["author"] for c in context), item["author"]],
                [*(c["text"] for c in context), item["text"]],
                prefix=prefix,
            )
        )
    return texts


# ------------------------------------------------------------------------------------------
# The server process: start, watch, stop


class ProcessTree:
    """A process and its descendants: resident memory and CPU time, with psutil or /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            import psutil

            self._psutil: Any = psutil
        except ImportError:
            self._psutil = None

    def _proc_stats(self) -> list[list[str]]:
        stats: dict[int, list[str]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    raw = (entry / "stat").read_text()
                except OSError:
                    continue
                # Fields after the command name, which may itself hold spaces and parentheses.
                stats[int(entry.name)] = raw[raw.rindex(")") + 2 :].split()
        members, frontier = [], [self.pid]
        while frontier:
            pid = frontier.pop()
            if pid in stats:
                members.append(stats[pid])
                frontier.extend(p for p, fields in stats.items() if int(fields[1]) == pid)
        return members

    def _psutil_members(self) -> list[Any]:
        try:
            root = self._psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except self._psutil.Error:
            return []

    def rss_bytes(self) -> int:
        """Resident memory of the whole tree (0 when it is gone)."""
        if self._psutil is not None:
            total = 0
            for process in self._psutil_members():
                try:
                    total += process.memory_info().rss
                except self._psutil.Error:
                    continue
            return total
        page = os.sysconf("SC_PAGE_SIZE")
        return sum(int(fields[21]) * page for fields in self._proc_stats())

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the tree's live processes so far."""
        if self._psutil is not None:
            total = 0.0
            for process in self._psutil_members():
                try:
                    times = process.cpu_times()
                except self._psutil.Error:
                    continue
                total += times.user + times.system
            return total
        ticks = os.sysconf("SC_CLK_TCK")
        return sum((int(fields[11]) + int(fields[12])) / ticks for fields in self._proc_stats())


@dataclass
class RssSampler:
    """Samples a process tree's RSS every ``every`` seconds in a background thread."""

    tree: ProcessTree
    every: float = RSS_EVERY_S
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        start = time.perf_counter()
        while True:
            self.samples.append((time.perf_counter() - start, self.tree.rss_bytes()))
            if self._stop.wait(self.every):
                self.samples.append((time.perf_counter() - start, self.tree.rss_bytes()))
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


@dataclass(frozen=True)
class Target:
    """Where to send requests, and the server's process when this machine's pid is known."""

    url: str
    headers: dict[str, str]
    pid: int | None
    log: Path | None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _log_tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _bentoml_command() -> list[str]:
    beside = Path(sys.executable).with_name("bentoml")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "bentoml"]


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(
                f"error: the service exited with code {process.returncode} before it was "
                f"ready; the end of its log ({log}):\n{_log_tail(log)}"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit(
        f"error: the service was not ready at {url}/readyz after {timeout:.0f} s "
        f"(--start-timeout); the end of its log ({log}):\n{_log_tail(log)}"
    )


@contextmanager
def started_service(
    serving_file: Path, settings: ServingSettings, start_timeout: float
) -> Iterator[Target]:
    """``bentoml serve`` on 127.0.0.1 with a free port and a fresh key; stopped on exit."""
    port = _free_port()
    key = secrets.token_urlsafe(24)
    url = f"http://127.0.0.1:{port}"
    scratch = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    log = scratch / "service.log"
    environment = {
        **os.environ,
        SERVICE_FILE_ENV: str(serving_file.resolve()),
        settings.auth.keys_env: key,
    }
    command = [
        *_bentoml_command(),
        *("serve", "serving.service:Cesagram", "--host", "127.0.0.1", "--port", str(port)),
    ]
    print(f"starting the service on {url} (log: {log}) ...", flush=True)
    began = time.perf_counter()
    with log.open("wb") as sink:
        # Its own session, so that stopping it reaches any worker it forks, and nothing else.
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(url, process, log, start_timeout)
        print(f"service ready after {time.perf_counter() - began:.1f} s", flush=True)
        yield Target(url, {settings.auth.header: key}, process.pid, log)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def existing_service(
    url: str, settings: ServingSettings, api_key: str | None, pid: int | None
) -> Iterator[Target]:
    """A service already running on this machine."""
    key = api_key or next(iter(settings.auth.keys()), None)
    if settings.auth.required and not key:
        sys.exit(f"error: no API key for {url}: pass --api-key or set {settings.auth.keys_env}")
    headers = {settings.auth.header: key} if key else {}
    try:
        ready = httpx.get(f"{url}/readyz", timeout=5.0).status_code
    except httpx.HTTPError as error:
        sys.exit(f"error: {url}/readyz: {type(error).__name__}; is the service running?")
    if ready != 200:
        sys.exit(f"error: {url}/readyz answered {ready}, expected 200")
    yield Target(url.rstrip("/"), headers, pid, None)


def backends(target: Target) -> dict[str, str]:
    """The served models' backends, from ``POST /metadata``."""
    response = httpx.post(f"{target.url}/metadata", json={}, headers=target.headers, timeout=30)
    if response.status_code in (401, 403):
        sys.exit(f"error: {target.url}/metadata answered {response.status_code}: wrong API key")
    if response.status_code != 200:
        return {"indicators": f"unknown (/metadata answered {response.status_code})"}
    models = response.json().get("models", {})
    return {task: str(models.get(task, {}).get("backend")) for task in ("indicators", "risk")}


# ------------------------------------------------------------------------------------------
# The clients


@dataclass
class Figures:
    """One row of the results table."""

    name: str
    messages: int
    requests: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int | None = None
    cores: float | None = None
    """CPU seconds per wall second of the process doing the work (the server, for the service)."""

    @property
    def messages_per_second(self) -> float:
        """Messages answered per second of the timed window."""
        return self.messages / self.seconds

    @property
    def requests_per_second(self) -> float:
        """Calls answered per second of the timed window."""
        return self.requests / self.seconds

    def latency(self, percentile: float) -> float | None:
        """A latency percentile in ms, None when there are no per-call latencies."""
        if not self.latencies_ms:
            return None
        return float(np.percentile(self.latencies_ms, percentile))


@dataclass
class LoadRun:
    """What the clients saw: the timed figures and every failure of the run."""

    figures: Figures
    sent: int
    failures: Counter[str]
    client_cores: float
    limit_hit: bool


async def _drive(
    target: Target,
    bodies: list[bytes],
    per_request: int,
    clients: int,
    warmup: float,
    duration: float,
    limit: int,
    timeout: float,
    tree: ProcessTree | None,
) -> LoadRun:
    done: list[tuple[float, float]] = []  # (sent, answered) of successful requests
    failures: Counter[str] = Counter()
    serials = count()
    server_cpu: list[float] = []
    headers = {**target.headers, "content-type": "application/json"}
    pool = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=target.url, headers=headers, limits=pool, timeout=timeout
    ) as client:
        begin = time.perf_counter()
        opens, closes = begin + warmup, begin + warmup + duration

        async def one_client() -> None:
            while (serial := next(serials)) < limit and time.perf_counter() < closes:
                sent = time.perf_counter()
                try:
                    response = await client.post(
                        "/classify_messages", content=bodies[serial % len(bodies)]
                    )
                except httpx.HTTPError as error:
                    failures[type(error).__name__] += 1
                    continue
                answered = time.perf_counter()
                if response.status_code != 200:
                    failures[f"HTTP {response.status_code}"] += 1
                    continue
                try:
                    results = response.json()
                except ValueError:
                    results = None
                if not isinstance(results, list) or len(results) != per_request:
                    failures["malformed answer"] += 1
                    continue
                done.append((sent, answered))

        async def server_clock() -> None:
            # The server's CPU time at the window's edges: how many cores it used while timed.
            for edge in (opens, closes):
                await asyncio.sleep(max(0.0, edge - time.perf_counter()))
                if tree is not None:
                    server_cpu.append(tree.cpu_seconds())

        client_cpu = time.process_time()
        clock = asyncio.ensure_future(server_clock())
        await asyncio.gather(*(one_client() for _ in range(clients)))
        window_cpu = time.process_time() - client_cpu
        clock.cancel()
    sent_total = min(next(serials), limit)
    limit_hit = sent_total >= limit
    last = max((answered for _, answered in done), default=closes)
    window_end = min(closes, last) if limit_hit else closes
    timed = [(s, a) for s, a in done if opens <= a <= window_end]
    seconds = max(window_end - opens, 1e-9)
    cores = (server_cpu[1] - server_cpu[0]) / duration if len(server_cpu) == 2 else None
    figures = Figures(
        name=f"service ({clients} clients, {per_request} msg/request)",
        messages=len(timed) * per_request,
        requests=len(timed),
        seconds=seconds,
        latencies_ms=[(a - s) * 1000 for s, a in timed],
        errors=sum(failures.values()),
        cores=cores,
    )
    return LoadRun(figures, sent_total, failures, window_cpu / (warmup + duration), limit_hit)


# ------------------------------------------------------------------------------------------
# The Hugging Face baselines


def hf_pipeline(model_dir: Path, threads: int) -> tuple[Any, Any, Any, Any]:
    """``(pipeline, classifier, tokenizer, info)``: the exported classifier in a standard
    ``TextClassificationPipeline`` (sigmoid, every label)."""
    import transformers
    from transformers import PreTrainedModel
    from transformers.modeling_outputs import SequenceClassifierOutput

    from cesagram.models.encoder_classifier import load_classifier, mean_pool

    torch.set_num_threads(threads)
    classifier, tokenizer, info = load_classifier(model_dir)

    class MeanPooledForSequenceClassification(PreTrainedModel):  # type: ignore[misc,no-untyped-call]
        """Our encoder and head behind the interface the pipeline expects (logits out)."""

        _supports_sdpa = True  # the encoder picks its own attention; this only wraps it

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.encoder = classifier.encoder
            self.head = classifier.head

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> SequenceClassifierOutput:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
            pooled = mean_pool(hidden.last_hidden_state, attention_mask)
            return SequenceClassifierOutput(logits=self.head(pooled))

    # A copy: the wrapper's init edits its config, and the encoder must keep its own.
    config: Any = copy.deepcopy(classifier.encoder.config)
    config.id2label = dict(enumerate(info.label_names))
    config.label2id = {name: index for index, name in enumerate(info.label_names)}
    config.problem_type = "multi_label_classification"
    wrapped = MeanPooledForSequenceClassification(config).eval()
    # It logs an error that the class is not a registered architecture: expected here.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity(logging.CRITICAL)
    try:
        pipe = transformers.pipeline(
            "text-classification",
            model=wrapped,
            tokenizer=tokenizer,
            function_to_apply="sigmoid",
            top_k=None,
            device="cpu",
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    return pipe, classifier, tokenizer, info


def pipeline_agreement(
    pipe: Any, classifier: Any, tokenizer: Any, info: Any, texts: list[str]
) -> float:
    """Largest difference between the pipeline's and ``predict_proba``'s probabilities."""
    from cesagram.models.encoder_classifier import predict_proba

    expected = predict_proba(classifier, tokenizer, texts, max_length=info.max_length)
    answers = pipe(texts, truncation=True, max_length=info.max_length)
    order = {name: index for index, name in enumerate(info.label_names)}
    found = np.zeros_like(expected)
    for row, labels in enumerate(answers):
        for entry in labels:
            found[row, order[entry["label"]]] = entry["score"]
    return float(np.abs(found - expected).max())


def time_one_at_a_time(
    pipe: Any, texts: list[str], max_length: int, duration: float, limit: int
) -> Figures:
    """The pipeline called once per message for ``duration`` seconds (after 5 untimed calls)."""
    stream = cycle(texts)
    with torch.inference_mode():
        for text in islice(stream, 5):
            pipe(text, truncation=True, max_length=max_length)
        latencies: list[float] = []
        cpu = time.process_time()
        start = now = time.perf_counter()
        while now - start < duration and len(latencies) < limit:
            pipe(next(stream), truncation=True, max_length=max_length)
            latencies.append((time.perf_counter() - now) * 1000)
            now = time.perf_counter()
    seconds = now - start
    return Figures(
        "HF pipeline, one message per call",
        messages=len(latencies),
        requests=len(latencies),
        seconds=seconds,
        latencies_ms=latencies,
        cores=(time.process_time() - cpu) / seconds,
    )


def time_batched(
    pipe: Any, texts: list[str], max_length: int, duration: float, limit: int
) -> Figures:
    """The pipeline called with lists of ``BASELINE_CHUNK`` messages, ``batch_size=32``."""
    stream = cycle(texts)
    options = {"batch_size": BASELINE_BATCH, "truncation": True, "max_length": max_length}
    with torch.inference_mode():
        pipe(list(islice(stream, BASELINE_CHUNK)), **options)
        calls = messages = 0
        cpu = time.process_time()
        start = now = time.perf_counter()
        while now - start < duration and messages < limit:
            messages += len(pipe(list(islice(stream, BASELINE_CHUNK)), **options))
            calls += 1
            now = time.perf_counter()
    seconds = now - start
    return Figures(
        f"HF pipeline, {BASELINE_CHUNK} per call, batch_size={BASELINE_BATCH}",
        messages=messages,
        requests=calls,
        seconds=seconds,
        cores=(time.process_time() - cpu) / seconds,
    )


# ------------------------------------------------------------------------------------------
# Efficiency


def matmul_flops(threads: int, size: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """Attainable fp32 FLOP/s: the best of ``repeats`` ``size``x``size`` matmuls."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator)
    right = torch.randn(size, size, generator=generator)
    torch.matmul(left, right)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(left, right)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


@dataclass(frozen=True)
class ModelCost:
    """The encoder's shape and the estimated FLOPs of one message."""

    layers: int
    hidden: int
    intermediate: int
    mean_tokens: float
    flops_per_message: float


def model_cost(
    encoder_dir: Path, texts: list[str], max_length: int, labels: int
) -> ModelCost | None:
    """FLOPs per message of a BERT-style encoder with a linear head, at these inputs' lengths.

    Per layer and message of ``t`` tokens: 2 x t x (4 h^2 + 2 h i) for the Q, K, V, output and
    feed-forward matmuls, plus 4 x t^2 x h for the attention scores and their mix; then
    2 x h x labels for the head. Averaged over the messages' real (unpadded) token counts.
    """
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(encoder_dir)
    shape: list[Any] = [
        getattr(config, name, None)
        for name in ("num_hidden_layers", "hidden_size", "intermediate_size")
    ]
    if not all(isinstance(value, int) for value in shape):
        return None
    layers, hidden, intermediate = (int(value) for value in shape)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    tokens = np.array(
        [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]],
        dtype=np.float64,
    )
    dense = 2 * tokens * (4 * hidden**2 + 2 * hidden * intermediate)
    attention = 4 * tokens**2 * hidden
    flops = layers * (dense + attention) + 2 * hidden * labels
    return ModelCost(layers, hidden, intermediate, float(tokens.mean()), float(flops.mean()))


# ------------------------------------------------------------------------------------------
# Report


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_table(rows: Sequence[Figures], cost: ModelCost | None, peak: float | None) -> None:
    """The figures, one row per target; the FLOP share needs the cost and the matmul peak."""
    header = (
        f"{'target':<44}{'msgs/s':>9}{'calls/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'cores':>7}{'of matmul':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        share = "-"
        if cost is not None and peak:
            share = f"{row.messages_per_second * cost.flops_per_message / peak:.1%}"
        print(
            f"{row.name:<44}{row.messages_per_second:>9.1f}{row.requests_per_second:>9.1f}"
            f"{_ms(row.latency(50)):>9}{_ms(row.latency(95)):>9}{_ms(row.latency(99)):>9}"
            f"{'-' if row.errors is None else row.errors:>8}"
            f"{'-' if row.cores is None else f'{row.cores:.2f}':>7}{share:>11}"
        )


def print_goals(service: Figures, single: Figures | None, clients: int) -> None:
    """The issue's goals beside the figures: PASS or MISS, never asserted."""

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "MISS")

    ratio = service.messages_per_second / single.messages_per_second if single else None
    p95 = service.latency(95)
    at_goal_clients = clients == GOAL_CLIENTS and p95 is not None
    rows = [
        (
            "throughput / one-at-a-time pipeline",
            "-" if ratio is None else f"{ratio:.2f}x",
            f">= {GOAL_RATIO:.0f}x",
            verdict(None if ratio is None else ratio >= GOAL_RATIO),
        ),
        ("errors", str(service.errors), "0", verdict(service.errors == 0)),
        (
            f"p95 latency at {GOAL_CLIENTS} clients",
            f"{_ms(p95)} ms" + ("" if clients == GOAL_CLIENTS else f" ({clients} clients)"),
            f"< {GOAL_P95_MS:.0f} ms",
            verdict(p95 < GOAL_P95_MS if at_goal_clients and p95 is not None else None),
        ),
    ]
    print(f"{'goal (from the issue)':<40}{'figure':>22}{'goal':>12}{'':>3}verdict")
    for name, figure, goal, mark in rows:
        print(f"{name:<40}{figure:>22}{goal:>12}{'':>3}{mark}")


def print_rss(samples: list[tuple[float, int]], series: bool) -> None:
    """RSS at the start, after the first quarter and at the end, and the growth after it."""
    samples = [(t, rss) for t, rss in samples if rss > 0]
    if len(samples) < 2:
        print("server RSS: too few samples")
        return
    mib = 1024**2
    end_time = samples[-1][0]
    quarter = min(samples, key=lambda sample: abs(sample[0] - end_time / 4))
    growth = (samples[-1][1] - quarter[1]) / quarter[1]
    print(
        f"server RSS: start {samples[0][1] / mib:.0f} MiB, after the first quarter "
        f"({quarter[0]:.0f} s) {quarter[1] / mib:.0f} MiB, end ({end_time:.0f} s) "
        f"{samples[-1][1] / mib:.0f} MiB, peak {max(r for _, r in samples) / mib:.0f} MiB; "
        f"growth after the first quarter {growth:+.1%}"
    )
    if series:
        values = " ".join(f"{rss / mib:.0f}" for _, rss in samples)
        print(f"server RSS every {RSS_EVERY_S:.0f} s (MiB): {values}")


# ------------------------------------------------------------------------------------------
# Main


def _local_url(value: str) -> str:
    parsed = urllib.parse.urlparse(value)
    if parsed.scheme not in ("http", "https") or parsed.hostname not in LOCAL_HOSTS:
        raise argparse.ArgumentTypeError(
            f"expected http://127.0.0.1:PORT or http://localhost:PORT, got {value!r}: this "
            "benchmark only loads a service on this machine"
        )
    return value.rstrip("/")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        type=_local_url,
        default=None,
        help="a running service on 127.0.0.1/localhost (default: start one)",
    )
    parser.add_argument(
        "--serving-file",
        type=Path,
        default=Path(os.environ.get(SERVICE_FILE_ENV) or ROOT / "serving" / "serving.yaml"),
        help=f"the served tags and settings (default ${SERVICE_FILE_ENV}, serving/serving.yaml)",
    )
    parser.add_argument("--api-key", default=None, help="with --url (default: the keys env var)")
    parser.add_argument("--server-pid", type=int, default=None, help="with --url: RSS and CPU")
    parser.add_argument("--clients", type=int, default=None, help="default 8, 32 with --load")
    parser.add_argument("--duration", type=float, default=None, help="timed s (30; 60 --load)")
    parser.add_argument("--warmup", type=float, default=3.0, help="untimed seconds first")
    parser.add_argument("--messages-per-request", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads, baselines")
    parser.add_argument("--skip-baseline", action="store_true", help="only the service")
    parser.add_argument(
        "--load",
        action="store_true",
        help="the bounded load test: 32 clients for 60 s, errors and server RSS, no baselines",
    )
    parser.add_argument(
        "--requests-limit",
        type=int,
        default=200_000,
        help="safety bound on requests sent (and on baseline calls)",
    )
    parser.add_argument("--corpus", type=Path, default=ROOT / "data" / "splits" / "test.parquet")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="s to wait, /readyz")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main() -> None:
    """Parse options, load the service with concurrent clients, time the baselines, report."""
    parser = _parser()
    args = parser.parse_args()
    args.clients = args.clients or (32 if args.load else 8)
    args.duration = args.duration or (60.0 if args.load else 30.0)
    if args.clients < 1 or args.duration <= 0 or args.warmup < 0 or args.requests_limit < 1:
        parser.error("--clients, --duration and --requests-limit must be positive")
    if args.clients > 256 or args.duration > 3600:
        parser.error("at most 256 clients and 3600 s: this is a bounded benchmark")
    skip_baseline = args.skip_baseline or args.load

    service: ServiceFile | None = None
    if args.serving_file.exists():
        loaded = yaml.safe_load(args.serving_file.read_text(encoding="utf-8"))
        service = validated(ServiceFile, loaded, origin=f"{args.serving_file}: ")
    elif args.url is None:
        sys.exit(
            f"error: {args.serving_file}: not found; run `cesagram bento` to write it, or pass "
            "--serving-file (or --url for a running service)"
        )
    settings = service.settings if service else ServingSettings()
    per_request = args.messages_per_request
    if not 1 <= per_request <= settings.limits.max_messages_per_request:
        parser.error(
            f"--messages-per-request must be 1..{settings.limits.max_messages_per_request} "
            "(limits.max_messages_per_request)"
        )
    threads = args.threads or settings.threads or torch.get_num_threads()

    load = os.getloadavg()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: {cores} cores usable of {os.cpu_count()}, {_cpu_model()}; load average "
        f"before start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )

    if args.corpus.exists():
        items = corpus_inputs(args.corpus, INPUT_POOL, args.seed)
        source = f"{len(items)} messages of {args.corpus}"
    else:
        items = neutral_inputs(INPUT_POOL, args.seed)
        source = f"{len(items)} made-up neutral messages ({args.corpus} not found)"
    items = within_limits(items, settings)
    print(f"inputs: {source}, each with up to {CONTEXT_MESSAGES} previous messages as context")

    # The exported model behind the indicators tag: baselines and the FLOP estimate need it.
    model_dir: Path | None = None
    if service is not None:
        import bentoml

        tag = service.models["indicators"]
        try:
            model_dir = Path(bentoml.models.get(tag).path) / "model"
        except bentoml.exceptions.NotFound:
            print(f"note: {tag} is not in this BENTOML_HOME's store: no baselines, no FLOPs")
    if model_dir is None:
        skip_baseline = True
    texts: list[str] = []
    cost: ModelCost | None = None
    peak: float | None = None
    if model_dir is not None:
        from transformers.utils import logging as hf_logging

        from cesagram.models.encoder_classifier import CLASSIFIER_FILE, ClassifierInfo

        hf_logging.disable_progress_bar()
        info = ClassifierInfo.model_validate_json((model_dir / CLASSIFIER_FILE).read_text())
        texts = rendered(items, info.context_messages or 0, info.text_prefix)
        cost = model_cost(model_dir / "encoder", texts, info.max_length, len(info.label_names))
        peak = matmul_flops(threads)

    if args.url is None:
        assert service is not None
        context = started_service(args.serving_file, settings, args.start_timeout)
    else:
        context = existing_service(args.url, settings, args.api_key, args.server_pid)
    bodies = request_bodies(items, per_request)
    with context as target:
        served = backends(target)
        tree = ProcessTree(target.pid) if target.pid is not None else None
        print(
            f"load: {args.clients} clients, {per_request} message(s)/request, "
            f"{args.warmup:.0f} s warm-up + {args.duration:.0f} s timed ...",
            flush=True,
        )
        sampler = RssSampler(tree) if tree is not None else None
        with sampler if sampler is not None else nullcontext():
            run = asyncio.run(
                _drive(
                    target,
                    bodies,
                    per_request,
                    args.clients,
                    args.warmup,
                    args.duration,
                    args.requests_limit,
                    float(settings.timeout_s + 10),
                    tree,
                )
            )
        if run.failures and target.log is not None:
            print(f"the end of the service log ({target.log}):\n{_log_tail(target.log, 15)}")

    rows = [run.figures]
    single: Figures | None = None
    gap: float | None = None
    if not skip_baseline and model_dir is not None:
        print(f"baselines: Hugging Face pipeline on {threads} threads ...", flush=True)
        pipe, classifier, tokenizer, info = hf_pipeline(model_dir, threads)
        gap = pipeline_agreement(pipe, classifier, tokenizer, info, texts[:16])
        single = time_one_at_a_time(
            pipe, texts, info.max_length, args.duration, args.requests_limit
        )
        batched = time_batched(pipe, texts, info.max_length, args.duration, args.requests_limit)
        rows += [single, batched]

    print()
    print(
        f"indicators backend: {served.get('indicators')}; service threads "
        f"{settings.threads or 'default'}, batching max {settings.batching.max_batch_size} "
        f"messages / {settings.batching.max_latency_ms} ms; baselines on {threads} torch threads"
    )
    print(
        f"{run.figures.requests} requests timed of {run.sent} sent; the clients used "
        f"{run.client_cores:.2f} cores of this machine (the service's 'cores' is its own)"
    )
    if run.limit_hit:
        print(f"warning: --requests-limit {args.requests_limit} ended the run early")
    if run.failures:
        print("failures: " + ", ".join(f"{n} x {kind}" for kind, n in run.failures.items()))
    print_table(rows, cost, peak)
    if single is not None and gap is not None:
        print(f"pipeline vs predict_proba on 16 inputs: max |difference| {gap:.1e}")
        for row in rows[1:]:
            ratio = run.figures.messages_per_second / row.messages_per_second
            print(f"ratio service / {row.name}: {ratio:.2f}x")
    print()
    print_goals(run.figures, single, args.clients)
    if cost is not None and peak is not None:
        achieved = run.figures.messages_per_second * cost.flops_per_message
        print()
        print(
            f"efficiency: fp32 matmul {MATMUL_SIZE}x{MATMUL_SIZE} on {threads} threads "
            f"{peak / 1e9:.1f} GFLOP/s (best of 5); model {cost.layers} layers, hidden "
            f"{cost.hidden}, intermediate {cost.intermediate}, {cost.mean_tokens:.1f} real "
            f"tokens/message -> {cost.flops_per_message / 1e9:.3f} GFLOP/message; the service "
            f"achieved {achieved / 1e9:.2f} GFLOP/s = {achieved / peak:.1%} of the matmul figure"
        )
    if sampler is not None:
        print_rss(sampler.samples, series=args.load)
    elif args.url is not None:
        print("server RSS: not sampled (give --server-pid with --url)")


if __name__ == "__main__":
    main()
