"""faust tables: per-client state, co-partitioned with the request topic.

Requests are keyed by client id, so every table here has the request topic's
partition count and is written only from a stream over a co-partitioned topic:
each partition's state has exactly one writer in the whole group, which is what
makes the limits exact across any number of workers without Redis.

- ``client_buckets``: client id → rate-limit buckets (written by the request agent).
- ``done``: client id + request id → when it was answered ok (written by the
  request's dispatch task, in the request's own partition: see ``ChangelogTable``).
  A request already answered ok is not served again: a replay, or a repeat after
  a crash that got as far as recording the outcome. Entries older than the dedupe
  window are evicted and tombstoned by ``DoneSweeper`` (``turnout.core.retention``).
- ``affinity``: client id + cache key → the backend that served it last ok (routes
  with ``cache_affinity``; written like ``done``, see ``turnout/core/affinity.py``).

Workers keep tables in RocksDB by default (``TURNOUT_STORE=rocksdb://``, through
rocksdict): state survives a restart on disk, and a restarted worker reads only
the changelog written since, not all of it. Each worker needs its own
``TURNOUT_DATA_DIR``: ``lock_data_dir`` refuses to share one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import faust
from faust.types import TP, TableT

from turnout import logs
from turnout.core import retention
from turnout.errors import StartupError
from turnout.settings import Settings

log = logs.get("turnout.tables")


@dataclasses.dataclass(frozen=True)
class Tables:
    client_buckets: TableT[bytes, bytes]
    done: TableT[bytes, bytes]
    affinity: TableT[bytes, bytes]


def declare(app: faust.App, settings: Settings) -> Tables:
    window_ms = settings.dedupe_retention_s * 1000
    return Tables(
        client_buckets=app.Table(
            "client-buckets",
            partitions=settings.request_partitions,
            key_type=bytes,
            value_type=bytes,
            options=rocksdb_options(),
        ),
        done=app.Table(
            "done",
            partitions=settings.request_partitions,
            key_type=bytes,
            value_type=bytes,
            options=rocksdb_options(),
            # Evicted ids are tombstoned; compaction drops them, and old segments
            # fall out with the window. Segments roll often enough (a quarter of the
            # window, 1 min to 1 day) for either to happen: Kafka's default of 7
            # days would keep two weeks of ids for a cold start to read.
            extra_topic_configs={
                "cleanup.policy": "compact,delete",
                "retention.ms": str(window_ms),
                "segment.ms": str(min(max(window_ms // 4, 60_000), 86_400_000)),
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


def rocksdb_options() -> dict[str, int]:
    """RocksDB sizes per partition database, bounded for a worker's memory.

    faust's defaults are a 2 GB block cache and three 64 MB write buffers per
    database, and a worker opens one per table and partition (16 with 8 partitions):
    the worker's RSS would grow for hours towards gigabytes. A fresh dict per table,
    because faust's store pops keys from it.
    """
    return {
        "write_buffer_size": 4 * 1024 * 1024,
        "max_write_buffer_number": 2,
        "block_cache_size": 8 * 1024 * 1024,
        "target_file_size_base": 16 * 1024 * 1024,
    }


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
    broker is away) is logged and dropped: the value is in the store, and what it costs
    is that state after a crash or a rebalance, never a request.

    ``get`` must run in a context whose faust current event is a record of the key's
    partition (the agent's iteration, or a task it started), as faust itself reads.
    ``put`` writes to the partition it is given. Once the broker has a changelog record,
    its offset is persisted in a RocksDB store (as faust does for its own writes), so a
    restart recovers only what came after it.
    """

    def __init__(self, table: TableT[bytes, bytes], app: faust.App) -> None:
        # App.Table is typed to return the TableT protocol; it makes a faust.Table,
        # whose store (data, set_persisted_offset) this class reads.
        self._table = cast("faust.Table[bytes, bytes]", table)
        self._app = app
        self._topic = table.changelog_topic.get_topic_name()
        self._cursors: dict[int, bytes | None] = {}
        self._persisted: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"<ChangelogTable {self._topic} store={type(self._table.data).__module__}>"

    def _dbs(self) -> dict[int, Any] | None:
        """RocksDB handles by partition (faust's store keeps them), or None for memory."""
        dbs = getattr(self._table.data, "_dbs", None)
        return dbs if isinstance(dbs, dict) else None

    def get(self, key: bytes) -> bytes | None:
        store = self._table.data
        # ``in`` first: a lookup of a missing key raises and catches KeyError in faust.
        return store[key] if key in store else None

    async def put(self, partition: int, key: bytes, value: bytes) -> None:
        store = self._table.data
        dbs = self._dbs()
        if dbs is None:
            store[key] = value
        elif partition in dbs:
            dbs[partition].put(key, value)
        # else: the partition was revoked while its request finished. faust would
        # reopen its database; the changelog record still tells the next owner.
        await self._send(partition, key, value)

    async def _send(self, partition: int, key: bytes, value: bytes | None) -> None:
        try:
            # faust annotates the result as an Awaitable; its aiokafka driver returns the
            # send's asyncio.Future, whose callback this relies on.
            sent = cast(
                "asyncio.Future[Any]",
                await self._app.producer.send(self._topic, key, value, partition, None, None),
            )
        except Exception as exc:  # the broker is away: the worker keeps serving from the store
            log.warning("changelog_unsent", topic=self._topic, error=type(exc).__name__)
            return
        sent.add_done_callback(self._sent)

    def _sent(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            _log_unsent(fut)
            return
        meta = fut.result()
        partition, offset = meta.topic_partition.partition, meta.offset
        dbs = self._dbs()
        # Only for a partition still open here: faust would reopen a revoked one.
        if dbs is None or partition not in dbs or offset <= self._persisted.get(partition, -1):
            return
        self._persisted[partition] = offset
        self._table.data.set_persisted_offset(TP(self._topic, partition), offset)

    # -- eviction ----------------------------------------------------------------

    def expired(
        self, owned: Iterable[int], *, now_ms: int, window_ms: int, budget: int
    ) -> list[tuple[int | None, bytes]]:
        """Up to about ``budget`` expired entries: (partition to tombstone, key).

        RocksDB keeps a database per partition in key order, so each owned partition
        is read onward from where the last sweep stopped, wrapping at its end. The
        memory store is one dict in insertion order (oldest first), read from its
        front. A partition of None: delete locally only (a standby's entry, or one
        that does not say its partition); its owner tombstones it.
        """
        owned = sorted(set(owned))
        dbs = self._dbs()
        if dbs is None:
            data: Mapping[bytes, bytes] = self._table.data.data
            keys = retention.oldest_first_expired(
                data.items(), now_ms=now_ms, window_ms=window_ms, limit=budget
            )
            out: list[tuple[int | None, bytes]] = []
            for key in keys:
                p = retention.partition_of(data[key])
                out.append((p if p in owned else None, key))
            return out
        per = max(1, budget // max(1, len(owned)))
        found: list[tuple[int | None, bytes]] = []
        for p in owned:
            db = dbs.get(p)
            if db is not None:
                items = self._scan(p, db, per)
                keys = retention.select_expired(items, now_ms=now_ms, window_ms=window_ms)
                found.extend((p, key) for key in keys)
        return found

    def _scan(self, partition: int, db: Any, limit: int) -> list[tuple[bytes, bytes]]:
        """``limit`` entries of one partition's database after its cursor (synchronous)."""
        skip = self._table.data.offset_key  # type: ignore[attr-defined]
        it = db.iter()
        cursor = self._cursors.get(partition)
        if cursor is None:
            it.seek_to_first()
        else:
            it.seek(cursor)
        items: list[tuple[bytes, bytes]] = []
        while it.valid() and len(items) < limit:
            key = it.key()
            if key != skip:
                items.append((key, it.value()))
            it.next()
        self._cursors[partition] = it.key() if it.valid() else None
        del it
        return items

    async def evict(self, entries: Iterable[tuple[int | None, bytes]]) -> int:
        """Delete ``entries`` here, then tombstone those of a partition in the changelog."""
        entries = list(entries)
        dbs = self._dbs()
        for partition, key in entries:
            if dbs is None:
                self._table.data.data.pop(key, None)
            elif partition is not None and partition in dbs:
                dbs[partition].delete(key)
        for partition, key in entries:
            if partition is not None:
                await self._send(partition, key, None)
        return len(entries)


class DoneSweeper:
    """Evicts ``done`` entries older than the window, from the partitions this worker owns.

    It runs as its own task every ``interval_s``, apart from the request path, and
    reads at most ``budget`` entries a pass; the decision is ``turnout.core.retention``'s.
    """

    def __init__(
        self,
        table: ChangelogTable,
        owned: Callable[[], Iterable[int]],
        *,
        window_s: float,
        budget: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table = table
        self._owned = owned
        self._window_ms = int(window_s * 1000)
        self._budget = budget
        self._clock = clock
        self.evicted = 0

    def __repr__(self) -> str:
        return f"<DoneSweeper window_ms={self._window_ms} evicted={self.evicted}>"

    async def sweep(self) -> int:
        now_ms = int(self._clock() * 1000)
        entries = self._table.expired(
            self._owned(), now_ms=now_ms, window_ms=self._window_ms, budget=self._budget
        )
        evicted = await self._table.evict(entries) if entries else 0
        self.evicted += evicted
        return evicted

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                evicted = await self.sweep()
            except Exception:  # never kill the worker over housekeeping; say so
                log.exception("done_sweep_failed")
                continue
            if evicted:
                log.debug("done_evicted", entries=evicted, total=self.evicted)


class DataDirInUse(StartupError, RuntimeError):
    """Another live worker holds this data directory."""

    code = "data_dir_in_use"


def lock_data_dir(path: str) -> int:
    """Hold ``path`` for this process: two workers must never share a RocksDB directory.

    The lock is an flock on ``<path>/.lock``: the OS drops it when the process dies,
    even by kill -9, so a restart never finds a stale lock. Returns the file descriptor
    (keep it open for the life of the worker).
    """
    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise DataDirInUse(
            f"TURNOUT_DATA_DIR {path!r} is in use by another worker (pid {holder}); "
            "give every worker on this machine its own TURNOUT_DATA_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _log_unsent(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("changelog_unsent", error=type(fut.exception()).__name__)
