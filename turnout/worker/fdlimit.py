"""Open-file limit: every backend call in flight holds a socket, so a worker allowed
``TURNOUT_MAX_IN_FLIGHT`` calls needs that many descriptors, plus its Kafka
connections, RocksDB files and logs. Linux's usual soft limit (1024) would make the
1,025th concurrent call fail with "too many open files"; the hard limit is usually
far higher, and a process may raise its own soft limit up to it.
"""

from __future__ import annotations

import resource

HEADROOM = 1024
"""Descriptors kept for everything that is not a backend call."""


def wanted(soft: int, hard: int, max_in_flight: int) -> int | None:
    """The soft limit to set, or None to leave it (already enough, or nothing to gain).

    >>> wanted(1024, 524288, 16384)
    17408
    >>> wanted(1024, 4096, 16384)  # capped by the hard limit
    4096
    >>> wanted(65536, 524288, 16384) is None
    True
    """
    need = max_in_flight + HEADROOM
    if hard != resource.RLIM_INFINITY:
        need = min(need, hard)
    return need if need > soft else None


def raise_for(max_in_flight: int) -> tuple[int, int]:
    """Raise this process's soft open-file limit for ``max_in_flight`` calls; return
    (soft, hard) as they are afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = wanted(soft, hard, max_in_flight)
    if new is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft, hard
