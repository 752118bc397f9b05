"""When to ask the broker to batch fetches: pure, no I/O.

A worker whose fetches ask for one byte (Kafka's default) sends a new fetch as soon
as the last one returned, so at a few hundred requests per second each fetch brings
one or two records. On a small machine those fetches, each a syscall into the
broker and a response decoded in Python, cost about as much CPU as the requests
themselves. Asking for many bytes makes the broker hold each fetch until that much
is ready or ``fetch_wait_ms`` has passed: records arrive in batches, at the price
of up to ``fetch_wait_ms`` more latency. That price is worth paying only under
load, so ``FetchBatching`` turns batching on when the intake rate passes
``above_rps`` and off again below half of it (the gap keeps it from flapping)::

    batching = FetchBatching(above_rps=200)
    new = batching.update(records_since_last_call, now_s)
    if new is not None:
        set_fetch(aiokafka_consumer, new)
"""

from __future__ import annotations

from dataclasses import dataclass, field

UNBATCHED = 1
#: Far more than a few milliseconds of requests: the fetch wait, not the size, ends a fetch,
#: unless a backlog is already there (then the broker answers at once).
BATCHED = 256 * 1024


@dataclass
class FetchBatching:
    above_rps: float
    window_s: float = 0.5
    batching: bool = False
    _count: int = field(default=0, repr=False)
    _since: float | None = field(default=None, repr=False)

    def update(self, records: int, now_s: float) -> int | None:
        """Count ``records`` read since the last call; the new min bytes, or None if unchanged."""
        if self.above_rps <= 0:
            return None
        if self._since is None:
            self._since = now_s
        self._count += records
        elapsed = now_s - self._since
        if elapsed < self.window_s:
            return None
        rate = self._count / elapsed
        self._count, self._since = 0, now_s
        if not self.batching and rate >= self.above_rps:
            self.batching = True
            return BATCHED
        if self.batching and rate < self.above_rps / 2:
            self.batching = False
            return UNBATCHED
        return None

    @property
    def min_bytes(self) -> int:
        return BATCHED if self.batching else UNBATCHED


def set_fetch(consumer: object, min_bytes: int, max_wait_ms: int | None = None) -> bool:
    """Set the fetch size (and wait) of a started ``AIOKafkaConsumer``; False if not started.

    aiokafka 0.14 reads both from its fetcher whenever it builds the next fetch request,
    so a change applies from the next fetch on. Plain attribute writes: safe from the
    thread that owns the consumer or, under the GIL, from another.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None:
        return False
    fetcher._fetch_min_bytes = min_bytes
    if max_wait_ms is not None:
        fetcher._fetch_max_wait_ms = max_wait_ms
    return True
