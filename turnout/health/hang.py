"""Is a backend hung? A pure detector: the clock is passed in, nothing is awaited.

A hung inference server is the failure a success rate cannot see: its port accepts
connections and nothing comes back, so no call fails, none succeeds, and the window
of outcomes simply stops filling. The only signal is time. Two passive facts decide:

- the age of the backend's oldest call in flight, against the backend's own recent
  latency (``bound = max(hang_floor_ms, hang_factor x p99)``: 3 s or 3 times p99);
- progress: when the backend last *completed* something (answered a call, with any
  status, sent a stream chunk, or passed a probe). A call still running is not
  evidence of life; only a completion is.

A backend is hung when a call has been in flight for at least ``bound`` and nothing
has completed for at least ``bound``. One long call among many short ones is not a
hang (the short ones complete); a backend that stopped answering is, within ``bound``
of its oldest stuck call, which is the issue's promise ("out of rotation within 3 s,
or 3 times its recent p99, whichever is larger").

The trade-off: a backend whose only call in flight legitimately runs longer than the
bound (one long generation on an idle server, no stream) looks hung. Streams are not
at risk (each chunk is progress), and passing probes count as progress; a deployment
whose calls vary that much sets ``hang_floor_ms`` higher.

    >>> hang_bound_ms(None, floor_ms=3000, factor=3.0)
    3000
    >>> hang_bound_ms(2500.0, floor_ms=3000, factor=3.0)
    7500
    >>> hang_reason(oldest_call_ms=0, last_progress_ms=0, p99_ms=100.0, now_ms=2999,
    ...             floor_ms=3000, factor=3.0) is None
    True
    >>> print(hang_reason(oldest_call_ms=0, last_progress_ms=0, p99_ms=100.0, now_ms=3000,
    ...                   floor_ms=3000, factor=3.0))  # doctest: +NORMALIZE_WHITESPACE
    hung: a call in flight for 3000 ms and nothing completed for 3000 ms
    (bound 3000 ms = max(3000 ms, 3 x p99 100 ms))
"""

from __future__ import annotations

import math


def hang_bound_ms(p99_ms: float | None, *, floor_ms: int, factor: float) -> int:
    """How long calls may go without any completion: ``max(floor, factor x p99)``."""
    if p99_ms is None:
        return floor_ms
    return max(floor_ms, math.ceil(factor * p99_ms))


def hang_reason(
    *,
    oldest_call_ms: int | None,
    last_progress_ms: int | None,
    p99_ms: float | None,
    now_ms: int,
    floor_ms: int,
    factor: float,
) -> str | None:
    """Why the backend counts as hung at ``now_ms``, or None if it does not.

    ``oldest_call_ms`` is when its oldest call in flight started (None: nothing in
    flight); ``last_progress_ms`` when it last completed anything (None: never).
    """
    if oldest_call_ms is None:
        return None
    bound = hang_bound_ms(p99_ms, floor_ms=floor_ms, factor=factor)
    age = now_ms - oldest_call_ms
    if age < bound:
        return None
    # Any completion within the bound, by this call or another, means it is alive.
    quiet = age if last_progress_ms is None else now_ms - last_progress_ms
    if quiet < bound:
        return None
    why = (
        f"max({floor_ms} ms, {factor:g} x p99 {p99_ms:.0f} ms)"
        if p99_ms is not None
        else f"{floor_ms} ms, no latency measured yet"
    )
    return (
        f"hung: a call in flight for {age} ms and nothing completed for {min(quiet, age)} ms "
        f"(bound {bound} ms = {why})"
    )
