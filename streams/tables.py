"""faust tables: per-client state, co-partitioned with the request topic.

Requests are keyed by client id, so every table here has the request topic's
partition count and is written only from a stream over a co-partitioned topic:
each partition's state has exactly one writer in the whole group, which is what
makes the limits exact across any number of workers without Redis.

- ``client_buckets``: client id → rate-limit buckets (written by the request agent).
- ``done``: client id + request id → when it was answered ok (written by the
  request's dispatch task, in the request's own partition: see ``ChangelogTable``).
  A request already answered ok is not served again: a replay, or a repeat after
  a crash that got as far as recording the outcome.
- ``affinity``: client id + cache key → the backend that served it last ok (routes
  with ``cache_affinity``; written like ``done``, see ``turnout/affinity.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Protocol

import faust

from streams.settings import Settings
from turnout import logs

log = logs.get("turnout.tables")


@dataclasses.dataclass(frozen=True)
class Tables:
    client_buckets: faust.Table[bytes, bytes]
    done: faust.Table[bytes, bytes]
    affinity: faust.Table[bytes, bytes]


def declare(app: faust.App, settings: Settings) -> Tables:
    return Tables(
        client_buckets=app.Table(
            "client-buckets",
            partitions=settings.request_partitions,
            key_type=bytes,
            value_type=bytes,
        ),
        done=app.Table(
            "done",
            partitions=settings.request_partitions,
            key_type=bytes,
            value_type=bytes,
            # Old entries fall out of the changelog: dedupe covers the retention.
            extra_topic_configs={
                "cleanup.policy": "compact,delete",
                "retention.ms": str(settings.dedupe_retention_s * 1000),
            },
        ),
        affinity=app.Table(
            "affinity",
            partitions=settings.request_partitions,
            key_type=bytes,
            value_type=bytes,
            extra_topic_configs={"cleanup.policy": "compact"},
        ),
    )


def done_key(client_id: str, request_id: str) -> bytes:
    return f"{client_id}\x00{request_id}".encode()


class StateTable(Protocol):
    """What the dispatcher needs of a table: read a key, write one in a partition."""

    def get(self, key: bytes) -> bytes | None: ...

    async def put(self, partition: int, key: bytes, value: bytes) -> None: ...


class MemoryTable(dict[bytes, bytes]):
    """A ``StateTable`` in a dict: for the dispatcher's unit tests and tools without Kafka."""

    async def put(self, partition: int, key: bytes, value: bytes) -> None:
        self[key] = value


class ChangelogTable:
    """A faust table, read and written around faust's per-message send buffer.

    ``table[key] = value`` puts the changelog record in faust's producer buffer. One
    task drains that buffer a record per event-loop turn, and every message any agent
    reads waits while it holds more than 100 records (``ProducerBuffer.wait_until_ebb``):
    under load, when a loop turn is long, intake slowed down to the buffer's pace and
    the worker fell behind with idle CPU. So ``put`` writes the value into the table's
    store directly and sends its changelog record straight to the producer, which
    batches it like any reply (waiting only if the producer itself is full); faust
    flushes the producer before every commit. A record the producer refuses (the
    broker is away) is logged and dropped: the value is in memory, and what it costs
    is that state after a crash or a rebalance, never a request.

    Both calls must run in a context whose faust current event is a record of the same
    partition (the agent's iteration, or a task it started): the store of a partition is
    chosen from it, as faust itself does.
    """

    def __init__(self, table: faust.Table[bytes, bytes], app: faust.App) -> None:
        self._table = table
        self._app = app
        self._topic = table.changelog_topic.get_topic_name()

    def get(self, key: bytes) -> bytes | None:
        store = self._table.data
        # ``in`` first: a lookup of a missing key raises and catches KeyError in faust.
        return store[key] if key in store else None

    async def put(self, partition: int, key: bytes, value: bytes) -> None:
        self._table.data[key] = value
        try:
            sent = await self._app.producer.send(self._topic, key, value, partition, None, None)
        except Exception as exc:  # the broker is away: the worker keeps serving from memory
            log.warning("changelog_unsent", topic=self._topic, error=type(exc).__name__)
            return
        sent.add_done_callback(_log_unsent)


def _log_unsent(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("changelog_unsent", error=type(fut.exception()).__name__)
