"""Kafka's metadata refresh backoff, which aiokafka 0.14 lacks.

Kafka's Java client waits ``retry.backoff.ms`` between metadata refreshes. aiokafka
refreshes as often as it is asked, and two of its loops ask again as soon as the
previous refresh ends:

- the producer's sender, while a batch waits for a partition whose leader is
  unknown (``Sender._sender_routine``: "try to update cluster metadata and wait
  backoff time", though it waits only for the refresh);
- the fetcher, while a partition's metadata is invalid.

Seen here: a controlled shutdown of the only broker answers a last metadata request
with no leaders, then refuses connections. A worker with replies to publish then
ran those loops flat out for the whole outage: 1.2 cores and 145,000 suppressed
log lines in 11 s (``tests/integration/test_broker_outage.py``, 1 run in 6; aiokafka
issue #1155 is the fetcher's half of it).

``install()`` wraps ``AIOKafkaClient._metadata_update`` (the one function every
refresh goes through, in every thread) so that a refresh that follows a *failed*
one starts no sooner than the client's ``retry_backoff_ms`` after it ended. A
refresh after a successful one is not delayed: spacing every refresh made the
rebalance-storm drill (tests/integration/test_rebalance.py) leave partitions
unserved in 3 runs of 3, and it passed again with the backoff limited to failures.
The decision is ``wait_s``; docs/faust-consumer.md lists this among the private
names turnout touches, and tests/unit/test_faust_tripwire.py pins its source.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from aiokafka.client import AIOKafkaClient

_FAILED_AT = "_turnout_metadata_refresh_failed_at"


def wait_s(last_end: float | None, now: float, backoff_s: float) -> float:
    """How long a refresh waits before it starts; ``last_end`` is when the previous
    refresh ended if it failed, None if it succeeded.

    >>> wait_s(None, 10.0, 0.1)
    0.0
    >>> round(wait_s(10.0, 10.03, 0.1), 3)
    0.07
    >>> wait_s(10.0, 10.5, 0.1)
    0.0
    """
    if last_end is None:
        return 0.0
    return max(0.0, last_end + backoff_s - now)


def install() -> None:
    """Wrap ``AIOKafkaClient._metadata_update`` once per process (idempotent)."""
    original = AIOKafkaClient._metadata_update
    if getattr(original, "_turnout_backoff", False):
        return

    @functools.wraps(original)
    async def metadata_update(self: AIOKafkaClient, cluster_metadata: Any, topics: Any) -> Any:
        loop = asyncio.get_running_loop()
        delay = wait_s(getattr(self, _FAILED_AT, None), loop.time(), self._retry_backoff)
        if delay:
            await asyncio.sleep(delay)
        ok = False
        try:
            ok = await original(self, cluster_metadata, topics)
            return ok
        finally:
            setattr(self, _FAILED_AT, None if ok else loop.time())

    metadata_update._turnout_backoff = True  # type: ignore[attr-defined]
    AIOKafkaClient._metadata_update = metadata_update
