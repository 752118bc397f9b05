"""Turn a raw request record into work, or into a precise rejection. Pure: no I/O.

``admit(record, ...)`` checks, in order: size, JSON and schema, nesting depth,
that the record is keyed by its ``client_id`` (exact per-client state depends on
it), the reply topic, the body's shape for its kind, the model, and the deadline.

It never raises, whatever the bytes (a hypothesis fuzz checks it): a record that
cannot become work becomes a ``Rejected``. A rejection names a reply topic only
when that topic is valid for the request: the prefix and a non-empty, legal
suffix, from a schema-valid ``client_id`` or ``reply_to``. Anything else would
make turnout invent a topic; such requests are dead-lettered without a reply.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from schemas.types import Request, WireError, salvage_reply_address
from turnout.config import Client, Config, Route
from turnout.core import rules
from turnout.core.ratelimit import ClientLimits, ClientState
from turnout.core.spillover import home_of
from turnout.core.tokens import estimate_completion_tokens, estimate_prompt_tokens
from turnout.errors import (
    DeadlineExceeded,
    InvalidReplyTopic,
    InvalidRequest,
    RateLimited,
    RequestTooLarge,
    RouteNotAllowed,
    TurnoutError,
    UnknownModel,
)
from turnout.settings import Settings


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """A consumed record, as far as admission cares."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    replay: bool = False
    """Re-published by ``turnout replay``."""
    force: bool = False
    """Serve it even if it was answered ok before (``turnout replay --force``)."""
    trace_headers: tuple[tuple[str, str], ...] = ()
    """The W3C trace context its producer sent (``traceparent``, ``tracestate``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Admitted:
    request: Request
    reply_to: str
    route_name: str
    route: Route
    deadline_ms: int
    prompt_tokens: int = 0
    """Estimated, for rules, token rate limits and the cost policy."""
    tiers: frozenset[str] | None = None
    """Tiers a matching rule allows (None: any)."""
    priority: int = 5
    """The request's priority, or its client's ``default_priority`` when it set none."""


@dataclasses.dataclass(frozen=True, slots=True)
class Rejected:
    error: TurnoutError
    request_id: str | None
    client_id: str | None
    reply_to: str | None
    """Where to tell the client; None when no valid reply topic is known."""

    @property
    def dead_letter(self) -> bool:
        """Malformed input and records turnout failed on are dead-lettered; a late request not.

        The error's class says which (``TurnoutError.dead_letter``)."""
        return self.error.dead_letter


_BODY_FIELD = {"chat": "messages", "completion": "prompt", "embeddings": "input"}


