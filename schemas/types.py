"""turnout's wire contracts as frozen value types.

These classes are the single source of truth: the JSON Schema files beside this
module are generated from them (``python -m schemas.generate``) and a test fails
when the two drift apart. Decoding validates types and constraints in one pass
(msgspec), so the policy never sees a raw dict; ``body`` stays an untyped
mapping because it is the backend protocol's business.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import orjson

from turnout.errors import InvalidRequest, TurnoutError

TopicName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,249}$")]
ClientId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,128}$")]
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Kind = Literal["chat", "completion", "embeddings"]


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """An inference request, published to ``turnout.requests`` keyed by ``client_id``."""

    id: RequestId
    """Chosen by the client; the idempotency key. A repeat carries the same id."""
    client_id: ClientId
    kind: Kind
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    """A route alias or a model some backend serves."""
    body: dict[str, Any]
    """An OpenAI-style request body (chat/completions, completions or embeddings)."""
    reply_to: TopicName | None = None
    """Where the reply goes; default ``turnout.replies.<client_id>``."""
    timeout_ms: Annotated[int, msgspec.Meta(gt=0)] | None = None
    """Relative to the record's timestamp. With ``deadline``, the earlier one wins."""
    deadline: Annotated[int, msgspec.Meta(gt=0)] | None = None
    """Absolute, in milliseconds since the Unix epoch."""
    priority: Annotated[int, msgspec.Meta(ge=0, le=9)] = 5
    """0 (lowest) to 9 (highest)."""
    metadata: dict[str, str] = {}
    """Free-form tags; routing rules may match them."""
    stream: bool = False
    """Publish the response as ordered ``chunk`` messages before the final reply."""

    @classmethod
    def from_wire(cls, raw: bytes) -> Request:
        try:
            return _request_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(f"request does not match the schema: {exc}") from None
        except msgspec.DecodeError as exc:
            raise InvalidRequest(f"request is not valid JSON: {exc}") from None

    def to_wire(self) -> bytes:
        return _encoder.encode(self)


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    """A stable machine-readable code, e.g. ``rate_limited``, ``invalid_request``."""
    message: str
    """What went wrong and how to fix it, for a person."""
    retryable: bool
    """Whether sending the same request again can succeed."""
    retry_after_ms: int | None = None
    """When a retry makes sense, if known."""

    @classmethod
    def from_error(cls, exc: TurnoutError) -> ErrorInfo:
        return cls(
            code=exc.code,
            message=exc.message,
            retryable=exc.retryable,
            retry_after_ms=exc.retry_after_ms,
        )


class Timings(msgspec.Struct, frozen=True, kw_only=True):
    queue_ms: float
    """From the request's record timestamp to the start of the first backend call."""
    backend_ms: float
    """Time spent in backend calls, all attempts."""
    total_ms: float
    """From the request's record timestamp to the reply's publication."""


class Reply(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="reply", tag_field="type"
):
    """The final answer to a request, on its ``reply_to`` topic, keyed by request ``id``.

    Exactly one final reply ends every request (a repeat after a crash carries the
    same id). For ``stream: true`` requests, ``chunk`` messages come before it.
    """

    id: str
    status: Literal["ok", "error"]
    client_id: str | None = None
    body: dict[str, Any] | None = None
    """On ``ok``: the response, in the OpenAI protocol of the request's ``kind``."""
    error: ErrorInfo | None = None
    """On ``error``: what went wrong."""
    backend: str | None = None
    """The backend that served (or last failed) the request."""
    route: str | None = None
    policy: str | None = None
    reason: str | None = None
    """Why the router chose that backend."""
    attempts: int = 0
    degraded: bool = False
    timings: Timings | None = None
    generation: str | None = None
    """Which serve of the request produced this reply: the same token as its ``chunk``
    messages. A request served twice (a worker crash, a rebalance) has two generations;
    a reader never mixes chunks of one with the reply of another."""

    @classmethod
    def from_wire(cls, raw: bytes) -> Reply:
        return _reply_decoder.decode(raw)

    def to_wire(self) -> bytes:
        return _encoder.encode(self)


class ReplyChunk(msgspec.Struct, frozen=True, kw_only=True, tag="chunk", tag_field="type"):
    """One piece of a streamed response, before the request's final reply."""

    id: str
    seq: int
    """0, 1, 2, ... per (``generation``, ``attempt``) that streams."""
    attempt: int = 1
    """Within one generation, a backend attempt; a reader keeps the highest."""
    generation: str | None = None
    """Unique per serve of the request (a worker serving it again, after a crash or a
    rebalance, starts a new one at attempt 1, seq 0). Chunks of two generations never
    belong to one answer."""
    delta: dict[str, Any]
    """An OpenAI ``chat.completion.chunk`` (or ``text_completion`` chunk) object."""

    def to_wire(self) -> bytes:
        return _encoder.encode(self)


def decode_reply_message(raw: bytes) -> Reply | ReplyChunk:
    """Decode anything found on a reply topic."""
    return _reply_message_decoder.decode(raw)


class Source(msgspec.Struct, frozen=True, kw_only=True):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A record turnout could not process, on ``turnout.dead-letter``."""

    code: str
    reason: str
    source: Source
    key: bytes | None
    """The original key, base64 in JSON."""
    value: bytes
    """The original value, base64 in JSON, byte for byte."""
    request_id: str | None = None
    client_id: str | None = None
    dead_lettered_at_ms: int

    @classmethod
    def from_wire(cls, raw: bytes) -> DeadLetter:
        return _dead_letter_decoder.decode(raw)

    def to_wire(self) -> bytes:
        return _encoder.encode(self)


class ReplyAddress(msgspec.Struct, frozen=True):
    """What can be salvaged from an invalid request to tell its sender why."""

    id: str
    client_id: str | None
    reply_to: str | None


def salvage_reply_address(raw: bytes) -> ReplyAddress | None:
    """Pick ``id``, ``client_id`` and ``reply_to`` out of a request that failed validation.

    Returns None when not even a string ``id`` can be found: then nobody can be told.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not obj["id"]:
        return None
    client_id = obj.get("client_id")
    reply_to = obj.get("reply_to")
    return ReplyAddress(
        obj["id"][:256],
        client_id if isinstance(client_id, str) else None,
        reply_to if isinstance(reply_to, str) else None,
    )


_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(Request)
_reply_decoder = msgspec.json.Decoder(Reply)
_dead_letter_decoder = msgspec.json.Decoder(DeadLetter)
_reply_message_decoder = msgspec.json.Decoder(Reply | ReplyChunk)

WIRE_TYPES: dict[str, type[msgspec.Struct]] = {
    "request": Request,
    "reply": Reply,
    "reply-chunk": ReplyChunk,
    "dead-letter": DeadLetter,
}
