"""Per-client token buckets with reservation (GCRA). Pure: no I/O, no clock.

The state of each client's buckets is a table value keyed by client id; the
only writer is the agent that owns the client's partition and processes its
requests one at a time, so every check-and-charge is exact across workers.
The caller passes the time in and stores the returned state.

A bucket holds up to ``burst`` tokens and refills at ``rate_per_s``. A request
costing ``cost`` tokens is, in order:

- taken at once when the bucket holds that many (``wait_ms`` 0);
- allowed with a reservation when enough tokens arrive within ``max_wait_ms``:
  the level goes negative and the caller waits ``wait_ms`` before proceeding,
  which also pushes back every later request;
- rejected otherwise, with ``retry_after_ms`` the honest time until ``cost``
  tokens are there; a rejection charges nothing.

A request costing more than ``burst`` could never pass, so it costs ``burst``.
"""

from __future__ import annotations

import dataclasses
import math
import struct

from turnout.config import Client

_EPS = 1e-6
"""Tokens of float rounding forgiven, so a retry at ``retry_after_ms`` is not refused."""
_BUCKET = struct.Struct("<dq")
_STATE = struct.Struct("<B")


@dataclasses.dataclass(frozen=True, slots=True)
class Bucket:
    """Tokens in a bucket (negative while reserved ahead) as of ``updated_ms``."""

    level: float
    updated_ms: int

    def to_bytes(self) -> bytes:
        return _BUCKET.pack(self.level, self.updated_ms)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Bucket:
        if len(raw) != _BUCKET.size:
            raise ValueError(f"a Bucket is {_BUCKET.size} bytes, got {len(raw)}")
        level, updated_ms = _BUCKET.unpack(raw)
        return cls(level, updated_ms)


@dataclasses.dataclass(frozen=True, slots=True)
class Take:
    bucket: Bucket
    """The state to store, whether or not the request was allowed."""
    allowed: bool
    wait_ms: int
    """When allowed: how long to wait before proceeding (0 means now)."""
    retry_after_ms: int
    """When rejected: how long until the same request would be allowed; else 0."""


def refill(bucket: Bucket | None, *, rate_per_s: float, burst: float, now_ms: int) -> Bucket:
    """The bucket as of ``now_ms``; a bucket never used starts full. Time never runs back."""
    if bucket is None:
        return Bucket(float(burst), now_ms)
    elapsed = max(0, now_ms - bucket.updated_ms)
    level = min(float(burst), bucket.level + elapsed * rate_per_s / 1000)
    return Bucket(level, max(now_ms, bucket.updated_ms))


def take(
    bucket: Bucket | None,
    *,
    cost: float,
    rate_per_s: float,
    burst: float,
    now_ms: int,
    max_wait_ms: int,
) -> Take:
    """Charge ``cost`` tokens now, by reservation within ``max_wait_ms``, or reject."""
    if not rate_per_s > 0 or not burst > 0:
        raise ValueError(f"rate_per_s and burst must be > 0, got {rate_per_s} and {burst}")
    current = refill(bucket, rate_per_s=rate_per_s, burst=burst, now_ms=now_ms)
    cost = min(max(cost, 0.0), float(burst))
    if current.level + _EPS >= cost:
        return Take(Bucket(current.level - cost, current.updated_ms), True, 0, 0)
    wait_ms = math.ceil((cost - current.level) * 1000 / rate_per_s)
    if wait_ms <= max_wait_ms:
        return Take(Bucket(current.level - cost, current.updated_ms), True, wait_ms, 0)
    return Take(current, False, 0, wait_ms)


