"""stream_call against real localhost servers: the mock backend (OpenAI SSE, Ollama NDJSON) and a
tiny Anthropic Messages server; every failure translated into turnout's BackendError types."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from turnout.backends.streaming import (
    OllamaTranslator,
    SseParser,
    accumulate,
    chunks_from_response,
    stream_call,
)
from turnout.config import Backend, Secret
from turnout.errors import (
    BackendProtocolError,
    BackendStatusError,
    BackendTimeout,
    BackendUnavailable,
)
from turnout.testing.mock_backend import MockOptions
from turnout.testing.mock_backend import start as start_mock

CHAT = {"model": "alias", "messages": [{"role": "user", "content": "hello there world"}]}
KEY = "sk-test-stream"


@pytest.fixture
async def mock() -> AsyncIterator[str]:
    runner, url = await start_mock(MockOptions(port=0, seed=1))
    yield url
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def backend(url: str, protocol: Any = "openai") -> Backend:
    return Backend(id="b1", protocol=protocol, base_url=url, models=["echo"])


async def collect(
    session: aiohttp.ClientSession,
    b: Backend,
    kind: Any = "chat",
    body: dict[str, Any] = CHAT,
    timeout_s: float = 5.0,
    keys: dict[str, Secret] | None = None,
) -> list[dict[str, Any]]:
    stream = stream_call(
        session, b, keys or {}, kind=kind, model="echo", body=body, timeout_s=timeout_s
    )
    return [chunk async for chunk in stream]


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
async def test_chat_streams_as_chat_completion_chunks(
    mock: str, session: aiohttp.ClientSession, protocol: str
) -> None:
    """Several chunks that add up to the echo answer, the last with a finish reason."""
    chunks = await collect(session, backend(mock, protocol))
    assert len(chunks) > 2
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    whole = accumulate("chat", chunks)
    assert whole["choices"][0]["message"]["content"] == "echo: hello there world"
    assert whole["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
async def test_completion_streams_as_text_completion_chunks(
    mock: str, session: aiohttp.ClientSession, protocol: str
) -> None:
    """A completion's chunks carry text, and add up to the echo of the prompt."""
    chunks = await collect(session, backend(mock, protocol), "completion", {"prompt": "a b c"})
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert accumulate("completion", chunks)["choices"][0]["text"] == "echo: a b c"


async def test_ollama_stream_reports_usage_and_length(
    mock: str, session: aiohttp.ClientSession
) -> None:
    """max_tokens cuts the answer: finish reason length, usage from the done line."""
    body = {**CHAT, "max_tokens": 2}
    chunks = await collect(session, backend(mock, "ollama"), body=body)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


async def test_openai_stream_options_are_forwarded(
    mock: str, session: aiohttp.ClientSession
) -> None:
    """include_usage asks the backend for its usage chunk (choices empty)."""
    body = {**CHAT, "stream_options": {"include_usage": True}}
    chunks = await collect(session, backend(mock), body=body)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 3


async def test_the_api_key_is_sent(mock: str, session: aiohttp.ClientSession) -> None:
    """A backend that requires a key accepts the stream when the key is configured."""
    async with session.post(f"{mock}/admin/config", json={"api_key": KEY}) as r:
        assert r.status == 200
    chunks = await collect(session, backend(mock), keys={"b1": Secret(KEY)})
    assert chunks
    with pytest.raises(BackendStatusError) as info:
        await collect(session, backend(mock))
    assert info.value.status == 401 and not info.value.retryable


async def test_an_error_status_is_a_backend_status_error(
    mock: str, session: aiohttp.ClientSession
) -> None:
    """A 503 before the stream starts: retryable BackendStatusError with the status."""
    async with session.post(f"{mock}/admin/config", json={"error_rate": 1, "status": 503}) as r:
        assert r.status == 200
    with pytest.raises(BackendStatusError) as info:
        await collect(session, backend(mock, "ollama"))
    assert info.value.status == 503 and info.value.retryable


async def test_a_malformed_answer_is_a_protocol_error(
    mock: str, session: aiohttp.ClientSession
) -> None:
    """A 200 whose body is cut-short JSON: BackendProtocolError."""
    async with session.post(f"{mock}/admin/config", json={"malformed_rate": 1}) as r:
        assert r.status == 200
    with pytest.raises(BackendProtocolError):
        await collect(session, backend(mock))


