"""The gateway's HTTP behaviour on a real socket, with Kafka replaced by a scripted fake.

The fake stands in for the producer only: the gateway's own reply handling
(``GatewayKafka._on_message``) receives the scripted chunks and replies, so the
ordering, attempts, status store and webhook paths are the real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from schemas.types import ErrorInfo, Reply, ReplyChunk, Request
from turnout.config import Secret, loads
from turnout.gateway import GatewaySettings, load_keys
from turnout.gateway.app import Gateway
from turnout.gateway.kafka import GatewayKafka
from turnout.gateway.openapi import document
from turnout.gateway.webhooks import sign
from turnout.settings import Settings

CONFIG = loads(
    "backends: [{id: b, protocol: openai, base_url: 'http://127.0.0.1:1', models: [echo]}]\n"
    "routes: {default: {targets: [{backend: b, model: echo}]}}\ndefault_route: default\n"
)
CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": "Bearer key-a"}
Message = Reply | ReplyChunk
Script = Callable[[Request], list[Message]]


def answer(req: Request, text: str = "echo: hi", gen: str | None = None) -> Reply:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "echo",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    return Reply(
        id=req.id, status="ok", client_id=req.client_id, body=body, backend="b", generation=gen
    )


def failure(req: Request, code: str, retryable: bool = True) -> Reply:
    error = ErrorInfo(
        code=code, message=f"{code} happened", retryable=retryable, retry_after_ms=2000
    )
    return Reply(id=req.id, status="error", client_id=req.client_id, error=error)


def piece(
    req: Request, seq: int, text: str, attempt: int = 1, gen: str | None = None
) -> ReplyChunk:
    delta = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "echo",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return ReplyChunk(id=req.id, seq=seq, attempt=attempt, generation=gen, delta=delta)


class FakeProducer:
    def __init__(self, kafka: FakeKafka) -> None:
        self.kafka = kafka
        self.client = self

    async def fetch_all_metadata(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[None]:
        """Like aiokafka: a future for the broker's ack (here: acked at once)."""
        await self.send_and_wait(topic, value, key, headers)
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        return acked

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> None:
        if topic == self.kafka.gw.status_topic:
            self.kafka.status_writes.append(orjson.loads(value))
            return
        req = Request.from_wire(value)
        self.kafka.published.append((topic, key, req))
        self.kafka.headers_sent.append(list(headers or ()))
        asyncio.get_running_loop().create_task(self.kafka.play(req))


class FakeKafka(GatewayKafka):
    """GatewayKafka with a fake producer; ``script`` answers each published request."""

    def __init__(self, gw: GatewaySettings, script: Script) -> None:
        super().__init__(Settings.from_env({}), gw)
        self.script = script
        self.published: list[tuple[str, bytes | None, Request]] = []
        self.status_writes: list[dict[str, Any]] = []
        self.headers_sent: list[list[tuple[str, bytes]]] = []
        self._producer = FakeProducer(self)  # type: ignore[assignment]
        self.started = True

    async def play(self, req: Request) -> None:
        for message in self.script(req):
            await asyncio.sleep(0.01)
            write = self._on_message(message.to_wire())
            if write is not None:
                await write


