"""turnout's wire contracts as frozen value types.

These classes are the single source of truth: the JSON Schema files beside this
module are generated from them (``python -m schemas.generate``) and a test fails
when the two drift apart. Decoding validates types and constraints in one pass
(msgspec), so the policy never sees a raw dict; ``body`` stays an untyped
mapping because it is the backend protocol's business.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Protocol

import msgspec
import orjson

TopicName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,249}$")]
ClientId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,128}$")]
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Kind = Literal["chat", "completion", "embeddings"]


class WireError(ValueError):
    """Bytes that do not decode to a valid message; ``message`` says what and how to fix it.

    The wire contract imports nothing of turnout's: turnout translates this into its
    own ``InvalidRequest`` (``turnout/errors.py``) where it decodes a request.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ErrorLike(Protocol):
    """What an error reply is made from (every ``turnout.errors.TurnoutError`` has these)."""

    @property
    def code(self) -> str: ...

    @property
    def message(self) -> str: ...

    @property
    def retryable(self) -> bool: ...

    @property
    def retry_after_ms(self) -> int | None: ...


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
    priority: Annotated[int, msgspec.Meta(ge=0, le=9)] | msgspec.UnsetType = msgspec.UNSET
    """0 (lowest) to 9 (highest). Unset: the client's ``default_priority`` in the
    config (5 unless configured); admission resolves it into ``Admitted.priority``."""
    metadata: dict[str, str] = {}
    """Free-form tags; routing rules may match them."""
    stream: bool = False
    """Publish the response as ordered ``chunk`` messages before the final reply."""

    @classmethod
    def from_wire(cls, raw: bytes) -> Request:
        try:
            return _request_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise WireError(f"request does not match the schema: {exc}") from None
        except msgspec.DecodeError as exc:
            raise WireError(f"request is not valid JSON: {exc}") from None
        except RecursionError:
            raise WireError(
                "request is nested too deeply to decode (hundreds of levels of objects or "
                "arrays); flatten it"
            ) from None

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
    def from_error(cls, exc: ErrorLike) -> ErrorInfo:
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
    served_region: str | None = None
    """Set when another region served the request (cross-region spillover); the reply
    is then ``degraded`` too. Absent when the client's own region served it."""

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


class Original(msgspec.Struct, frozen=True, kw_only=True):
    """An original record too large to copy into its dead letter: how to find and check it.

    The record itself stays in its source topic (``DeadLetter.source``) while that
    topic's retention keeps it; ``turnout dlq show`` fetches it from there.
    """

    value_bytes: int
    """Size of the original value."""
    value_sha256: str
    """SHA-256 of the original value, hex."""
    value_prefix: bytes
    """The first bytes of the original value (bounded), base64 in JSON."""
    key_bytes: int = 0
    """Size of the original key (0 when there was none)."""
    key_sha256: str | None = None
    """SHA-256 of the original key, hex, when the key too was too large to copy."""


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A record turnout could not process, on ``turnout.dead-letter``.

    Either the original is copied (``value``, and ``key``) or, when the copy would not
    fit in one Kafka message, it is referenced (``original``): fetch it from ``source``.
    """

    code: str
    reason: str
    source: Source
    key: bytes | None
    """The original key, base64 in JSON (None when it had none or is referenced)."""
    value: bytes | None = None
    """The original value, base64 in JSON, byte for byte; None when ``original`` is set."""
    original: Original | None = None
    """Set instead of ``value`` when the original was too large to copy."""
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
    reply_to_invalid: bool = False
    """A ``reply_to`` was given but breaks the schema: reply nowhere, not to a default."""


def salvage_reply_address(raw: bytes) -> ReplyAddress | None:
    """Pick ``id``, ``client_id`` and ``reply_to`` out of a request that failed validation.

    Returns None when not even a string ``id`` can be found: then nobody can be told.
    A ``client_id`` or ``reply_to`` that breaks the schema is dropped (None): a reply
    never goes to a topic named after a value the contract forbids. Works on any
    bytes, also on JSON nested too deeply to parse (the top level is scanned).
    """
    complete = True
    try:
        obj = orjson.loads(raw)
    except (orjson.JSONDecodeError, RecursionError):
        obj, complete = _top_level_strings(raw)
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not obj["id"]:
        return None
    client_id = obj.get("client_id")
    reply_to = obj.get("reply_to")
    reply_ok = isinstance(reply_to, str) and _TOPIC.match(reply_to) is not None
    return ReplyAddress(
        obj["id"][:256],
        client_id if isinstance(client_id, str) and _CLIENT_ID.match(client_id) else None,
        reply_to if reply_ok else None,
        # a scan cut short may have missed a reply_to: then reply nowhere, not to a default
        reply_to_invalid=(reply_to is not None and not reply_ok)
        or (reply_to is None and not complete),
    )


_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}\Z")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}\Z")
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]:,]')
_SALVAGED = ("id", "client_id", "reply_to")
_MAX_TOKENS = 50_000
"""Scanning stops here (about 50 ms on a shared 2-core VM): a poison record must not
hold the event loop for long. 10,000 levels of nesting take some 40,000 tokens."""


def _top_level_strings(raw: bytes) -> tuple[dict[str, str] | None, bool]:
    """The top-level string members named in ``_SALVAGED`` of a JSON object, by scanning,
    and whether the scan saw the whole document.

    For documents a parser refuses (nested deeper than it recurses): iterative, so
    any depth is fine. None unless ``raw`` starts with ``{``.

    >>> _top_level_strings(b'{"id": "r1", "body": [[[{"id": "no"}]]], "client_id": "c"}')
    ({'id': 'r1', 'client_id': 'c'}, True)
    """
    if not raw.lstrip().startswith(b"{"):
        return None, True
    out: dict[str, str] = {}
    depth = 0
    key: str | None = None
    expect = "key"  # at depth 1: key -> colon -> value -> comma -> key
    for n, m in enumerate(_TOKEN.finditer(raw)):
        if n >= _MAX_TOKENS:
            return out, False
        tok = m.group()
        if tok in (b"{", b"["):
            depth += 1
            if depth == 2:
                expect = "comma"
            continue
        if tok in (b"}", b"]"):
            depth -= 1
            if depth <= 0:
                break
            continue
        if depth != 1:
            continue
        if tok == b",":
            expect, key = "key", None
        elif tok == b":":
            expect = "value" if expect == "colon" else "comma"
        elif expect == "key":
            key, expect = _string(tok), "colon"
        elif expect == "value":
            value = _string(tok)
            if key in _SALVAGED and value is not None and key not in out:
                out[key] = value
                if len(out) == len(_SALVAGED):
                    return out, True
            expect = "comma"
    return out, True


def _string(tok: bytes) -> str | None:
    try:
        value = orjson.loads(tok)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, str) else None


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
