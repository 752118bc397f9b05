"""Per-call timeouts that fit the backend: configured, or derived from its latency. Pure.

Every call gets three limits:

    total       the whole call, first byte to last
    first_byte  until the response starts (for a stream: its first chunk)
    stall       between two chunks of a stream

Each is the backend's configured value when set (``timeout_ms``,
``first_byte_timeout_ms``, ``stall_timeout_ms``), else derived from its recent
latency distribution, and always capped by the request's remaining deadline:

    total       plain calls: min(timeout_ms, max(10 s, 10 x p99, hang_after_ms)) once
                p99 is known, else timeout_ms; streams: timeout_ms (a long stream that keeps
                sending is healthy; the first-byte and stall limits catch a wedge)
    first_byte  streams: max(3 s, 3 x p99), the hang bound (a first chunk comes no
                later than a whole answer); plain calls: the total (their headers come
                with the answer)
    stall       max(3 s, 3 x p99)

p99 is of whole answers, so the derived first-byte and stall limits are generous;
a server whose p99 is 200 ms still gets 3 s to send its next chunk.

    >>> call_timeouts(p99_ms=None, remaining_ms=60_000, stream=True)
    CallTimeouts(total_ms=60000, first_byte_ms=3000, stall_ms=3000, deadline_capped=True)
    >>> call_timeouts(p99_ms=2000.0, remaining_ms=300_000, stream=False)
    CallTimeouts(total_ms=20000, first_byte_ms=20000, stall_ms=6000, deadline_capped=False)
    >>> call_timeouts(p99_ms=2000.0, remaining_ms=300_000, stream=False, hang_after_ms=60_000)
    CallTimeouts(total_ms=60000, first_byte_ms=60000, stall_ms=6000, deadline_capped=False)
    >>> call_timeouts(p99_ms=2000.0, remaining_ms=300_000, stream=True)
    CallTimeouts(total_ms=120000, first_byte_ms=6000, stall_ms=6000, deadline_capped=False)
"""

from __future__ import annotations

import dataclasses
import math

TOTAL_FLOOR_MS = 10_000
TOTAL_FACTOR = 10.0
CHUNK_FLOOR_MS = 3_000
CHUNK_FACTOR = 3.0


@dataclasses.dataclass(frozen=True, slots=True)
class CallTimeouts:
    total_ms: int
    first_byte_ms: int
    stall_ms: int
    deadline_capped: bool
    """The request's deadline, not the backend's limits, set the total."""

    @property
    def total_s(self) -> float:
        return self.total_ms / 1000

    @property
    def first_byte_s(self) -> float:
        return self.first_byte_ms / 1000

    @property
    def stall_s(self) -> float:
        return self.stall_ms / 1000


def call_timeouts(
    *,
    p99_ms: float | None,
    remaining_ms: float,
    stream: bool,
    timeout_ms: int = 120_000,
    first_byte_timeout_ms: int | None = None,
    stall_timeout_ms: int | None = None,
    hang_after_ms: int | None = None,
) -> CallTimeouts:
    """The limits of one call; see the module docstring.

    ``hang_after_ms`` (the backend's own hang floor) says how long a plain call may
    legitimately run: the derived total never cuts one sooner.
    """
    limit = timeout_ms
    if p99_ms is not None and not stream:
        floor = max(TOTAL_FLOOR_MS, hang_after_ms or 0)
        limit = min(timeout_ms, max(floor, math.ceil(TOTAL_FACTOR * p99_ms)))
    chunk = (
        CHUNK_FLOOR_MS if p99_ms is None else max(CHUNK_FLOOR_MS, math.ceil(CHUNK_FACTOR * p99_ms))
    )
    remaining = max(1, math.floor(remaining_ms))
    total = min(limit, remaining)
    if first_byte_timeout_ms is not None:
        first = first_byte_timeout_ms
    else:
        first = chunk if stream else total
    stall = stall_timeout_ms if stall_timeout_ms is not None else chunk
    return CallTimeouts(
        total_ms=total,
        first_byte_ms=min(first, total),
        stall_ms=min(stall, total),
        deadline_capped=remaining < limit,
    )
