"""A fake LLM server speaking OpenAI and Ollama over real HTTP, for tests, the demo and benchmarks.

    turnout mock-backend --port 8001 --latency-ms 50 --error-rate 0.1

Answers are deterministic (``"echo: <last user message>"``, hash-derived vectors; see
``turnout.testing.fake``), unless ``--vary`` makes every call's answer different: each
word carries the call's number (``"echo:~7 hi~7"``), so a request served twice gets two
answers that differ in every chunk, which is what shows a spliced stream.
``--chunk-delay-ms`` spreads a streamed answer out.
Faults are drawn per request from a seeded RNG: latency, an error status, a hang (no
answer until the client gives up) or a malformed body.
``GET /stats`` counts requests; ``POST /admin/config`` changes the options at runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from aiohttp import web

from schemas.types import Kind
from turnout.testing import mock_tools
from turnout.testing.fake import (
    count_words,
    echo_content,
    embedding_inputs,
    limit_words,
    openai_response,
    prompt_words,
    vector,
)

Wire = Literal["openai", "ollama", "anthropic"]
_DESCRIPTION = "A fake LLM server speaking OpenAI and Ollama, for tests, demos and benchmarks."
_MALFORMED = b'{"choices": [{"message": '  # a 200 whose body is cut short


@dataclass(frozen=True, slots=True)
class MockOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rate: float = 0.0
    """Share of requests answered with ``status`` and a JSON error."""
    status: int = 500
    """The status of injected errors; 429 also sends ``Retry-After: 1``."""
    hang_rate: float = 0.0
    """Share of requests never answered (until the client gives up or the server stops)."""
    malformed_rate: float = 0.0
    """Share of requests answered 200 with a body that is not valid JSON."""
    stall_after_chunks: float = 0
    """Streams (OpenAI SSE, Ollama NDJSON) pause after this many chunks; 0 never pauses."""
    stall_ms: float = 0.0
    """How long a stream pauses; 0 pauses until the server stops (a wedged stream)."""
    seed: int | None = None
    models: tuple[str, ...] = ("echo", "embed")
    api_key: str | None = None
    """When set, requests without ``Authorization: Bearer <api_key>`` get 401."""
    prefix_cache: bool = False
    """Model a prefix cache (OpenAI chat): the longest message prefix this process has
    seen before is reported as ``usage.prompt_tokens_details.cached_tokens``."""
    vary: bool = False
    """Every call's answer differs: each word ends with ``~N``, N counting calls."""
    chunk_delay_ms: float = 0.0
    """Pause before each chunk of a streamed answer."""

    def changed(self, updates: Mapping[str, Any]) -> MockOptions:
        """A copy with ``updates`` (field names, ``-`` or ``_``) applied; ValueError if invalid."""
        known = {f.name for f in fields(self)} - {"host", "port"}
        values: dict[str, Any] = {}
        for raw_name, value in updates.items():
            name = raw_name.replace("-", "_")
            if name not in known:
                raise ValueError(f"{raw_name!r} is not a runtime option (known: {sorted(known)})")
            values[name] = _coerce(name, value)
        return replace(self, **values)


def _coerce(name: str, value: Any) -> Any:
    if name == "models":
        models = value.split(",") if isinstance(value, str) else value
        if not isinstance(models, list | tuple) or not all(isinstance(m, str) for m in models):
            raise ValueError("models: expected a list of names or a comma-separated string")
        return tuple(m.strip() for m in models if m.strip())
    if name == "prefix_cache":
        if not isinstance(value, bool):
            raise ValueError(f"prefix_cache: expected true or false, got {value!r}")
        return value
    if name == "vary":
        if not isinstance(value, bool):
            raise ValueError(f"vary: expected true or false, got {value!r}")
        return value
    if name in ("seed", "api_key"):
        kind = int if name == "seed" else str
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"{name}: expected {kind.__name__} or null, got {value!r}")
        return value
    if name == "status":
        if not isinstance(value, int) or not 100 <= value <= 599:
            raise ValueError(f"status: expected an HTTP status 100-599, got {value!r}")
        return value
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    if name.endswith("_rate") and value > 1:
        raise ValueError(f"{name}: expected a share between 0 and 1, got {value!r}")
    return float(value)


