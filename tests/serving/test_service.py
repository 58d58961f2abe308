"""The service for real: `bentoml serve` on 127.0.0.1 with two trained tiny models, called over
raw HTTP and with BentoML's own client. The last test reads the server's log."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cesagram.data.schema import read_corpus_table
from cesagram.evaluation.conversations import conversations_by_id
from cesagram.serving.runtime import ServingRuntime, load_served_model
from cesagram.serving.schemas import Conversation, Message, MessageInput
from cesagram.serving.settings import load_service_file
from tests.serving.conftest import ExportedPair

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-api-key-0123456789abcdef"
APIS = ("classify_messages", "score_conversation", "model_card", "metadata")

pytestmark = pytest.mark.slow


@dataclass
class Server:
    """A running `bentoml serve` and every message text sent to it (for the log check)."""

    url: str
    log: Path
    process: subprocess.Popen[bytes]
    sent: set[str] = field(default_factory=set)

    def post(self, api: str, body: Any, *, key: str | None = KEY) -> httpx.Response:
        """POST a JSON body to an API, remembering its message texts."""
        self.sent.update(_texts(body))
        headers = {"X-API-Key": key} if key else {}
        return httpx.post(f"{self.url}/{api}", json=body, headers=headers, timeout=60)


def _texts(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["text"]] if isinstance(value.get("text"), str) else []
        return found + [text for item in value.values() for text in _texts(item)]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    return []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server(
    exported_pair: ExportedPair, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`bentoml serve serving.service:Cesagram` on a free loopback port, with an API key."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        **os.environ,
        "BENTOML_HOME": str(exported_pair.bentoml_home),
        "CESAGRAM_SERVING_FILE": str(exported_pair.service_file),
        "CESAGRAM_API_KEYS": f"another-key,{KEY}",
    }
    command = [
        str(Path(sys.executable).with_name("bentoml")),
        *("serve", "serving.service:Cesagram", "--host", "127.0.0.1", "--port", str(port)),
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"bentoml serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"bentoml serve not ready after 180 s:\n{log.read_text()}")
    yield Server(url=url, log=log, process=process)
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def runtime(exported_pair: ExportedPair) -> ServingRuntime:
    """The offline runtime over the same exported models: what the service must answer."""
    service = load_service_file(exported_pair.service_file)
    served = {
        task: load_served_model(
            result.path, tag=result.tag, expected_sha256=result.sha256, serving=service.settings
        )
        for task, result in exported_pair.exports.items()
    }
    return ServingRuntime(served["indicators"], served["risk"], service.settings.limits)


@pytest.fixture(scope="module")
def conversations(exported_pair: ExportedPair) -> list[list[dict[str, str]]]:
    """Test-split conversations as request bodies (authors and texts)."""
    views = conversations_by_id(read_corpus_table(exported_pair.splits_dir / "test.parquet"))
    return [
        [{"text": text, "author": author} for author, text in zip(v.authors, v.texts, strict=True)]
        for v in list(views.values())[:6]
    ]


def _message_inputs(conversations: list[list[dict[str, str]]]) -> list[dict[str, Any]]:
    items = []
    for messages in conversations[:3]:
        for index in range(min(len(messages), 6)):
            items.append({**messages[index], "context": messages[max(0, index - 3) : index]})
    return items


def test_classify_messages_equals_the_offline_runtime(
    server: Server, runtime: ServingRuntime, conversations: list[list[dict[str, str]]]
) -> None:
    body = _message_inputs(conversations)
    response = server.post("classify_messages", {"messages": body})
    assert response.status_code == 200, response.text
    served = response.json()
    expected = runtime.classify_messages([MessageInput.model_validate(item) for item in body])
    assert len(served) == len(expected) == len(body)
    names = runtime.indicators.settings["label_names"]
    for got, want in zip(served, expected, strict=True):
        assert list(got["probabilities"]) == names
        np.testing.assert_allclose(
            [got["probabilities"][name] for name in names],
            [want.probabilities[name] for name in names],
            atol=1e-5,
        )
        assert got["indicators"] == want.indicators
        assert got["any_indicator"] == want.any_indicator


def test_score_conversation_equals_the_offline_runtime_with_evidence(
    server: Server, runtime: ServingRuntime, conversations: list[list[dict[str, str]]]
) -> None:
    for messages in conversations[:3]:
        response = server.post("score_conversation", {"messages": messages, "language": "en"})
        assert response.status_code == 200, response.text
        got = response.json()
        want = runtime.score_conversation(
            Conversation(messages=[Message.model_validate(m) for m in messages], language="en")
        )
        assert got["calibration"] == want.calibration  # "en" when evaluated per language
        np.testing.assert_allclose(got["risk"], want.risk, atol=1e-5)
        assert len(got["risk"]) == len(messages)
        assert got["warning"] == want.warning.model_dump()
        assert got["peak_index"] == want.peak_index
        assert [e["message_index"] for e in got["evidence"]] == [
            e.message_index for e in want.evidence
        ]
        assert 1 <= len(got["evidence"]) <= runtime.limits.evidence_messages
        assert all("text" not in evidence for evidence in got["evidence"])  # indices only


def test_bentoml_client_gets_the_same_answers(
    server: Server, runtime: ServingRuntime, conversations: list[list[dict[str, str]]]
) -> None:
    import bentoml

    body = _message_inputs(conversations)[:4]
    server.sent.update(_texts(body))
    with bentoml.SyncHTTPClient(server.url, token=KEY) as client:
        served = client.classify_messages(messages=body)
        scored = client.score_conversation(messages=conversations[0])
        metadata = client.metadata()
        card = client.model_card()
    expected = runtime.classify_messages([MessageInput.model_validate(item) for item in body])
    assert [item["indicators"] for item in served] == [item.indicators for item in expected]
    want = runtime.score_conversation(
        Conversation(messages=[Message.model_validate(m) for m in conversations[0]])
    )
    np.testing.assert_allclose(scored["risk"], want.risk, atol=1e-5)
    models = metadata["models"]
    assert models["risk"]["model_sha256"] == runtime.risk.settings["model_sha256"]
    assert models["indicators"]["mlflow_run_id"] == runtime.indicators.settings["mlflow_run_id"]
    assert models["risk"]["thresholds"] == pytest.approx(runtime.risk.describe()["thresholds"])
    assert metadata["limits"]["max_chars_per_message"] == runtime.limits.max_chars_per_message
    assert runtime.risk.settings["mlflow_run_id"] in card
    assert runtime.indicators.settings["mlflow_run_id"] in card


@pytest.mark.parametrize("api", APIS)
def test_every_api_needs_a_valid_key(server: Server, api: str) -> None:
    body: dict[str, Any] = {}
    if api == "classify_messages":
        body = {"messages": [{"text": "hello there"}]}
    elif api == "score_conversation":
        body = {"messages": [{"text": "hello there", "author": "a"}]}
    assert server.post(api, body, key=None).status_code == 401
    assert server.post(api, body, key="wrong-key").status_code == 401
    assert server.post(api, body).status_code == 200
    bearer = httpx.post(
        f"{server.url}/{api}", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    )
    assert bearer.status_code == 200


def test_probes_and_metrics_stay_open(server: Server) -> None:
    for path in ("/livez", "/readyz", "/metrics", "/docs.json"):
        assert httpx.get(f"{server.url}{path}", timeout=10).status_code == 200, path


LIMIT_CASES = {
    "max_chars_per_message": ("classify_messages", {"messages": [{"text": "word " * 500}]}),
    "max_messages_per_request": (
        "classify_messages",
        {"messages": [{"text": f"hi {i}"} for i in range(65)]},
    ),
    "max_context_messages": (
        "classify_messages",
        {"messages": [{"text": "hi", "context": [{"text": "yo"}] * 21}]},
    ),
    "max_conversation_messages": (
        "score_conversation",
        {"messages": [{"text": "hi", "author": "a"}] * 501},
    ),
    "max_author_chars": ("score_conversation", {"messages": [{"text": "hi", "author": "a" * 65}]}),
}


@pytest.mark.parametrize("setting", sorted(LIMIT_CASES))
def test_every_limit_gives_400_naming_its_setting(server: Server, setting: str) -> None:
    api, body = LIMIT_CASES[setting]
    response = server.post(api, body)
    assert response.status_code == 400
    assert f"limits.{setting}" in response.text
    assert "word word" not in response.text  # the input is never echoed


@pytest.mark.parametrize("media_type", ["multipart/form-data", "text/plain", "application/xml"])
def test_bodies_other_than_json_get_415(server: Server, media_type: str) -> None:
    response = httpx.post(
        f"{server.url}/classify_messages",
        content=b'{"messages": []}',
        headers={"X-API-Key": KEY, "Content-Type": media_type},
        timeout=30,
    )
    assert response.status_code == 415, response.text


def test_concurrent_requests_are_batched(server: Server) -> None:
    """Bursts of simultaneous requests; the service's own histogram records merged batches."""

    def call(index: int) -> int:
        body = {"messages": [{"text": f"message number {index}", "author": "u1"}]}
        return server.post("classify_messages", body).status_code

    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
            statuses = list(pool.map(call, range(24)))
        assert statuses == [200] * 24
    from prometheus_client.parser import text_string_to_metric_families

    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    samples = [
        sample
        for family in text_string_to_metric_families(metrics)
        if family.name == "bentoml_service_adaptive_batch_size"
        for sample in family.samples
        if sample.labels.get("method_name") == "classify_messages"
    ]
    count = sum(s.value for s in samples if s.name.endswith("_count"))
    of_one = sum(s.value for s in samples if s.name.endswith("_bucket") and s.labels["le"] == "1.0")
    assert count > 0, "the service exports no adaptive batch size histogram"
    assert count > of_one, f"all {count:.0f} batches held a single request"