class Running:
    def __init__(self, url: str, kafka: FakeKafka, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.kafka = kafka
        self.session = session
        self.script: Script = lambda req: [answer(req)]

    async def post(self, path: str, body: Any, **kw: Any) -> aiohttp.ClientResponse:
        headers = kw.pop("headers", AUTH)
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        return await self.session.post(self.url + path, data=data, headers=headers, **kw)

    async def get(self, path: str, headers: dict[str, str] = AUTH) -> aiohttp.ClientResponse:
        return await self.session.get(self.url + path, headers=headers)


@pytest.fixture
async def gw(receiver_prefix: str) -> AsyncIterator[Running]:
    settings = GatewaySettings(
        gateway_id="t1",
        timeout_s=1.0,
        webhook_secret="s3cret",
        webhook_allow=receiver_prefix,
        webhook_backoff_s=0.01,
    )
    holder: dict[str, Running] = {}
    kafka = FakeKafka(settings, lambda req: holder["r"].script(req))
    gateway = Gateway(
        Settings.from_env({}, max_request_bytes=4096),
        settings,
        CONFIG,
        load_keys("key-a=client-a,key-b=client-b"),
        kafka,
    )
    runner = web.AppRunner(gateway.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        holder["r"] = Running(f"http://{host}:{port}", kafka, session)
        yield holder["r"]
    await kafka.stop()
    await runner.cleanup()


class Receiver:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.got = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((dict(request.headers), await request.read()))
        self.got.set()
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/done", r.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield r, f"http://{host}:{port}/hooks/"
    await runner.cleanup()


@pytest.fixture
def receiver_prefix(receiver: tuple[Receiver, str]) -> str:
    return receiver[1]


def sse(data: bytes) -> list[Any]:
    out = []
    for block in data.decode().split("\n\n"):
        if block:
            payload = block.removeprefix("data: ")
            out.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return out


async def test_a_sync_chat_is_published_and_answered(gw: Running) -> None:
    """200 with the worker's body; the Request carries the caller's client id and reply_to."""
    r = await gw.post("/v1/chat/completions", CHAT)
    assert r.status == 200
    assert (await r.json())["choices"][0]["message"]["content"] == "echo: hi"
    topic, key, req = gw.kafka.published[0]
    assert (topic, key) == ("turnout.requests", b"client-a")
    reply_topic = gw.kafka.gw.reply_topic(gw.kafka.base)
    assert (req.client_id, req.reply_to, req.stream) == ("client-a", reply_topic, False)
    assert r.headers["X-Request-Id"] == req.id
    assert [w["status"] for w in gw.kafka.status_writes] == ["queued", "done"]


@pytest.mark.parametrize(
    ("code", "retryable", "status"),
    [
        ("rate_limited", True, 429),
        ("unknown_model", False, 404),
        ("deadline_exceeded", True, 504),
        ("no_backend_available", True, 503),
        ("backend_unavailable", True, 502),
        ("invalid_request", False, 400),
    ],
)
async def test_reply_errors_become_http_errors(
    gw: Running, code: str, retryable: bool, status: int
) -> None:
    """Each worker error has its status, OpenAI's shape, and Retry-After when retryable."""
    gw.script = lambda req: [failure(req, code, retryable)]
    r = await gw.post("/v1/chat/completions", CHAT)
    body = await r.json()
    assert r.status == status
    assert body["error"]["code"] == code and body["error"]["message"] == f"{code} happened"
    assert r.headers.get("Retry-After") == ("2" if status in (429, 502, 503, 504) else None)


async def test_a_route_not_allowed_reply_is_a_403_permission_error(gw: Running) -> None:
    """A client whose config forbids the route gets 403 ``permission_error``, not a 502."""
    gw.script = lambda req: [failure(req, "route_not_allowed", False)]
    r = await gw.post("/v1/chat/completions", CHAT)
    body = await r.json()
    assert r.status == 403, body
    assert body["error"]["type"] == "permission_error"
    assert body["error"]["code"] == "route_not_allowed"
    assert "Retry-After" not in r.headers


async def test_a_route_not_allowed_reply_is_a_403_in_anthropics_shape(gw: Running) -> None:
    """/v1/messages answers the same refusal as Anthropic's ``permission_error``."""
    gw.script = lambda req: [failure(req, "route_not_allowed", False)]
    body = {"model": "default", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    r = await gw.post("/v1/messages", body)
    assert r.status == 403
    assert (await r.json())["error"]["type"] == "permission_error"


async def test_ollama_routes_answer_errors_in_ollamas_shape(gw: Running) -> None:
    """/api errors are {"error": "..."}."""
    gw.script = lambda req: [failure(req, "unknown_model", False)]
    r = await gw.post("/api/chat", {**CHAT, "stream": False})
    assert r.status == 404 and await r.json() == {"error": "unknown_model happened"}


async def test_a_late_reply_is_a_504_naming_the_status_url(gw: Running) -> None:
    """No reply in time: 504 with the id and status URL; the answer can be polled later."""

    def late(req: Request) -> list[Message]:
        return []

    gw.script = late
    r = await gw.post("/v1/chat/completions", CHAT)  # the gateway's default: 1 s
    body = await r.json()
    assert r.status == 504 and body["error"]["code"] == "gateway_timeout"
    rid = body["error"]["id"]
    assert body["error"]["status_url"].endswith(f"/v1/requests/{rid}")
    poll = await gw.get(f"/v1/requests/{rid}")
    assert (await poll.json())["status"] == "queued" and poll.headers["Retry-After"] == "1"
    write = gw.kafka._on_message(answer(gw.kafka.published[0][2]).to_wire())
    assert write is not None
    await write
    poll = await gw.get(f"/v1/requests/{rid}")
    assert (await poll.json())["result"]["choices"][0]["message"]["content"] == "echo: hi"
    assert "Retry-After" not in poll.headers


async def test_a_stream_relays_chunks_in_order_and_ends_with_done(gw: Running) -> None:
    """Chunks out of order and a stale attempt: the client sees attempt 2, in seq order."""
    gw.script = lambda req: [
        piece(req, 1, " world", attempt=2),
        piece(req, 0, "hello", attempt=2),
        piece(req, 0, "stale", attempt=1),
        answer(req, "hello world"),
    ]
    r = await gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
    events = sse(await r.read())
    assert [e["choices"][0]["delta"]["content"] for e in events[:-1]] == ["hello", " world"]
    assert events[-1] == "[DONE]"
    assert gw.kafka.published[0][2].stream is True


async def test_a_stream_from_a_worker_that_does_not_stream_is_one_chunk(gw: Running) -> None:
    """Only the final reply: the whole content as one chunk, a finish chunk, [DONE]."""
    r = await gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    events = sse(await r.read())
    assert events[0]["choices"][0]["delta"]["content"] == "echo: hi"
    assert events[1]["choices"][0]["finish_reason"] == "stop"
    assert events[2] == "[DONE]"


async def test_an_error_after_chunks_ends_the_stream_with_an_error_event(gw: Running) -> None:
    """Never a silent truncation: the last event is the error, and no [DONE]."""
    gw.script = lambda req: [piece(req, 0, "par"), failure(req, "backend_timeout")]
    r = await gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    events = sse(await r.read())
    assert events[0]["choices"][0]["delta"]["content"] == "par"
    assert events[-1]["error"]["code"] == "backend_timeout"
    assert "[DONE]" not in events


async def test_an_error_before_any_chunk_is_a_plain_http_error(gw: Running) -> None:
    """Nothing sent yet: a real status code, not a 200 stream."""
    gw.script = lambda req: [failure(req, "rate_limited")]
    r = await gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert r.status == 429 and (await r.json())["error"]["code"] == "rate_limited"


async def test_a_retry_after_chunks_were_sent_ends_the_stream_with_an_error(gw: Running) -> None:
    """Attempt 2 after attempt 1 reached the client: an explicit stream_restarted error."""
    gw.script = lambda req: [piece(req, 0, "a"), piece(req, 0, "b", attempt=2), answer(req)]
    r = await gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    events = sse(await r.read())
    assert events[-1]["error"]["code"] == "stream_restarted"
    assert events[-1]["error"]["status_url"].startswith(gw.url)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_a_second_serve_after_chunks_were_sent_ends_the_stream_naming_the_id(
    gw: Running, path: str
) -> None:
    """Another worker serves the request again at seq 0: an error naming the id, no splice."""
    gw.script = lambda req: [
        piece(req, 0, "first ", gen="A"),
        piece(req, 1, "serve", gen="A"),
        piece(req, 0, "second ", gen="B"),
        piece(req, 1, "serve", gen="B"),
        piece(req, 2, " continued", gen="B"),  # the old sequencer relayed this one
        answer(req, "second serve continued", gen="B"),
    ]
    r = await gw.post(path, {**CHAT, "stream": True})
    raw = await r.read()
    rid = r.headers["X-Request-Id"]
    assert b"continued" not in raw and b"second" not in raw
    if path == "/api/chat":
        last = orjson.loads(raw.splitlines()[-1])
        assert last["id"] == rid and rid in last["error"]
    else:
        events = sse(raw)
        assert events[-1]["error"]["code"] == "stream_restarted"
        assert rid in events[-1]["error"]["message"]


async def test_a_second_serve_before_anything_was_sent_streams_cleanly(gw: Running) -> None:
    """Serve A's chunk 0 never came; serve B's whole answer reaches the client, A's ignored."""
    gw.script = lambda req: [
        piece(req, 1, " lost", gen="A"),
        piece(req, 0, "whole", gen="B"),
        piece(req, 0, "stale", gen="A"),
        piece(req, 1, " answer", gen="B"),
        answer(req, "whole answer", gen="B"),
    ]
    r = await gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    events = sse(await r.read())
    assert [e["choices"][0]["delta"]["content"] for e in events[:-1]] == ["whole", " answer"]
    assert events[-1] == "[DONE]"


async def test_an_ollama_stream_is_ndjson(gw: Running) -> None:
    """Ollama streams by default: one line per piece, then done:true with counts."""
    gw.script = lambda req: [piece(req, 0, "hel"), piece(req, 1, "lo"), answer(req, "hello")]
    r = await gw.post("/api/chat", CHAT)
    assert r.headers["Content-Type"] == "application/x-ndjson"
    lines = [orjson.loads(x) for x in (await r.read()).splitlines()]
    assert [x["message"]["content"] for x in lines] == ["hel", "lo", ""]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 2


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing API key"),
        ({"Authorization": "Bearer nope"}, "unknown API key"),
        ({"Authorization": "Basic a2V5LWE="}, "missing API key"),
    ],
)
async def test_unauthenticated_calls_are_401(
    gw: Running, headers: dict[str, str], message: str
) -> None:
    """Missing and unknown keys are 401s that say which."""
    r = await gw.post("/v1/chat/completions", CHAT, headers=headers)
    assert r.status == 401 and message in (await r.json())["error"]["message"]
    r = await gw.get("/api/tags", headers=headers)
    assert r.status == 401 and message in (await r.json())["error"]


async def test_polling_another_clients_request_is_403_and_an_unknown_id_404(gw: Running) -> None:
    """403, 404 and 401 are distinct."""
    r = await gw.post("/v1/requests", {"kind": "chat", "model": "default", "body": CHAT})
    assert r.status == 202
    rid = (await r.json())["id"]
    other = await gw.get(f"/v1/requests/{rid}", headers={"Authorization": "Bearer key-b"})
    assert other.status == 403 and "another client" in (await other.json())["error"]["message"]
    missing = await gw.get("/v1/requests/req-nope")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "request_not_found"


async def test_an_async_request_is_accepted_then_done(gw: Running) -> None:
    """202 with id and status URL, then the result on poll."""
    r = await gw.post(
        "/v1/requests",
        {
            "kind": "chat",
            "model": "default",
            "body": CHAT,
            "priority": 8,
            "metadata": {"team": "x"},
        },
    )
    assert r.status == 202
    body = await r.json()
    assert body["status"] == "queued" and r.headers["Location"] == body["status_url"]
    req = gw.kafka.published[0][2]
    assert (req.priority, req.metadata) == (8, {"team": "x"})
    for _ in range(100):
        view = await (await gw.get(f"/v1/requests/{body['id']}")).json()
        if view["status"] == "done":
            break
        await asyncio.sleep(0.01)
    assert view["result"]["choices"][0]["message"]["content"] == "echo: hi"


async def test_a_webhook_is_signed_and_delivered_on_completion(
    gw: Running, receiver: tuple[Receiver, str]
) -> None:
    """The allowlisted receiver gets the final status, signed; the status records delivery."""
    hook, prefix = receiver
    r = await gw.post(
        "/v1/requests",
        {"kind": "chat", "model": "default", "body": CHAT, "webhook_url": prefix + "done"},
    )
    rid = (await r.json())["id"]
    await asyncio.wait_for(hook.got.wait(), 5)
    headers, body = hook.calls[0]
    assert headers["X-Turnout-Signature"] == sign(Secret("s3cret"), body)
    sent = orjson.loads(body)
    assert (sent["id"], sent["status"]) == (rid, "done")
    assert sent["result"]["choices"][0]["message"]["content"] == "echo: hi"
    for _ in range(100):
        view = await (await gw.get(f"/v1/requests/{rid}")).json()
        if view.get("webhook") == "delivered":
            break
        await asyncio.sleep(0.01)
    assert view["webhook"] == "delivered"


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://127.0.0.1:2/"]
)
async def test_webhooks_to_internal_addresses_are_refused(gw: Running, url: str) -> None:
    """400 naming the allowlist, and nothing is published."""
    r = await gw.post(
        "/v1/requests", {"kind": "chat", "model": "default", "body": CHAT, "webhook_url": url}
    )
    body = await r.json()
    assert r.status == 400 and body["error"]["code"] == "webhook_refused"
    assert "not allowlisted" in body["error"]["message"]
    assert gw.kafka.published == []


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/chat/completions", b"{nope", 400),
        ("/v1/chat/completions", b"x" * 5000, 413),
        ("/api/chat", b"x" * 5000, 413),
        ("/v1/embeddings", {"model": "m"}, 400),
        ("/v1/nothing", {}, 404),
        ("/v1/chat/completions?timeout=0.5", CHAT, 400),
        ("/api/chat?timeout=soon", CHAT, 400),
    ],
)
async def test_bad_requests_get_errors_in_the_routes_shape(
    gw: Running, path: str, body: Any, status: int
) -> None:
    """Bad JSON, too large, missing fields, unknown paths: 4xx in the API's error shape."""
    r = await gw.post(path, body)
    assert r.status == status
    error = (await r.json())["error"]
    assert isinstance(error, str if path.startswith("/api/") else dict)


async def test_models_tags_health_and_the_openapi_document(gw: Running) -> None:
    """Catalogues come from the config; health needs no key; every route is documented."""
    models = await (await gw.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["default", "echo"]
    tags = await (await gw.get("/api/tags")).json()
    assert [m["name"] for m in tags["models"]] == ["default", "echo"]
    assert (await gw.get("/healthz", headers={})).status == 200
    assert (await gw.get("/readyz", headers={})).status == 200
    doc = await (await gw.get("/openapi.json", headers={})).json()
    assert doc == document() and doc["openapi"] == "3.1.0"
    app = Gateway(Settings.from_env({}), gw.kafka.gw, CONFIG, load_keys("")).app()
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert routes == set(doc["paths"])