class MockState:
    """The mock's options, RNG and counters; one per app."""

    def __init__(self, options: MockOptions) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.in_flight_by_route: Counter[str] = Counter()
        self.max_in_flight_by_route: Counter[str] = Counter()
        """Most calls at once per path: inference alone, without health probes' calls."""
        self.by_route: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.prefixes: OrderedDict[bytes, None] = OrderedDict()
        self.traceparents: deque[str] = deque(maxlen=100)
        """The ``traceparent`` headers of the last calls (tracing tests read them)."""
        self.stopping = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"<MockState requests={self.requests} in_flight={self.in_flight} "
            f"max_in_flight={self.max_in_flight}>"
        )

    def configure(self, options: MockOptions) -> None:
        if options.seed != self.options.seed:
            self.rng = random.Random(options.seed)
        self.options = options

    def cached_words(self, messages: list[Any], limit: int = 10_000) -> int:
        """The prompt words of the longest prefix of ``messages`` seen before; then
        remember every prefix of them (least recently used ones fall out)."""
        keys = [orjson.dumps(messages[:i]) for i in range(1, len(messages) + 1)]
        hit = next((i for i in range(len(keys), 0, -1) if keys[i - 1] in self.prefixes), 0)
        for k in keys:
            self.prefixes[k] = None
            self.prefixes.move_to_end(k)
        while len(self.prefixes) > limit:
            self.prefixes.popitem(last=False)
        return prompt_words("chat", {"messages": messages[:hit]}) if hit else 0

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "max_in_flight_by_route": dict(self.max_in_flight_by_route),
            "by_route": dict(self.by_route),
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "traceparents": list(self.traceparents),
        }


STATE = web.AppKey("state", MockState)
_INFERENCE_ROUTES: tuple[tuple[str, Wire, Kind], ...] = (
    ("/v1/chat/completions", "openai", "chat"),
    ("/v1/completions", "openai", "completion"),
    ("/v1/embeddings", "openai", "embeddings"),
    ("/api/chat", "ollama", "chat"),
    ("/api/generate", "ollama", "completion"),
    ("/api/embed", "ollama", "embeddings"),
    ("/api/embeddings", "ollama", "embeddings"),  # the older one-input endpoint
)


def build_app(options: MockOptions) -> web.Application:
    """The mock server's application; run it with ``start`` or an ``AppRunner`` of your own."""
    app = web.Application()
    app[STATE] = MockState(options)
    for path, wire, kind in _INFERENCE_ROUTES:
        app.router.add_post(path, _backend_route(wire, _inference(wire, kind)))
    app.router.add_post("/v1/messages", _backend_route("anthropic", _anthropic_messages))
    app.router.add_get("/v1/models", _backend_route("openai", _openai_models))
    app.router.add_get("/api/tags", _backend_route("ollama", _ollama_tags))
    app.router.add_get("/api/version", _backend_route("ollama", _ollama_version))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/stats", _stats)
    app.router.add_post("/admin/config", _admin_config)
    app.on_shutdown.append(_release_hung)
    return app


# -- the fault layer, around every backend route ---------------------------------------------

Handler = Callable[[web.Request, "MockState"], Awaitable[web.StreamResponse]]