async def test_a_hang_is_a_timeout(mock: str, session: aiohttp.ClientSession) -> None:
    """No answer within timeout_s: BackendTimeout, after about timeout_s."""
    async with session.post(f"{mock}/admin/config", json={"hang_rate": 1}) as r:
        assert r.status == 200
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BackendTimeout, match="b1"):
        await collect(session, backend(mock), timeout_s=0.3)
    assert 0.25 < loop.time() - started < 2


async def test_a_closed_port_is_unavailable(session: aiohttp.ClientSession) -> None:
    """Connection refused: BackendUnavailable naming the backend, not its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendUnavailable) as info:
        await collect(session, backend(f"http://127.0.0.1:{port}"))
    assert "b1" in info.value.message and str(port) not in info.value.message


async def test_embeddings_do_not_stream(mock: str, session: aiohttp.ClientSession) -> None:
    """Asking to stream embeddings is a programming error."""
    with pytest.raises(ValueError, match="embeddings"):
        await collect(session, backend(mock), "embeddings", {"input": "x"})


# -- servers written for these tests -----------------------------------------------------------


async def serve(handler: Callable[[web.Request], Any]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def anthropic_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    words = text.split(" ")
    out: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 3}},
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    for i, w in enumerate(words):
        piece = w if i == 0 else " " + w
        delta = {"type": "text_delta", "text": piece}
        out.append(("content_block_delta", {"type": "content_block_delta", "delta": delta}))
    out += [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": len(words)},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return out


SEEN: list[dict[str, Any]] = []


async def anthropic_handler(request: web.Request) -> web.StreamResponse:
    """A tiny Anthropic Messages server: checks the headers, echoes the last user message."""
    seen = SEEN
    body = await request.json()
    seen.append({"headers": dict(request.headers), "body": body})
    if request.headers.get("x-api-key") != KEY or "anthropic-version" not in request.headers:
        error = {"type": "error", "error": {"type": "authentication_error", "message": "no"}}
        return web.json_response(error, status=401)
    text = "echo: " + body["messages"][-1]["content"]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for event, data in anthropic_events(text):
        await response.write(f"event: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n")
    return response


async def test_anthropic_streams_through_its_event_protocol(
    session: aiohttp.ClientSession,
) -> None:
    """x-api-key and anthropic-version are sent; events become chunks with usage."""
    runner, url = await serve(anthropic_handler)
    try:
        b = backend(url, "anthropic")
        body = {"messages": [{"role": "system", "content": "s"}, *CHAT["messages"]]}
        chunks = await collect(session, b, body=body, keys={"b1": Secret(KEY)})
        whole = accumulate("chat", chunks)
        assert whole["choices"][0]["message"]["content"] == "echo: hello there world"
        assert chunks[-1]["usage"] == {
            "prompt_tokens": 3,
            "completion_tokens": 4,
            "total_tokens": 7,
        }
        sent = SEEN[-1]
        assert sent["body"]["system"] == "s" and sent["body"]["stream"] is True
        assert sent["body"]["max_tokens"] == 1024
        with pytest.raises(BackendStatusError) as info:
            await collect(session, b, body=body)  # no key
        assert info.value.status == 401
    finally:
        await runner.cleanup()


async def test_a_stream_cut_short_is_a_protocol_error(session: aiohttp.ClientSession) -> None:
    """SSE that stops before [DONE] or a finish reason: the answer is incomplete."""

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "par"}, "finish_reason": None}]}
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        return response

    runner, url = await serve(cut)
    try:
        with pytest.raises(BackendProtocolError, match="incomplete"):
            await collect(session, backend(url))
    finally:
        await runner.cleanup()


async def test_done_before_a_finish_reason_is_a_protocol_error(
    session: aiohttp.ClientSession,
) -> None:
    """[DONE] mid-answer (llama-cpp-python interrupting a stream) is not a complete answer."""

    async def interrupted(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "par"}, "finish_reason": None}]}
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    runner, url = await serve(interrupted)
    try:
        with pytest.raises(BackendProtocolError, match="before any choice had a finish_reason"):
            await collect(session, backend(url))
    finally:
        await runner.cleanup()


async def test_an_error_event_mid_stream_is_a_status_error(
    session: aiohttp.ClientSession,
) -> None:
    """An OpenAI-style error event after some chunks: retryable BackendStatusError."""

    async def fail(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await response.write(b'data: {"error": {"type": "server_error", "message": "x"}}\n\n')
        return response

    runner, url = await serve(fail)
    try:
        with pytest.raises(BackendStatusError) as info:
            await collect(session, backend(url))
        assert info.value.retryable and "server_error" in info.value.message
    finally:
        await runner.cleanup()


async def test_a_backend_that_ignores_stream_is_read_whole(
    session: aiohttp.ClientSession,
) -> None:
    """A plain JSON answer to a stream request still yields chunks."""
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "whole"},
                "finish_reason": "stop",
            }
        ],
    }

    async def plain(request: web.Request) -> web.Response:
        return web.json_response(answer)

    runner, url = await serve(plain)
    try:
        chunks = await collect(session, backend(url))
        assert accumulate("chat", chunks)["choices"][0]["message"]["content"] == "whole"
    finally:
        await runner.cleanup()


# -- the pure pieces ---------------------------------------------------------------------------


def test_sse_parser_joins_data_lines_and_keeps_event_names() -> None:
    """Multi-line data joins with newlines; comments are skipped; a blank line ends an event."""
    p = SseParser()
    lines = [b": comment\n", b"event: x\n", b"data: a\n", b"data:b\r\n", b"\n", b"data: c\n"]
    out = [e for line in lines if (e := p.feed(line)) is not None]
    assert out == [("x", "a\nb")]
    assert p.flush() == ("", "c")


def test_ollama_translator_emits_role_first_and_usage_last() -> None:
    """Role on the first chunk, text deltas, and a finish chunk with usage on done."""
    t = OllamaTranslator("chat", "b1")
    lines = [
        {
            "model": "m",
            "created_at": "2024-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "Hi"},
            "done": False,
        },
        {
            "model": "m",
            "created_at": "2024-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 2,
            "eval_count": 1,
        },
    ]
    chunks = [c for line in lines for c in t.feed(line)]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "Hi"},
        {},
    ]
    assert chunks[-1]["usage"]["total_tokens"] == 3
    assert chunks[0]["created"] == 1704067200
    assert t.done


def test_ollama_translator_raises_on_an_error_line() -> None:
    """{"error": ...} mid-stream: BackendStatusError."""
    with pytest.raises(BackendStatusError):
        OllamaTranslator("chat", "b1").feed({"error": "model crashed"})


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_chunks_from_response_and_accumulate_are_inverse(kind: Any) -> None:
    """A whole answer turned into chunks adds back up to the same text, finish and usage."""
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    choice: dict[str, Any] = (
        {"message": {"role": "assistant", "content": "a b"}}
        if kind == "chat"
        else {"text": "a b", "logprobs": None}
    )
    whole = {
        "id": "x",
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": 5,
        "model": "m",
        "choices": [{"index": 0, **choice, "finish_reason": "length"}],
        "usage": usage,
    }
    assert accumulate(kind, chunks_from_response(kind, whole)) == whole


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
async def test_vary_makes_every_call_answer_differently(
    session: aiohttp.ClientSession, protocol: str
) -> None:
    """With --vary two calls of the same request get two different answers, streamed or not."""
    runner, url = await start_mock(MockOptions(port=0, vary=True, chunk_delay_ms=5))
    try:
        b = backend(url, protocol)
        texts = []
        for _ in range(2):
            chunks = await collect(session, b)
            texts.append(accumulate("chat", chunks)["choices"][0]["message"]["content"])
        assert texts == ["echo:~1 hello~1 there~1 world~1", "echo:~2 hello~2 there~2 world~2"]
    finally:
        await runner.cleanup()


def test_vary_and_chunk_delay_are_runtime_options() -> None:
    """Both can be set on the command line and changed live; wrong types are refused."""
    from turnout.testing.mock_backend import parse_args

    options = parse_args(["--vary", "--chunk-delay-ms", "20"])
    assert options.vary and options.chunk_delay_ms == 20.0
    assert not options.changed({"vary": False}).vary
    with pytest.raises(ValueError, match="vary"):
        options.changed({"vary": "yes"})
