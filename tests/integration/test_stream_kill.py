"""A stream across a worker kill: one clean whole answer, or an explicit error; never a splice.

The mock backend answers differently on every call (``--vary``: every word carries the
call's number, "echo:~3 w0~3 ..."), so a stream that mixed two serves of one request
would show two numbers.
"""

import asyncio
import re
import time

import aiohttp
import orjson

from tests.integration.harness import GatewayProcess, config_for, unique

WORDS = " ".join(f"w{i}" for i in range(30))
CALL = re.compile(r"~(\d+)")


def answer_of(call: str) -> str:
    return " ".join(f"{w}~{call}" for w in f"echo: {WORDS}".split(" "))


async def read_sse(response: aiohttp.ClientResponse, out: list[dict], done: asyncio.Event) -> None:
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[len(b"data: ") :]
        if data == b"[DONE]":
            break
        out.append(orjson.loads(data))
    done.set()


async def read_ndjson(pending, out: list[dict]) -> None:
    response = await pending  # the gateway answers with its first line
    async for raw in response.content:
        if raw.strip():
            out.append(orjson.loads(raw))


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_stream_across_a_worker_kill_is_whole_or_an_explicit_error(spawn, names, tmp_path):
    """kill -9 mid-stream, a second worker re-serves: no client ever gets two serves mixed."""
    backend = spawn.backend("--vary", "--chunk-delay-ms", "150")
    config = config_for(
        ("mock-openai", "openai", backend.url), ("mock-ollama", "ollama", backend.url)
    )
    quiet = {"TURNOUT_PROBE_INTERVAL_S": "3600"}  # backend calls are then all requests
    first = spawn.worker(
        config, app_id=names.app_id, request_topic=names.request_topic, name="w1", extra_env=quiet
    )
    gateway = GatewayProcess(
        tmp_path,
        config_path=first.config_path,
        request_topic=names.request_topic,
        gateway_id=unique("gw"),
    )
    try:
        async with aiohttp.ClientSession() as http:
            # Stream A (OpenAI SSE): chunks of the first serve reach the client.
            sse = await http.post(
                f"{gateway.url}/v1/chat/completions?timeout=120",
                json={
                    "model": "default",
                    "stream": True,
                    "messages": [{"role": "user", "content": WORDS}],
                },
            )
            assert sse.status == 200
            sse_request_id = sse.headers["X-Request-Id"]
            sse_events: list[dict] = []
            sse_done = asyncio.Event()
            sse_task = asyncio.create_task(read_sse(sse, sse_events, sse_done))
            await wait_for(lambda: len(sse_events) >= 3, 60, "the first chunks of stream A")

            # Stream B (Ollama NDJSON): its first serve never sends a chunk (the backend hangs).
            backend.configure(latency_ms=600_000)
            calls_before = backend.stats()["requests"]
            nd = http.post(
                f"{gateway.url}/api/chat?timeout=120",
                json={"model": "default", "messages": [{"role": "user", "content": WORDS}]},
            )
            nd_lines: list[dict] = []
            nd_task = asyncio.create_task(read_ndjson(nd, nd_lines))
            await wait_for(
                lambda: backend.stats()["requests"] > calls_before,
                60,
                "stream B to reach the backend",
            )
            assert not sse_done.is_set(), "stream A ended before the kill: slow the mock down"

            first.kill()  # SIGKILL mid-stream
            backend.configure(latency_ms=0)
            spawn.worker(
                config, app_id=names.app_id, request_topic=names.request_topic, name="w2",
                extra_env=quiet,
            )  # fmt: skip
            await asyncio.wait_for(asyncio.gather(sse_task, nd_task), 120)
    finally:
        gateway.stop()

    # A: the client had chunks of the first serve; the stream ends with an error naming the id.
    content = [e for e in sse_events if "choices" in e]
    errors = [e for e in sse_events if "error" in e]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in content if c["choices"])
    print(f"stream A: {len(content)} chunks, {len(errors)} error events: {text[:40]!r}...")
    assert len(set(CALL.findall(text))) == 1, f"stream A mixes serves: {text!r}"
    assert errors, f"stream A ended without an error event after the kill: {text!r}"
    assert sse_events[-1] is errors[-1], "content followed the error event"
    (err,) = errors
    assert err["error"]["code"] == "stream_restarted"
    assert sse_request_id in err["error"]["message"]
    # The partial answer is a prefix of one serve's answer, never another's continuation.
    (call,) = set(CALL.findall(text))
    assert answer_of(call).startswith(text)

    # B: nothing reached the client before the kill, so the second serve streams cleanly.
    assert nd_lines and all("error" not in line for line in nd_lines), nd_lines[-1:]
    assert nd_lines[-1]["done"] is True
    answer = "".join(line["message"]["content"] for line in nd_lines)
    calls = set(CALL.findall(answer))
    assert len(calls) == 1, f"stream B mixes serves: {answer!r}"
    assert answer == answer_of(calls.pop())
    print(f"stream B: {len(nd_lines)} lines, one serve: {answer[:30]!r}...")