def admit(
    record: Record, *, config: Config, settings: Settings, now_ms: int
) -> Admitted | Rejected:
    if len(record.value) > settings.max_request_bytes:
        return _reject(
            record,
            settings,
            RequestTooLarge(
                f"the request record is {len(record.value)} bytes; the limit is "
                f"{settings.max_request_bytes} (TURNOUT_MAX_REQUEST_BYTES)"
            ),
        )
    try:
        request = Request.from_wire(record.value)
    except WireError as exc:
        return _reject(record, settings, InvalidRequest(exc.message))
    depth = nesting_depth(request.body, settings.max_request_depth)
    if depth > settings.max_request_depth:
        return _reject(
            record,
            settings,
            InvalidRequest(
                f"the request's body is nested more than {depth - 1} levels deep; the limit "
                f"is {settings.max_request_depth - 1} (TURNOUT_MAX_REQUEST_DEPTH counts the "
                "body itself too); flatten it"
            ),
        )

    reply_to = request.reply_to or settings.reply_topic_for(request.client_id)
    problem = _check(request, record, reply_to, settings)
    if problem is not None:
        forwarded = home_of(reply_to) is not None  # the home region relays the rejection
        ok_reply_to = reply_to if valid_reply_topic(reply_to, settings) or forwarded else None
        return Rejected(problem, request.id, request.client_id, ok_reply_to)

    resolved = config.resolve(request.model)
    if resolved is None:
        known = ", ".join(config.model_names()) or "none"
        return Rejected(
            UnknownModel(
                f"no route or backend serves model {request.model!r}; known models: {known}"
            ),
            request.id,
            request.client_id,
            reply_to,
        )
    route_name, route = resolved
    client = config.client(request.client_id)
    priority = resolve_priority(request, client)
    prompt_tokens = estimate_prompt_tokens(request.kind, request.body)
    tiers: frozenset[str] | None = None
    rule = rules.match(
        config.rules,
        client_id=request.client_id,
        metadata=request.metadata,
        priority=priority,
        kind=request.kind,
        prompt_tokens=prompt_tokens,
    )
    if rule is not None:
        ruled = config.route(rule.route)
        if ruled is not None:
            route_name, route = rule.route, ruled
        tiers = frozenset(rule.tiers) if rule.tiers else None
    if client is not None and not client.allows(route_name):
        allowed = ", ".join(client.allowed_routes or []) or "none"
        return Rejected(
            RouteNotAllowed(
                f"client {request.client_id!r} may not use route {route_name!r} "
                f"(model {request.model!r}); its allowed routes are: {allowed}"
            ),
            request.id,
            request.client_id,
            reply_to,
        )

    deadline_ms = record.timestamp_ms + (request.timeout_ms or settings.default_timeout_ms)
    if request.deadline is not None:
        deadline_ms = min(deadline_ms, request.deadline)
    if deadline_ms <= now_ms:
        late = DeadlineExceeded(
            f"the request's deadline passed {now_ms - deadline_ms} ms before turnout read it; "
            "send it again with a later deadline or a longer timeout_ms",
            retry_after_ms=0,
        )
        return Rejected(late, request.id, request.client_id, reply_to)
    return Admitted(
        request,
        reply_to,
        route_name,
        route,
        deadline_ms,
        prompt_tokens=prompt_tokens,
        tiers=tiers,
        priority=priority,
    )


def resolve_priority(request: Request, client: Client | None) -> int:
    """The request's own priority, else its client's ``default_priority``, else 5.

    >>> from schemas.types import Request
    >>> from turnout.config import Client
    >>> r = Request(id="r", client_id="c", kind="chat", model="m", body={})
    >>> resolve_priority(r, Client(default_priority=1)), resolve_priority(r, None)
    (1, 5)
    >>> import msgspec
    >>> resolve_priority(msgspec.structs.replace(r, priority=8), Client(default_priority=1))
    8
    """
    if isinstance(request.priority, int):
        return request.priority
    return client.default_priority if client is not None else DEFAULT_PRIORITY


DEFAULT_PRIORITY = 5
"""A request's priority when neither it nor its client's config sets one."""


@dataclasses.dataclass(frozen=True, slots=True)
class Charged:
    """A request within its client's limits: the new limit state and how long to hold it."""

    state: bytes | None
    wait_ms: int


def charge(
    job: Admitted, *, config: Config, state: bytes | None, now_ms: int
) -> Charged | Rejected:
    """Charge the client's token buckets for ``job``: exact, since one writer owns them.

    Over a limit, the request waits (a reservation) while its deadline allows, or the
    client's ``max_wait_ms`` if set; otherwise it is refused with an honest retry time.
    """
    client = config.client(job.request.client_id)
    limits = ClientLimits.from_config(client)
    if limits.unlimited:
        return Charged(None, 0)
    cap = job.deadline_ms - now_ms
    if client is not None and client.max_wait_ms is not None:
        cap = min(cap, client.max_wait_ms)
    limits = dataclasses.replace(limits, max_wait_ms=max(0, cap))
    previous = ClientState.from_bytes(state) if state is not None else None
    tokens = job.prompt_tokens + estimate_completion_tokens(job.request.body, kind=job.request.kind)
    verdict = limits.check(previous, tokens=tokens, now_ms=now_ms)
    if not verdict.allowed:
        req = job.request
        return Rejected(
            RateLimited(
                f"client {req.client_id!r} is over its {verdict.limit} limit; "
                f"retry in {verdict.retry_after_ms} ms",
                retry_after_ms=verdict.retry_after_ms,
            ),
            req.id,
            req.client_id,
            job.reply_to,
        )
    return Charged(verdict.state.to_bytes(), verdict.wait_ms)


