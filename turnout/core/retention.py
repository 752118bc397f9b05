"""How long the ``done`` table remembers a request answered ok: the pure decisions.

Every request answered ok leaves one entry (client id + request id → when, which
backend, which partition) so that a replay or a repeat is not served twice. Kept
forever, that is about 8.6 million entries a day at 100 req/s. An entry is needed
only while the request itself can still come back: while its record is in the
request topic (its retention) or a replay of it is being made. So entries older
than the dedupe window are evicted: deleted from the local store and tombstoned in
the changelog (compaction then drops them, and a cold start never reads them).

The store is swept a bounded number of entries at a time (``TURNOUT_DEDUPE_SWEEP_KEYS``
per ``TURNOUT_DEDUPE_SWEEP_INTERVAL_S``), never on the request path: an entry lives
at least the window, and goes within one full pass of the sweep after it.

>>> value = done_value(at_ms=1_000, backend="b", replay=False, partition=3)
>>> answered_at_ms(value), partition_of(value)
(1000, 3)
>>> expired(value, now_ms=1_000 + 60_000, window_ms=60_000)
False
>>> expired(value, now_ms=1_001 + 60_000, window_ms=60_000)
True
>>> expired(b"not json", now_ms=0, window_ms=60_000)  # unreadable: nothing to keep it for
True
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson


def done_value(*, at_ms: int, backend: str | None, replay: bool, partition: int) -> bytes:
    """The ``done`` entry of a request answered ok at ``at_ms`` from ``partition``."""
    return orjson.dumps({"at_ms": at_ms, "backend": backend, "replay": replay, "p": partition})


def _fields(value: bytes) -> dict[str, object] | None:
    try:
        fields = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return fields if isinstance(fields, dict) else None


def answered_at_ms(value: bytes) -> int | None:
    """When the request was answered, or None if the entry cannot say."""
    fields = _fields(value)
    at = None if fields is None else fields.get("at_ms")
    return at if isinstance(at, int) and not isinstance(at, bool) else None


def partition_of(value: bytes) -> int | None:
    """The request partition the entry belongs to (older entries may not say)."""
    fields = _fields(value)
    p = None if fields is None else fields.get("p")
    return p if isinstance(p, int) and not isinstance(p, bool) else None


def expired(value: bytes, *, now_ms: int, window_ms: int) -> bool:
    """True once the entry is older than the window, or unreadable (it dedupes nothing)."""
    at = answered_at_ms(value)
    return at is None or now_ms - at > window_ms


def select_expired(
    items: Iterable[tuple[bytes, bytes]], *, now_ms: int, window_ms: int
) -> list[bytes]:
    """The keys among ``items`` whose entries are past the window.

    >>> old = done_value(at_ms=0, backend=None, replay=False, partition=0)
    >>> new = done_value(at_ms=90_000, backend=None, replay=False, partition=0)
    >>> select_expired([(b"a", old), (b"b", new)], now_ms=100_000, window_ms=60_000)
    [b'a']
    """
    return [key for key, value in items if expired(value, now_ms=now_ms, window_ms=window_ms)]


def oldest_first_expired(
    items: Iterable[tuple[bytes, bytes]], *, now_ms: int, window_ms: int, limit: int
) -> list[bytes]:
    """For a store kept in insertion order: expired keys from the front, up to ``limit``.

    It stops at the first entry still inside the window; what is behind it is younger
    (or was rewritten later, and then waits at most one more window).

    >>> old = done_value(at_ms=0, backend=None, replay=False, partition=0)
    >>> new = done_value(at_ms=90_000, backend=None, replay=False, partition=0)
    >>> oldest_first_expired(
    ...     [(b"a", old), (b"b", new), (b"c", old)], now_ms=100_000, window_ms=60_000, limit=10
    ... )
    [b'a']
    """
    keys: list[bytes] = []
    for key, value in items:
        if len(keys) >= limit or not expired(value, now_ms=now_ms, window_ms=window_ms):
            break
        keys.append(key)
    return keys
