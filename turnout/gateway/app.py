"""The gateway's aiohttp application: ``turnout gateway --port 8080``.

Every inference call is published to Kafka and answered from the gateway's
reply topic (``kafka.py``); this module only authenticates, translates shapes
(``openai_api.py``, ``ollama_api.py``) and waits:

- sync calls wait on a Future for the request id, up to the ``timeout`` query
  parameter or ``X-Turnout-Timeout`` header (seconds; default
  ``TURNOUT_GATEWAY_TIMEOUT_S``), then answer 504 naming the id and its status
  URL: the request stays in Kafka and is answered all the same;
- streams relay the worker's chunks in order (SSE for OpenAI, NDJSON for Ollama);
  headers go out with the first piece, so a failure before it is a plain HTTP
  error, and a failure after it ends the stream with an explicit error event.
  A worker that does not stream yields the whole answer as one piece;
- async calls (``POST /v1/requests``) answer 202 at once; ``GET
  /v1/requests/{id}`` serves the status store, and a webhook may be called.

Auth: ``Authorization: Bearer <key>`` maps to a client id (``TURNOUT_GATEWAY_KEYS``);
401 missing or unknown key, 403 another client's request, 404 unknown id.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import orjson
from aiohttp import web
from aiokafka.errors import KafkaError

from schemas.types import Kind, ReplyChunk, Request, WireError
from turnout import gcfreeze, logs, tracing
from turnout.config import Config, ConfigError, load
from turnout.core.nearest import failover_headers, region_failover
from turnout.gateway import ApiKeys, GatewaySettings, load_keys, webhook_secret
from turnout.gateway import anthropic_api as ant
from turnout.gateway import ollama_api as oll
from turnout.gateway import openai_api as oai
from turnout.gateway import responses_api as rsp
from turnout.gateway.kafka import GatewayKafka, Listener, StatusRecord, now_ms
from turnout.gateway.metrics import GatewayMetrics
from turnout.gateway.openai_api import Call, ChunkSequencer, Dialect, EdgeError, StreamRestarted
from turnout.gateway.openapi import document
from turnout.gateway.webhooks import Allowlist, WebhookRefused, WebhookSender
from turnout.kafka.admin import KafkaStartupError
from turnout.settings import Settings

log = logs.get("turnout.gateway")
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 1.0, 3600.0


OPENAI, OLLAMA, ANTHROPIC, RESPONSES = oai.DIALECT, oll.DIALECT, ant.DIALECT, rsp.DIALECT


def _dialect(request: web.Request) -> Dialect:
    if request.path.startswith("/api/"):
        return OLLAMA
    return ANTHROPIC if request.path.startswith("/v1/messages") else OPENAI


def _json(obj: Any, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj), status=status, content_type="application/json", headers=headers
    )


class Gateway:
    def __init__(
        self,
        base: Settings,
        gw: GatewaySettings,
        config: Config,
        keys: ApiKeys,
        kafka: GatewayKafka | None = None,
    ) -> None:
        self.base = base
        self.gw = gw
        self.config = config
        self.keys = keys
        self.kafka = kafka or GatewayKafka(base, gw)
        self.webhooks = WebhookSender(
            Allowlist(gw.allow_prefixes),
            webhook_secret(gw),
            attempts=gw.webhook_attempts,
            backoff_s=gw.webhook_backoff_s,
        )
        self.kafka.on_final = self._deliver_webhook
        self.metrics = GatewayMetrics(lambda: len(self.kafka.store))

    def __repr__(self) -> str:
        return f"<Gateway id={self.gw.gateway_id} {self.keys!r} {self.kafka!r}>"

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._measure, self._errors], client_max_size=self.base.max_request_bytes
        )
        r = app.router
        r.add_post("/v1/chat/completions", self._openai("chat"))
        r.add_post("/v1/completions", self._openai("completion"))
        r.add_post("/v1/embeddings", self._openai("embeddings"))
        r.add_get("/v1/models", self.models)
        r.add_post("/v1/messages", self._parsed(ant.parse, ANTHROPIC))
        r.add_post("/v1/messages/count_tokens", self.count_tokens)
        r.add_post("/v1/responses", self.responses)
        r.add_get("/v1/responses/{id}", self.response_status)
        r.add_post("/api/chat", self._ollama(lambda b: oll.parse_chat(b), "chat"))
        r.add_post("/api/generate", self._ollama(lambda b: oll.parse_generate(b), "generate"))
        r.add_post("/api/embed", self._ollama(lambda b: oll.parse_embed(b), "embed"))
        r.add_post(
            "/api/embeddings", self._ollama(lambda b: oll.parse_embed(b, legacy=True), "embed")
        )
        r.add_get("/api/tags", self.tags)
        r.add_get("/api/version", self.version)
        r.add_post("/v1/requests", self.submit)
        r.add_get("/v1/requests/{id}", self.status)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/openapi.json", self.openapi)
        r.add_get("/metrics", self.metrics_page)
        app.on_cleanup.append(lambda _: self.webhooks.close())
        return app

    # -- the edge: errors, auth, bodies --------------------------------------------------------

    @web.middleware
    async def _measure(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Counts every call by route template and status, its duration, and calls in flight."""
        started = time.monotonic()
        self.metrics.in_flight.inc()
        status = 499  # the client went away before an answer (nginx's convention)
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.metrics.in_flight.dec()
            resource = request.match_info.route.resource
            endpoint = resource.canonical if resource is not None else None
            self.metrics.answered(endpoint, status, time.monotonic() - started)

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.monotonic()
        dialect = _dialect(request)
        try:
            response = await handler(request)
        except EdgeError as edge:
            response = _json(dialect.error_body(edge), edge.status, **edge.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else None
            err = EdgeError(exc.status, message or f"{exc.reason}: {request.method} {request.path}")
            response = _json(dialect.error_body(err), exc.status)
        except KafkaError as exc:
            log.warning("gateway_kafka_unavailable", error=type(exc).__name__)
            peer = region_failover(self.base)
            hint = f" or use region {peer.region} at {peer.address}" if peer else ""
            err = EdgeError(503, f"Kafka is unreachable; retry shortly{hint}", retry_after_s=2)
            headers = {**err.headers, **failover_headers(peer)}
            response = _json(dialect.error_body(err), 503, **headers)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("gateway_internal_error", method=request.method, path=request.path)
            err = EdgeError(500, "internal gateway error; see the gateway's log", code="internal")
            response = _json(dialect.error_body(err), 500)
        log.debug(
            "http_request",
            method=request.method,
            path=request.path,
            status=response.status,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return response

    def _client(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if not self.keys.enabled:
            return self.keys.client_for(None) or "anonymous"
        if not header and request.headers.get("x-api-key"):
            scheme, key = "bearer", request.headers["x-api-key"]  # Anthropic's clients
        if scheme.lower() != "bearer" or not key.strip():
            raise EdgeError(
                401,
                "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                code="missing_api_key",
            )
        client = self.keys.client_for(key.strip())
        if client is None:
            raise EdgeError(
                401, "unknown API key: check the key you were given", code="invalid_api_key"
            )
        return client

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise EdgeError(
                400, "the request body is not valid JSON", code="invalid_json"
            ) from None

    def _timeout(self, request: web.Request) -> float:
        raw = request.query.get("timeout") or request.headers.get("X-Turnout-Timeout")
        if raw is None:
            return self.gw.timeout_s
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S:
            raise EdgeError(
                400,
                f"timeout must be a number of seconds from {MIN_TIMEOUT_S:g} to {MAX_TIMEOUT_S:g}",
                code="invalid_value",
                param="timeout",
            )
        return value

    def _status_url(self, request: web.Request, request_id: str) -> str:
        return str(request.url.with_path(f"/v1/requests/{request_id}").with_query(None))

    def _request(self, call: Call, client_id: str, **extra: Any) -> Request:
        fields = {
            "id": f"req-{uuid.uuid4().hex}",
            "client_id": client_id,
            "kind": call.kind,
            "model": call.model,
            "body": call.body,
            "reply_to": self.gw.reply_topic(self.base),
            "stream": call.stream,
            **extra,
        }
        wire = orjson.dumps(fields)
        if len(wire) > self.base.max_request_bytes:
            raise EdgeError(
                413,
                f"the request is {len(wire)} bytes; at most {self.base.max_request_bytes} "
                "are accepted (TURNOUT_MAX_REQUEST_BYTES)",
                code="request_too_large",
            )
        try:
            return Request.from_wire(wire)
        except WireError as exc:
            raise EdgeError(400, exc.message, code="invalid_request") from None

    # -- sync and streamed calls ---------------------------------------------------------------

    def _openai(self, kind: Kind) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            client = self._client(request)
            call = oai.parse(kind, await self._body(request))
            return await self._call(request, OPENAI, call, client)

        return handle

    def _parsed(
        self, parse: Callable[[Any], Call], dialect: Dialect
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            client = self._client(request)
            call = parse(await self._body(request))
            return await self._call(request, dialect, call, client)

        return handle

    def _ollama(
        self, parse: Callable[[Any], Call | None], api: str
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            client = self._client(request)
            body = await self._body(request)
            call = parse(body)
            if call is None:
                return _json(oll.load_response(api, body["model"], oll.iso_now()))
            return await self._call(request, OLLAMA, call, client)

        return handle

    async def _call(
        self, request: web.Request, dialect: Dialect, call: Call, client_id: str, **extra: Any
    ) -> web.StreamResponse:
        timeout = self._timeout(request)
        req = self._request(call, client_id, **extra)
        with self.kafka.listen(req.id, stream=call.stream) as listener:
            await self._accept(request, req)
            if call.stream:
                try:
                    return await self._stream(request, dialect, call, req.id, listener, timeout)
                finally:
                    self._count_tokens(listener)
            try:
                reply = await asyncio.wait_for(asyncio.shield(listener.final), timeout)
            except TimeoutError:
                raise self._late(request, req.id, timeout) from None
        self._count_tokens(listener)
        if reply.status != "ok":
            raise oai.reply_error(reply.error)
        return _json(dialect.response_body(call, reply), 200, **{"X-Request-Id": req.id})

    def _count_tokens(self, listener: Listener) -> None:
        final = listener.final
        if final.done() and not final.cancelled() and final.result().status == "ok":
            self.metrics.usage((final.result().body or {}).get("usage"))

    async def _accept(
        self, http: web.Request, req: Request, *, webhook_url: str | None = None
    ) -> None:
        """Publish ``req`` inside the accept span, continuing the caller's trace, whose
        context travels on as Kafka headers of the request record."""
        with tracing.accept_span(http.headers, req):
            await self.kafka.accept(req, webhook_url=webhook_url, headers=tracing.kafka_headers())

    def _late(self, request: web.Request, request_id: str, timeout: float) -> EdgeError:
        url = self._status_url(request, request_id)
        return EdgeError(
            504,
            f"no reply within {timeout:g} s; request {request_id} is safe in Kafka and will "
            f"still be answered: poll GET {url}",
            code="gateway_timeout",
            retry_after_s=1,
            extra={"id": request_id, "status_url": url},
        )

    async def _stream(
        self,
        request: web.Request,
        dialect: Dialect,
        call: Call,
        request_id: str,
        listener: Listener,
        wait_s: float,
    ) -> web.StreamResponse:
        assert listener.messages is not None
        deadline = asyncio.get_running_loop().time() + wait_s
        order = ChunkSequencer()
        response: web.StreamResponse | None = None

        async def emit(data: bytes) -> None:
            nonlocal response
            if not data:
                return
            if response is None:
                response = web.StreamResponse(
                    headers={
                        "Content-Type": dialect.content_type,
                        "Cache-Control": "no-cache",
                        "X-Request-Id": request_id,
                    }
                )
                await response.prepare(request)
            await response.write(data)

        async def fail(err: EdgeError) -> None:
            if response is None:
                raise err
            await emit(dialect.stream_error(err))

        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await listener.messages.get()
                except TimeoutError:
                    await fail(self._late(request, request_id, wait_s))
                    break
                if isinstance(message, ReplyChunk):
                    try:
                        for delta in order.feed(message):
                            await emit(dialect.relay(call, delta))
                    except StreamRestarted:
                        url = self._status_url(request, request_id)
                        await fail(oai.restarted(request_id, url))
                        break
                    continue
                if message.status != "ok":
                    await fail(oai.reply_error(message.error))
                    break
                try:
                    rest = order.finish(message)
                except StreamRestarted:
                    await fail(oai.restarted(request_id, self._status_url(request, request_id)))
                    break
                if rest is None:  # nothing sent yet: the whole answer, from one serve
                    await emit(dialect.fallback(call, message))
                else:
                    for delta in rest:
                        await emit(dialect.relay(call, delta))
                await emit(dialect.finish(call, message))
                break
        except ConnectionResetError:
            log.info("gateway_stream_client_gone", request_id=request_id)
        if response is None:  # nothing at all to send: an empty ok answer
            await emit(b"\n" if dialect is OLLAMA else oai.DONE)
        assert response is not None
        try:
            await response.write_eof()
        except ConnectionResetError:
            pass
        return response

    # -- the Responses API: sync, streamed, background, retrieved -------------------------------

    async def responses(self, request: web.Request) -> web.StreamResponse:
        client = self._client(request)
        call, background = rsp.parse(await self._body(request))
        req_id = f"req-{uuid.uuid4().hex}"
        rid = rsp.response_id(req_id)
        if isinstance(call.encoder, rsp.ResponseStream):
            call.encoder.rid = rid
        if not background:
            return await self._call(request, RESPONSES, call, client, id=req_id)
        await self._accept(request, self._request(call, client, id=req_id))
        return _json(rsp.queued(rid, call.model), 200, **{"X-Request-Id": req_id})

    async def count_tokens(self, request: web.Request) -> web.Response:
        self._client(request)
        return _json(ant.count_tokens(await self._body(request)))

    async def response_status(self, request: web.Request) -> web.Response:
        client = self._client(request)
        rid = request.match_info["id"]
        req_id = rsp.request_id(rid)
        rec = None if req_id is None else self.kafka.lookup(req_id)
        if rec is None:
            raise EdgeError(
                404,
                f"no response {rid!r} is known here: it was never created through this "
                f"gateway, or it expired ({self.gw.status_ttl_s:g} s after completion)",
                code="response_not_found",
            )
        if self.keys.enabled and rec.client_id != client:
            raise EdgeError(403, f"response {rid!r} belongs to another client", code="forbidden")
        return _json(rsp.from_status(rid, rec))

    # -- async requests ------------------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        client = self._client(request)
        body = await self._body(request)
        call, extra = oai.parse_async(body)
        webhook = body.get("webhook_url")
        if webhook is not None:
            try:
                await self.webhooks.check(webhook)
            except WebhookRefused as exc:
                raise EdgeError(
                    400, str(exc), param="webhook_url", code="webhook_refused"
                ) from None
        req = self._request(call, client, **extra)
        await self._accept(request, req, webhook_url=webhook)
        url = self._status_url(request, req.id)
        return _json({"id": req.id, "status": "queued", "status_url": url}, 202, Location=url)

    async def status(self, request: web.Request) -> web.Response:
        client = self._client(request)
        request_id = request.match_info["id"]
        rec = self.kafka.lookup(request_id)
        if rec is None:
            raise EdgeError(
                404,
                f"no request {request_id!r} is known here: it was never accepted by this "
                f"gateway, or its status expired ({self.gw.status_ttl_s:g} s after completion)",
                code="request_not_found",
            )
        if self.keys.enabled and rec.client_id != client:
            raise EdgeError(
                403, f"request {request_id!r} belongs to another client", code="forbidden"
            )
        headers = {} if rec.final else {"Retry-After": "1"}
        return _json(oai.status_view(request_id, rec), 200, **headers)

    async def _deliver_webhook(self, request_id: str, rec: StatusRecord) -> None:
        if not rec.webhook_url:
            return
        body = orjson.dumps(oai.status_view(request_id, rec))
        ok = await self.webhooks.deliver(rec.webhook_url, body, request_id=request_id)
        self.metrics.webhook(ok)
        done = msgspec.structs.replace(
            rec, webhook="delivered" if ok else "failed", updated_ms=now_ms()
        )
        await self.kafka.record(request_id, done, retry=True)

    # -- catalogue, health, docs ---------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        self._client(request)
        if "anthropic-version" in request.headers:  # the anthropic SDK's models.list()
            return _json(ant.model_list(self.config.model_names()))
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "turnout"}
            for m in self.config.model_names()
        ]
        return _json({"object": "list", "data": data})

    async def tags(self, request: web.Request) -> web.Response:
        self._client(request)
        models = [
            {
                "name": m,
                "model": m,
                "modified_at": "1970-01-01T00:00:00Z",
                "size": 0,
                "digest": "",
                "details": {"format": "turnout-route"},
            }
            for m in self.config.model_names()
        ]
        return _json({"models": models})

    async def version(self, request: web.Request) -> web.Response:
        return _json({"version": "0.6.0-turnout"})

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if await self.kafka.ready():
            return _json({"status": "ready"})
        reason = self.kafka.failure or "Kafka is unreachable"
        peer = region_failover(self.base)
        doc = {"status": "not ready", "reason": reason}
        if peer is not None:
            doc["next_region"], doc["next_router"] = peer.region, peer.address
        return _json(doc, 503, **failover_headers(peer))

    async def metrics_page(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(document())


# -- running it --------------------------------------------------------------------------------


async def serve(gateway: Gateway, host: str, port: int) -> None:
    """Start Kafka, serve until SIGTERM/SIGINT, stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gateway.kafka.start()
    runner = web.AppRunner(gateway.app(), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=2048).start()
        log.info("gateway_listening", host=host, port=port, gateway_id=gateway.gw.gateway_id)
        print(f"gateway listening on http://{host}:{port}", flush=True)
        gcfreeze.freeze("gateway_listening")
        await stop.wait()
    finally:
        await runner.cleanup()
        await gateway.kafka.stop()


def run(settings: Settings, *, host: str = "127.0.0.1", port: int = 8080) -> int:
    """The ``turnout gateway`` command."""
    try:
        gw = GatewaySettings.from_env()
        keys = load_keys(gw.keys)
        config = load(settings.config_path)
        tracing.configure("turnout-gateway", settings.otlp_endpoint)
    except (ValueError, ConfigError) as exc:
        print(f"turnout gateway: refusing to start: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(Gateway(settings, gw, config, keys), host, port))
    except KafkaStartupError as exc:  # one line: unreachable, refused, unsafe topics
        print(f"turnout gateway: refusing to start: {exc}", file=sys.stderr)
        return 2
    return 0