def _check(
    request: Request, record: Record, reply_to: str, settings: Settings
) -> TurnoutError | None:
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    if key != request.client_id:
        return InvalidRequest(
            f"the record's key is {key!r} but client_id is {request.client_id!r}; publish "
            "requests keyed by client_id so per-client limits and dedupe stay exact"
        )
    if not valid_reply_topic(reply_to, settings) and home_of(reply_to) is None:
        return InvalidReplyTopic(
            f"reply_to {reply_to[:300]!r} must be {settings.reply_prefix!r} "
            "(TURNOUT_REPLY_PREFIX) followed by at least one of A-Z a-z 0-9 . _ -, "
            f"{_MAX_TOPIC} characters in all; omit it to use the default reply topic"
        )
    field = _BODY_FIELD[request.kind]
    value: Any = request.body.get(field)
    if request.kind == "chat":
        if not isinstance(value, list) or not value:
            return InvalidRequest(
                "a chat body needs a non-empty 'messages' list, "
                f"got {type(value).__name__ if value is not None else 'nothing'}"
            )
    elif not isinstance(value, (str, list)) or not value:
        return InvalidRequest(
            f"a {request.kind} body needs '{field}' as a string or a non-empty list"
        )
    return None


def refuse(record: Record, settings: Settings, error: TurnoutError) -> Rejected:
    """Reject ``record`` with ``error``, addressed to whatever valid reply topic it names."""
    return _reject(record, settings, error)


def _reject(record: Record, settings: Settings, error: TurnoutError) -> Rejected:
    address = salvage_reply_address(record.value)
    if address is None:
        return Rejected(error, None, None, None)
    # salvage keeps client_id and reply_to only when they match the schema
    reply_to = address.reply_to
    if reply_to is None and address.client_id is not None and not address.reply_to_invalid:
        reply_to = settings.reply_topic_for(address.client_id)
    if reply_to is not None and not valid_reply_topic(reply_to, settings):
        reply_to = None
    return Rejected(error, address.id, address.client_id, reply_to)


_MAX_TOPIC = 249
_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def valid_reply_topic(name: str, settings: Settings) -> bool:
    """A reply topic turnout may publish to: the prefix, then a non-empty legal suffix.

    >>> s = Settings()
    >>> [valid_reply_topic(t, s) for t in ("turnout.replies.c1", "turnout.replies.", "x.c1")]
    [True, False, False]
    >>> longest = "turnout.replies." + "a" * 233
    >>> valid_reply_topic(longest, s), valid_reply_topic(longest + "a", s)
    (True, False)
    """
    prefix = settings.reply_prefix
    return (
        name.startswith(prefix)
        and len(prefix) < len(name) <= _MAX_TOPIC
        and set(name) <= _TOPIC_CHARS
        and name not in (".", "..")
    )


def nesting_depth(value: object, limit: int) -> int:
    """How deeply dicts and lists nest in ``value`` (a scalar is 0); stops counting past ``limit``.

    Iterative, so no depth can overflow the stack; the encoders turnout uses refuse
    past 255 levels (orjson), so requests are held well below that.

    >>> nesting_depth({"a": [1, {"b": []}]}, 10), nesting_depth("x", 10), nesting_depth([[[[]]]], 2)
    (4, 0, 3)
    """
    depth = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children: Any
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > depth:
            depth = level
            if depth > limit:
                return depth
        stack.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return depth