@dataclasses.dataclass(frozen=True, slots=True)
class ClientState:
    """One client's buckets, the table value; None for a limit never charged."""

    requests: Bucket | None = None
    tokens: Bucket | None = None

    def to_bytes(self) -> bytes:
        flags = (self.requests is not None) | (self.tokens is not None) << 1
        parts = [_STATE.pack(flags)]
        parts.extend(b.to_bytes() for b in (self.requests, self.tokens) if b is not None)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, raw: bytes) -> ClientState:
        if not raw:
            raise ValueError("a ClientState is at least 1 byte, got 0")
        flags = raw[0]
        size = _STATE.size + _BUCKET.size * ((flags & 1) + (flags >> 1 & 1))
        if flags > 3 or len(raw) != size:
            raise ValueError(f"a ClientState with flags {flags} is {size} bytes, got {len(raw)}")
        offset = _STATE.size
        buckets: list[Bucket | None] = []
        for bit in (1, 2):
            if flags & bit:
                buckets.append(Bucket.from_bytes(raw[offset : offset + _BUCKET.size]))
                offset += _BUCKET.size
            else:
                buckets.append(None)
        return cls(buckets[0], buckets[1])


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    state: ClientState
    """The state to store, whether or not the request was allowed."""
    allowed: bool
    wait_ms: int
    """When allowed: how long to wait before proceeding (0 means now)."""
    retry_after_ms: int
    """When rejected: how long until the same request would be allowed; else 0."""
    limit: str | None = None
    """When rejected: the limit that refused, ``requests_per_s`` or ``tokens_per_min``."""


@dataclasses.dataclass(frozen=True, slots=True)
class ClientLimits:
    """A client's request rate and token rate; both must allow a request."""

    requests_per_s: float | None = None
    burst: float = 1.0
    tokens_per_min: float | None = None
    token_burst: float | None = None
    """Default: one minute's worth, ``tokens_per_min``."""
    max_wait_ms: int = 0

    @classmethod
    def from_config(cls, client: Client | None) -> ClientLimits:
        """The limits of a client's config block; None (no block) means unlimited."""
        if client is None:
            return cls()
        burst = client.burst
        if burst is None and client.requests_per_s is not None:
            burst = max(1, math.ceil(client.requests_per_s))
        return cls(
            requests_per_s=client.requests_per_s,
            burst=float(burst or 1),
            tokens_per_min=client.tokens_per_min,
            token_burst=None if client.token_burst is None else float(client.token_burst),
            max_wait_ms=client.max_wait_ms or 0,
        )

    @property
    def unlimited(self) -> bool:
        return self.requests_per_s is None and self.tokens_per_min is None

    def check(self, state: ClientState | None, *, tokens: int, now_ms: int) -> Verdict:
        """Charge one request and ``tokens`` tokens, both or neither."""
        state = state or ClientState()
        takes: dict[str, Take] = {}
        if self.requests_per_s is not None:
            takes["requests_per_s"] = take(
                state.requests,
                cost=1.0,
                rate_per_s=self.requests_per_s,
                burst=self.burst,
                now_ms=now_ms,
                max_wait_ms=self.max_wait_ms,
            )
        if self.tokens_per_min is not None:
            takes["tokens_per_min"] = take(
                state.tokens,
                cost=float(tokens),
                rate_per_s=self.tokens_per_min / 60,
                burst=self._token_burst(),
                now_ms=now_ms,
                max_wait_ms=self.max_wait_ms,
            )
        refused = {name: t for name, t in takes.items() if not t.allowed}
        if not refused:
            return Verdict(
                ClientState(
                    _bucket(takes, "requests_per_s", state.requests),
                    _bucket(takes, "tokens_per_min", state.tokens),
                ),
                True,
                max((t.wait_ms for t in takes.values()), default=0),
                0,
            )
        worst = max(refused, key=lambda name: refused[name].retry_after_ms)
        return Verdict(
            self._uncharged(state, now_ms), False, 0, refused[worst].retry_after_ms, worst
        )

    def _token_burst(self) -> float:
        assert self.tokens_per_min is not None
        return self.tokens_per_min if self.token_burst is None else self.token_burst

    def _uncharged(self, state: ClientState, now_ms: int) -> ClientState:
        requests, tokens = state.requests, state.tokens
        if self.requests_per_s is not None:
            requests = refill(
                requests, rate_per_s=self.requests_per_s, burst=self.burst, now_ms=now_ms
            )
        if self.tokens_per_min is not None:
            tokens = refill(
                tokens,
                rate_per_s=self.tokens_per_min / 60,
                burst=self._token_burst(),
                now_ms=now_ms,
            )
        return ClientState(requests, tokens)


def _bucket(takes: dict[str, Take], name: str, old: Bucket | None) -> Bucket | None:
    return takes[name].bucket if name in takes else old