def test_schemathesis_finds_no_server_error(server: Server, tmp_path: Path) -> None:
    """Property-based fuzzing of every operation in the service's own OpenAPI schema."""
    report = tmp_path / "schemathesis.txt"
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            *("run", f"{server.url}/docs.json", "--checks", "not_a_server_error"),
            *("-H", f"X-API-Key: {KEY}", "--max-examples", "25", "--seed", "1"),
            *("--phases", "examples,coverage,fuzzing", "--workers", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-3000:]
    tested = re.search(r"Tested: (\d+)", result.stdout)
    cases = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert tested and int(tested.group(1)) >= len(APIS), result.stdout[-1500:]
    assert cases and int(cases.group(1)) == int(cases.group(2)) >= 50, result.stdout[-1500:]


def test_no_message_text_reaches_the_server_log(server: Server) -> None:
    """Runs last: after valid, rejected and malformed requests, the log holds no message."""
    marker = "zebra-quartz-marker"
    server.post("classify_messages", {"messages": [{"text": f"{marker} " * 600}]})
    server.post("score_conversation", {"messages": [{"text": marker, "author": "x" * 99}]})
    server.post("classify_messages", {"messages": [{"text": marker, "extra": 1}]})
    httpx.post(
        f"{server.url}/classify_messages",
        content=f'{{"messages": [{{"text": "{marker}"',
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        timeout=30,
    )
    server.sent.add(marker)
    time.sleep(1)
    log = server.log.read_text(errors="replace")
    assert "/classify_messages" in log  # the log is the server's access log
    leaked = sorted(text for text in server.sent if len(text) >= 8 and text in log)
    assert not leaked, f"{len(leaked)} message texts found in the server log"