def _backend_route(
    wire: Wire, handler: Handler
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def route(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        state.requests += 1
        state.by_route[request.path] += 1
        if request.headers.get("traceparent"):
            state.traceparents.append(request.headers["traceparent"])
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        path = request.path
        state.in_flight_by_route[path] += 1
        state.max_in_flight_by_route[path] = max(
            state.max_in_flight_by_route[path], state.in_flight_by_route[path]
        )
        try:
            response = await _faulty(request, state, wire, handler)
            state.by_status[response.status] += 1
            return response
        finally:
            state.in_flight -= 1
            state.in_flight_by_route[path] -= 1

    return route


async def _faulty(
    request: web.Request, state: MockState, wire: Wire, handler: Handler
) -> web.StreamResponse:
    o = state.options
    given = (
        request.headers.get("x-api-key")
        if wire == "anthropic"
        else (request.headers.get("Authorization") or "").removeprefix("Bearer ")
    )
    if o.api_key is not None and given != o.api_key:
        return _error(wire, 401, "missing or wrong API key", "invalid_api_key")
    jitter_ms = state.rng.uniform(0, o.latency_jitter_ms) if o.latency_jitter_ms else 0.0
    delay_ms = o.latency_ms + jitter_ms
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)
    if o.hang_rate and state.rng.random() < o.hang_rate:
        await state.stopping.wait()
        return _error(wire, 503, "the mock backend is stopping", "stopping")
    if o.error_rate and state.rng.random() < o.error_rate:
        response = _error(wire, o.status, "injected failure", "injected")
        if o.status == 429:
            response.headers["Retry-After"] = "1"
        return response
    if o.malformed_rate and state.rng.random() < o.malformed_rate:
        return web.Response(body=_MALFORMED, content_type="application/json")
    return await handler(request, state)


def _error(wire: Wire, status: int, message: str, code: str) -> web.Response:
    if wire == "ollama":
        return _json({"error": message}, status)
    if wire == "anthropic":
        kind = "api_error" if status >= 500 else "invalid_request_error"
        return _json({"type": "error", "error": {"type": kind, "message": message}}, status)
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return _json({"error": {"message": message, "type": kind, "param": None, "code": code}}, status)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


async def _release_hung(app: web.Application) -> None:
    app[STATE].stopping.set()


# -- the answers ------------------------------------------------------------------------------


def _inference(wire: Wire, kind: Kind) -> Handler:
    async def handle(request: web.Request, state: MockState) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(wire, 400, "the request body is not JSON", "invalid_json")
        if not isinstance(body, dict):
            return _error(wire, 400, "the request body is not a JSON object", "invalid_json")
        model = body.get("model")
        if model not in state.options.models:
            return _error(wire, 404, f"model '{model}' not found", "model_not_found")
        plan = mock_tools.tool_call(wire, body) if kind == "chat" else None
        result = mock_tools.tool_result(wire, body) if kind == "chat" else None
        call = state.requests if state.options.vary else None
        if wire == "openai":
            answer = openai_response(kind, model, body, created=int(time.time()))
            if call is not None and kind != "embeddings":
                choice = answer["choices"][0]
                if kind == "chat":
                    choice["message"]["content"] = _varied(choice["message"]["content"], call)
                else:
                    choice["text"] = _varied(choice["text"], call)
            if result is not None:
                answer["choices"][0]["message"]["content"] = f"tool result: {result}"
            if plan is not None:
                answer["choices"][0]["message"] = mock_tools.openai_message(*plan)
                answer["choices"][0]["finish_reason"] = "tool_calls"
            if state.options.prefix_cache and kind == "chat":
                cached = state.cached_words(body.get("messages") or [])
                answer["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
            if body.get("stream") is True and kind != "embeddings":
                return await _sse(request, _openai_chunks(kind, answer, body, plan), state)
            return _json(answer)
        if request.path == "/api/embeddings":
            return _json({"embedding": vector(embedding_inputs(body)[0])})
        answer = _ollama_answer(kind, model, body)
        if call is not None and kind == "chat":
            answer["message"]["content"] = _varied(answer["message"]["content"], call)
        elif call is not None and kind == "completion":
            answer["response"] = _varied(answer["response"], call)
        if result is not None:
            answer["message"]["content"] = f"tool result: {result}"
        if plan is not None:
            answer["message"] = mock_tools.ollama_message(*plan)
        if body.get("stream", True) is not False and kind != "embeddings":
            return await _ndjson(request, _ollama_chunks(kind, answer), state)
        return _json(answer)

    return handle


async def _anthropic_messages(request: web.Request, state: MockState) -> web.StreamResponse:
    """Anthropic's Messages API: the same echo answer, as a message or as its event stream."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error("anthropic", 400, "the request body is not JSON", "invalid_json")
    model = body.get("model") if isinstance(body, dict) else None
    if model not in state.options.models:
        return _error("anthropic", 404, f"model: {model}", "not_found_error")
    if not isinstance(body.get("max_tokens"), int):
        return _error("anthropic", 400, "max_tokens: Field required", "invalid_request_error")
    answer = openai_response("chat", model, {"messages": body.get("messages", [])})
    text = answer["choices"][0]["message"]["content"]
    result = mock_tools.tool_result("anthropic", body)
    if result is not None:
        text = f"tool result: {result}"
    plan = mock_tools.tool_call("anthropic", body)
    usage = {
        "input_tokens": answer["usage"]["prompt_tokens"],
        "output_tokens": answer["usage"]["completion_tokens"],
    }
    message_id = "msg_" + answer["id"].removeprefix("chatcmpl-")
    if body.get("stream") is not True:
        return _json(
            {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [mock_tools.anthropic_block(*plan)]
                if plan
                else [{"type": "text", "text": text}],
                "stop_reason": "tool_use" if plan else "end_turn",
                "stop_sequence": None,
                "usage": usage,
            }
        )
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 0},
                },
            },
        ),
        *_anthropic_blocks(text, plan),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use" if plan else "end_turn"},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for event, data in events:
        await response.write(f"event: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n")
    await response.write_eof()
    return response


def _anthropic_blocks(
    text: str, plan: tuple[str, dict[str, Any]] | None
) -> list[tuple[str, dict[str, Any]]]:
    if plan is not None:
        return [(e["type"], e) for e in mock_tools.anthropic_events(0, *plan)]
    start: dict[str, Any] = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    deltas: list[dict[str, Any]] = [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
        for p in _pieces(text)
    ]
    stop: dict[str, Any] = {"type": "content_block_stop", "index": 0}
    return [(e["type"], e) for e in (start, *deltas, stop)]


def _ollama_answer(kind: Kind, model: str, body: Mapping[str, Any]) -> dict[str, Any]:
    if kind == "embeddings":
        inputs = embedding_inputs(body)
        return {
            "model": model,
            "embeddings": [vector(x) for x in inputs],
            "prompt_eval_count": prompt_words(kind, body),
        }
    options = body.get("options")
    limit = options.get("num_predict") if isinstance(options, dict) else None
    text, finish = limit_words(echo_content(kind, body), limit)
    answer: dict[str, Any] = {
        "model": model,
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    if kind == "chat":
        answer["message"] = {"role": "assistant", "content": text}
    else:
        answer["response"] = text
    answer.update(
        done=True,
        done_reason=finish,
        prompt_eval_count=prompt_words(kind, body),
        eval_count=count_words(text),
    )
    return answer


def _varied(text: str, call: int) -> str:
    """``text`` with the call's number on every word: "a b", 7 -> "a~7 b~7"."""
    return " ".join(f"{word}~{call}" for word in text.split(" "))


def _pieces(text: str) -> list[str]:
    """``text`` in word chunks that join back to it: "a b" -> ["a", " b"]."""
    words = text.split(" ")
    return [words[0], *(" " + w for w in words[1:])]


def _openai_chunks(
    kind: Kind,
    answer: dict[str, Any],
    body: Mapping[str, Any],
    plan: tuple[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    choice = answer["choices"][0]
    head = {"id": answer["id"], "created": answer["created"], "model": answer["model"]}
    if kind == "chat":
        head["object"] = "chat.completion.chunk"
        deltas: list[dict[str, Any]] = [
            {"delta": {"role": "assistant", "content": p} if i == 0 else {"content": p}}
            for i, p in enumerate(_pieces(choice["message"]["content"] or ""))
        ]
        if plan is not None:
            deltas = [{"delta": d} for d in mock_tools.openai_deltas(*plan)]
        last: dict[str, Any] = {"delta": {}}
    else:
        head["object"] = "text_completion"
        deltas = [{"text": p, "logprobs": None} for p in _pieces(choice["text"])]
        last = {"text": "", "logprobs": None}
    chunks = [{**head, "choices": [{"index": 0, **d, "finish_reason": None}]} for d in deltas]
    last["finish_reason"] = choice["finish_reason"]
    chunks.append({**head, "choices": [{"index": 0, **last}]})
    stream_options = body.get("stream_options")
    if isinstance(stream_options, dict) and stream_options.get("include_usage"):
        chunks.append({**head, "choices": [], "usage": answer["usage"]})
    return chunks


def _ollama_chunks(kind: Kind, answer: dict[str, Any]) -> list[dict[str, Any]]:
    field = "message" if kind == "chat" else "response"
    text = answer["message"]["content"] if kind == "chat" else answer["response"]
    head = {"model": answer["model"], "created_at": answer["created_at"]}
    chunks: list[dict[str, Any]] = [
        {**head, field: {"role": "assistant", "content": p} if kind == "chat" else p, "done": False}
        for p in _pieces(text)
    ]
    if kind == "chat" and answer["message"].get("tool_calls"):
        chunks = [{**head, "message": answer["message"], "done": False}]
    chunks.append({**answer, field: {"role": "assistant", "content": ""} if kind == "chat" else ""})
    return chunks


async def _stall(state: MockState, sent: int) -> None:
    """Pause before every chunk (``chunk_delay_ms``), and after ``stall_after_chunks``
    chunks, as a wedged GPU server does."""
    o = state.options
    if o.chunk_delay_ms:
        await asyncio.sleep(o.chunk_delay_ms / 1000)
    if o.stall_after_chunks and sent == int(o.stall_after_chunks):
        if o.stall_ms:
            await asyncio.sleep(o.stall_ms / 1000)
        else:
            await state.stopping.wait()


async def _sse(
    request: web.Request, chunks: list[dict[str, Any]], state: MockState
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for sent, chunk in enumerate(chunks):
        await _stall(state, sent)
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _ndjson(
    request: web.Request, chunks: list[dict[str, Any]], state: MockState
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for sent, chunk in enumerate(chunks):
        await _stall(state, sent)
        await response.write(orjson.dumps(chunk) + b"\n")
    await response.write_eof()
    return response


async def _openai_models(request: web.Request, state: MockState) -> web.StreamResponse:
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": "turnout-mock"}
        for m in state.options.models
    ]
    return _json({"object": "list", "data": data})


async def _ollama_tags(request: web.Request, state: MockState) -> web.StreamResponse:
    models = [
        {"name": m, "model": m, "size": 0, "digest": "", "details": {}}
        for m in state.options.models
    ]
    return _json({"models": models})


async def _ollama_version(request: web.Request, state: MockState) -> web.StreamResponse:
    return _json({"version": "0.0.0-turnout-mock"})


# -- the harness's own routes -----------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _stats(request: web.Request) -> web.Response:
    return _json(request.app[STATE].stats())


async def _admin_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        updates = orjson.loads(await request.read())
        if not isinstance(updates, dict):
            raise ValueError("expected a JSON object of option fields")
        state.configure(state.options.changed(updates))
    except (orjson.JSONDecodeError, ValueError) as exc:
        return _json({"error": str(exc)}, 400)
    return _json(asdict(state.options))


# -- running it -------------------------------------------------------------------------------


async def start(options: MockOptions) -> tuple[web.AppRunner, str]:
    """Start serving ``options`` (port 0 picks a free port); return the runner and base URL."""
    runner = web.AppRunner(
        build_app(options), access_log=None, handler_cancellation=True, shutdown_timeout=2.0
    )
    await runner.setup()
    site = web.TCPSite(runner, options.host, options.port, backlog=2048)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def serve(options: MockOptions) -> None:
    """Serve until SIGTERM or SIGINT, after printing ``mock-backend listening on <url>``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner, url = await start(options)
    try:
        print(f"mock-backend listening on {url}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def parse_args(argv: list[str]) -> MockOptions:
    p = argparse.ArgumentParser(prog="turnout mock-backend", description=_DESCRIPTION)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--latency-jitter-ms", type=float, default=0.0)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--status", type=int, default=500, help="status of injected errors")
    p.add_argument("--hang-rate", type=float, default=0.0)
    p.add_argument("--malformed-rate", type=float, default=0.0)
    p.add_argument("--stall-after-chunks", type=float, default=0, help="streams pause after N")
    p.add_argument("--stall-ms", type=float, default=0.0, help="for this long; 0: until stopped")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--models", default="echo,embed", help="comma-separated model names")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer <key>")
    p.add_argument("--prefix-cache", action="store_true", help="model a prefix cache")
    p.add_argument(
        "--vary", action="store_true", help="every call's answer differs (word~N, N per call)"
    )
    p.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause before each chunk")
    args = vars(p.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    try:
        return MockOptions(host=host, port=port).changed(args)
    except ValueError as exc:
        p.error(str(exc))


def run(argv: list[str]) -> int:
    """The ``turnout mock-backend`` command: parse ``argv`` and serve until stopped."""
    asyncio.run(serve(parse_args(argv)))
    return 0


main = run

if __name__ == "__main__":
    import sys

    sys.exit(run(sys.argv[1:]))
