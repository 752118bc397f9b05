"""OpenAI's shapes at the gateway's edge, as pure functions.

In: a ``/v1/chat/completions``, ``/v1/completions`` or ``/v1/embeddings`` body
becomes a ``Call`` (kind, model, the body to publish, stream or not). Out: a
``Reply`` becomes the HTTP status and body, a stream of ``ReplyChunk`` deltas
becomes server-sent events, and every error has OpenAI's shape
``{"error": {"message", "type", "code", "param"}}``.

A reply's error becomes the HTTP status its class in ``turnout.errors`` carries
(``errors.http_status``: one table for the workers and the gateway), with
Retry-After on 429, 502, 503 and 504; OpenAI's error ``type`` follows the status
(403 ``permission_error``, 429 ``rate_limit_error``, 5xx ``server_error``...). A
code this gateway does not know (a newer worker's) is a 502.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.types import ErrorInfo, Kind, Reply, ReplyChunk
from turnout import errors
from turnout.backends.streaming import chunks_from_response
from turnout.gateway.kafka import StatusRecord

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
}
_REQUIRED: dict[Kind, str] = {"chat": "messages", "completion": "prompt", "embeddings": "input"}


class EdgeError(Exception):
    """An HTTP error to answer with; each API module renders it in its own shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s
        self.extra = dict(extra or {})

    def __repr__(self) -> str:
        return f"EdgeError({self.status}, code={self.code!r}, message={self.message!r})"

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP call, translated: what to publish and how to answer."""

    kind: Kind
    model: str
    body: dict[str, Any]
    """The OpenAI-shaped body for the workers (``stream`` moved to ``Request.stream``)."""
    stream: bool = False
    include_usage: bool = False
    api: str = "openai"
    """``openai``, ``anthropic``, ``responses``, or the Ollama endpoint (``chat``,
    ``generate``, ``embed``, ``embeddings``)."""
    encoder: Any = None
    """The per-call stream encoder of a dialect whose events carry state (Anthropic's
    content blocks, the Responses API's items); None for stateless dialects."""


def parse(kind: Kind, body: Any) -> Call:
    """The ``Call`` for an OpenAI request body; ``EdgeError`` 400 naming the bad field."""
    if not isinstance(body, dict):
        raise EdgeError(400, "the request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not 1 <= len(model) <= 256:
        raise EdgeError(
            400,
            "'model' must be a string of 1 to 256 characters: a route alias or a model name "
            "(GET /v1/models lists them)",
            code="invalid_value",
            param="model",
        )
    field = _REQUIRED[kind]
    value = body.get(field)
    if kind == "chat":
        ok = isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)
        expected = "a non-empty list of message objects"
    else:
        ok = isinstance(value, str | list)
        expected = "a string or a list"
    if not ok:
        raise EdgeError(400, f"'{field}' must be {expected}", code="invalid_value", param=field)
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise EdgeError(400, "'stream' must be true or false", code="invalid_type", param="stream")
    if kind == "embeddings":
        stream = False
    options = body.get("stream_options")
    include_usage = bool(stream) and isinstance(options, dict) and options.get("include_usage")
    forwarded = {k: v for k, v in body.items() if k != "stream"}
    return Call(
        kind=kind,
        model=model,
        body=forwarded,
        stream=bool(stream),
        include_usage=include_usage is True,
    )


def retry_after_s(info: ErrorInfo) -> int | None:
    if info.retry_after_ms is not None:
        return max(1, math.ceil(info.retry_after_ms / 1000))
    return 1 if info.retryable else None


def reply_error(info: ErrorInfo | None) -> EdgeError:
    """The HTTP error for a failed ``Reply``."""
    if info is None:
        return EdgeError(502, "the worker answered with an error but no detail", code="unknown")
    status = errors.http_status(info.code, info.retryable)
    retry = retry_after_s(info) if status in (429, 502, 503, 504) else None
    return EdgeError(status, info.message, code=info.code, retry_after_s=retry)


def error_body(err: EdgeError) -> dict[str, Any]:
    """OpenAI's error object for ``err``."""
    kind = _TYPES.get(err.status, "server_error" if err.status >= 500 else "invalid_request_error")
    error = {"message": err.message, "type": kind, "code": err.code, "param": err.param}
    return {"error": {**error, **err.extra}}


def response_body(call: Call, reply: Reply) -> dict[str, Any]:
    """The answer to a non-streamed call whose reply is ok: the worker's OpenAI body."""
    return reply.body or {}


# -- streaming ---------------------------------------------------------------------------------

CONTENT_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"


def event(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def relay(call: Call, delta: Mapping[str, Any]) -> bytes:
    """One worker chunk as an SSE event; usage rides only on the final usage chunk."""
    return event({k: v for k, v in delta.items() if k != "usage"})


def fallback(call: Call, reply: Reply) -> bytes:
    """The whole answer of a worker that did not stream, as SSE events."""
    chunks = chunks_from_response(call.kind, reply.body or {})
    return b"".join(relay(call, c) for c in chunks)


def finish(call: Call, reply: Reply) -> bytes:
    """What ends an ok stream: the usage chunk (if asked for) and ``[DONE]``."""
    body = reply.body or {}
    out = b""
    if call.include_usage and isinstance(body.get("usage"), dict):
        head: dict[str, Any] = {k: body[k] for k in ("id", "created", "model") if k in body}
        shape = "chat.completion.chunk" if call.kind == "chat" else "text_completion"
        out = event({**head, "object": shape, "choices": [], "usage": body["usage"]})
    return out + DONE


def stream_error(err: EdgeError) -> bytes:
    """The explicit error event that ends a stream which cannot complete."""
    return event(error_body(err))


def restarted(request_id: str, status_url: str) -> EdgeError:
    """The error that ends a stream whose request was served again after chunks were sent.

    A later serve (a backend retried after failing mid-stream, or another worker after
    a crash or a rebalance) produces a different answer: it cannot continue what the
    client already has, so the stream ends here, naming the request id.
    """
    return EdgeError(
        502,
        f"request {request_id} was served again (a worker or backend failed mid-stream) "
        "after part of its answer was sent; the partial answer above is void; the whole "
        f"answer will be at {status_url}",
        code="stream_restarted",
        extra={"id": request_id, "status_url": status_url},
    )


class StreamRestarted(Exception):
    """A different serve of the request arrived after chunks of another reached the client."""


class ChunkSequencer:
    """Puts one request's ``ReplyChunk`` messages in order, from one serve only; pure.

    Invariant: everything emitted to the client comes from one ``generation`` (one
    serve of the request) and, within it, one ``attempt``, in ``seq`` order.

    - Nothing emitted yet: a chunk of another generation (or a higher attempt) starts
      over with it, and the generation left behind is ignored from then on.
    - Something emitted: a chunk of another generation or attempt raises
      ``StreamRestarted`` (what reached the client cannot be taken back).
    - Within the current one, a repeat is dropped and a gap waits for the missing chunk.
    - ``finish(reply)``: the rest of the answer, or None when the client should get the
      reply's whole body instead; ``StreamRestarted`` if the reply is another serve's
      and part of this one was already emitted.
    """

    def __init__(self) -> None:
        self.generation: str | None = None
        self.attempt = 0
        self.next_seq = 0
        self.emitted = 0
        self._pending: dict[int, dict[str, Any]] = {}
        self._left: set[str | None] = set()

    def __repr__(self) -> str:
        return (
            f"<ChunkSequencer generation={self.generation} attempt={self.attempt} "
            f"next_seq={self.next_seq} emitted={self.emitted} pending={sorted(self._pending)} "
            f"left={len(self._left)}>"
        )

    @property
    def seen(self) -> bool:
        """Whether any chunk of the current serve arrived."""
        return self.attempt > 0

    def feed(self, chunk: ReplyChunk) -> list[dict[str, Any]]:
        """The deltas that can be emitted now, in order."""
        if self.seen and chunk.generation != self.generation:
            if chunk.generation in self._left:
                return []
            if self.emitted:
                raise StreamRestarted(
                    f"generation {chunk.generation} began after {self.emitted} chunk(s) of "
                    f"generation {self.generation} were sent"
                )
            self._left.add(self.generation)
            self.attempt = 0
        if chunk.attempt < self.attempt:
            return []
        if chunk.attempt > self.attempt:
            if self.emitted:
                raise StreamRestarted(
                    f"attempt {chunk.attempt} began after {self.emitted} chunk(s) of attempt "
                    f"{self.attempt} were sent"
                )
            self.generation, self.attempt = chunk.generation, chunk.attempt
            self.next_seq, self._pending = 0, {}
        if chunk.seq < self.next_seq:
            return []
        self._pending[chunk.seq] = chunk.delta
        out = []
        while self.next_seq in self._pending:
            out.append(self._pending.pop(self.next_seq))
            self.next_seq += 1
        self.emitted += len(out)
        return out

    def finish(self, reply: Reply) -> list[dict[str, Any]] | None:
        """What ends the stream, given the final ``reply`` (status ok).

        None: nothing was emitted, so the client gets the reply's whole answer (clean
        whichever serve it came from). Otherwise the chunks still waiting behind a gap,
        in order, if the reply is the same serve's; ``StreamRestarted`` if not.
        """
        if not self.emitted:
            self._pending = {}
            return None
        if reply.generation != self.generation:
            raise StreamRestarted(
                f"the final reply of generation {reply.generation} came after "
                f"{self.emitted} chunk(s) of generation {self.generation} were sent"
            )
        out = [self._pending[s] for s in sorted(self._pending)]
        self._pending = {}
        self.emitted += len(out)
        return out


# -- asynchronous requests ---------------------------------------------------------------------

KINDS = ("chat", "completion", "embeddings")
_RANGES = (("timeout_ms", 1, 86_400_000), ("priority", 0, 9))


def parse_async(body: Any) -> tuple[Call, dict[str, Any]]:
    """The ``Call`` and the extra ``Request`` fields of a ``POST /v1/requests`` body.

    ``{kind, model, body, timeout_ms?, priority?, metadata?}``; ``webhook_url`` is
    checked by the caller (it needs DNS).
    """
    if not isinstance(body, dict):
        raise EdgeError(400, "the request body must be a JSON object", code="invalid_json")
    kind = body.get("kind")
    if kind not in KINDS:
        raise EdgeError(
            400, "'kind' must be chat, completion or embeddings", param="kind", code="invalid_value"
        )
    inner = body.get("body")
    if not isinstance(inner, dict):
        raise EdgeError(
            400,
            "'body' must be a JSON object (an OpenAI request body of that kind)",
            param="body",
            code="invalid_value",
        )
    call = parse(kind, {**inner, "model": body.get("model"), "stream": False})
    extra: dict[str, Any] = {}
    for field, lo, hi in _RANGES:
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise EdgeError(
                400,
                f"'{field}' must be an integer from {lo} to {hi}",
                param=field,
                code="invalid_value",
            )
        extra[field] = value
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise EdgeError(
                400,
                "'metadata' must be an object of string values",
                param="metadata",
                code="invalid_value",
            )
        extra["metadata"] = metadata
    webhook = body.get("webhook_url")
    if webhook is not None and not isinstance(webhook, str):
        raise EdgeError(400, "'webhook_url' must be a string", param="webhook_url")
    return call, extra


def status_view(request_id: str, rec: StatusRecord) -> dict[str, Any]:
    """What ``GET /v1/requests/{id}`` answers, and what a webhook receives."""
    out: dict[str, Any] = {
        "id": request_id,
        "status": rec.status,
        "kind": rec.kind,
        "model": rec.model,
        "created_ms": rec.created_ms,
        "updated_ms": rec.updated_ms,
    }
    reply = rec.reply or {}
    if rec.status == "done":
        out["result"] = reply.get("body")
    elif rec.status == "failed":
        out["error"] = reply.get("error")
    for field in ("backend", "route", "attempts"):
        if field in reply:
            out[field] = reply[field]
    if rec.webhook is not None:
        out["webhook"] = rec.webhook
    return out


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one API family renders answers, streams and errors (see ``DIALECT``)."""

    content_type: str
    error_body: Callable[[EdgeError], dict[str, Any]]
    response_body: Callable[[Call, Reply], dict[str, Any]]
    relay: Callable[[Call, dict[str, Any]], bytes]
    fallback: Callable[[Call, Reply], bytes]
    finish: Callable[[Call, Reply], bytes]
    stream_error: Callable[[EdgeError], bytes]


DIALECT = Dialect(CONTENT_TYPE, error_body, response_body, relay, fallback, finish, stream_error)
