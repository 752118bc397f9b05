"""The gateway's Kafka side: publish requests, read replies, keep every request's status.

    HTTP call ──► status "queued" (compacted status topic) and the Request (key
                  client_id, reply_to <TURNOUT_REPLY_PREFIX>gateway-<id>), sent together
                  and both acked before the call goes on waiting
    reply topic ──► ReplyChunk: to the waiting stream, if any (never stored)
                └─► Reply: status "done"/"failed" written, waiter woken, webhook sent;
                    the offset is committed (every TURNOUT_COMMIT_INTERVAL_S) only
                    after the status write is acked

Durability: the status topic ``turnout.gateway-status.<id>`` (compacted, key
request id) is read whole into memory at start, and the reply consumer resumes
from its group's committed offset, so after a crash every reply is either in the
status topic already or read again. The in-memory ``StatusStore`` is bounded:
at most ``TURNOUT_GATEWAY_STATUS_MAX`` ids (least recently used dropped first)
for ``TURNOUT_GATEWAY_STATUS_TTL_S`` after their last change; the topic's
retention is the TTL plus an hour. A status never goes backwards (a late
"queued" cannot hide "done"), and the first final reply of an id wins.

One gateway process per gateway id: the reply topic's partitions are assigned
to it by hand (no rebalance wait on restart), committing under the group
``turnout-gateway-<id>``.

It never stops silently. A status write that fails with a retriable Kafka error
(aiokafka's ``retriable`` flag, or the broker unreachable) is retried with backoff
for at most ``TURNOUT_GATEWAY_STATUS_RETRY_S``; any other error, or one that
outlasts that bound, is logged (``gateway_status_write_failed``) and makes
``/readyz`` fail with the reason. The replies of that batch are read again (their
offsets were not committed) after a backoff, and readiness returns with the first
batch recorded. A background task that dies is logged and fails readiness too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from schemas.types import Reply, ReplyChunk, Request, decode_reply_message
from turnout import logs
from turnout.client import REQUEST_TOPIC_CONFIGS
from turnout.core.batching import FetchBatching, set_fetch
from turnout.gateway import GatewaySettings
from turnout.kafka import admin as kafka_admin
from turnout.kafka.admin import client_kwargs as kafka_kwargs
from turnout.settings import Settings

log = logs.get("turnout.gateway")

Status = Literal["queued", "running", "done", "failed"]
_FETCH_WAIT_MS = 500  # aiokafka's default, while fetches are not batched
_RANK = {"queued": 0, "running": 1, "done": 2, "failed": 2}


def now_ms() -> int:
    return int(time.time() * 1000)


class StatusWriteFailed(Exception):
    """A status write failed for good: not retriable, or still failing after the bound."""


def retriable(exc: KafkaError) -> bool:
    """Worth retrying: aiokafka marks it ``retriable``, or the broker is only unreachable."""
    return bool(getattr(exc, "retriable", False)) or isinstance(
        exc, (KafkaConnectionError, KafkaTimeoutError)
    )


class StatusRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One request's status, the value on the status topic."""

    status: Status
    client_id: str
    kind: str = ""
    model: str = ""
    created_ms: int = 0
    updated_ms: int
    reply: dict[str, Any] | None = None
    """The worker's final ``Reply``, as its JSON object."""
    webhook_url: str | None = None
    webhook: Literal["pending", "delivered", "failed"] | None = None

    @property
    def final(self) -> bool:
        return _RANK[self.status] == 2

    def to_wire(self) -> bytes:
        return _encoder.encode(self)

    @classmethod
    def from_wire(cls, raw: bytes) -> StatusRecord:
        return _decoder.decode(raw)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(StatusRecord)


class StatusStore:
    """Request id -> ``StatusRecord``, bounded by count (LRU) and age (TTL); pure, no clock."""

    def __init__(self, max_entries: int, ttl_ms: int) -> None:
        self.max_entries = max_entries
        self.ttl_ms = ttl_ms
        self._items: OrderedDict[str, StatusRecord] = OrderedDict()

    def __repr__(self) -> str:
        return f"<StatusStore entries={len(self._items)} max={self.max_entries}>"

    def __len__(self) -> int:
        return len(self._items)

    def get(self, request_id: str, now: int) -> StatusRecord | None:
        rec = self._items.get(request_id)
        if rec is None:
            return None
        if now - rec.updated_ms > self.ttl_ms:
            del self._items[request_id]
            return None
        self._items.move_to_end(request_id)
        return rec

    def put(self, request_id: str, rec: StatusRecord) -> bool:
        """Store ``rec`` unless it would move the status backwards; True when stored."""
        old = self._items.get(request_id)
        if old is not None and _RANK[rec.status] < _RANK[old.status]:
            return False
        self._items[request_id] = rec
        self._items.move_to_end(request_id)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        return True

    def accepts(self, request_id: str, rec: StatusRecord) -> bool:
        """Whether ``put`` would store ``rec`` (it does not move the status backwards)."""
        old = self._items.get(request_id)
        return old is None or _RANK[rec.status] >= _RANK[old.status]

    def delete(self, request_id: str) -> None:
        self._items.pop(request_id, None)

    def sweep(self, now: int) -> int:
        """Drop every record older than the TTL; return how many."""
        old = [k for k, r in self._items.items() if now - r.updated_ms > self.ttl_ms]
        for k in old:
            del self._items[k]
        return len(old)

    def items(self) -> Iterator[tuple[str, StatusRecord]]:
        return iter(list(self._items.items()))


class Listener:
    """What one HTTP call waits on: the final reply (a Future), and chunks for a stream."""

    def __init__(self, request_id: str, *, stream: bool) -> None:
        self.request_id = request_id
        self.final: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.messages: asyncio.Queue[Reply | ReplyChunk] | None = (
            asyncio.Queue() if stream else None
        )

    def __repr__(self) -> str:
        return f"<Listener {self.request_id} done={self.final.done()}>"

    def deliver(self, message: Reply | ReplyChunk) -> None:
        if self.messages is not None:
            self.messages.put_nowait(message)
        if isinstance(message, Reply) and not self.final.done():
            self.final.set_result(message)


OnFinal = Callable[[str, StatusRecord], Awaitable[None]]


class GatewayKafka:
    """The producer, the reply consumer and the status store of one gateway."""

    def __init__(self, base: Settings, gw: GatewaySettings) -> None:
        self.base = base
        self.gw = gw
        self.store = StatusStore(gw.status_max_entries, int(gw.status_ttl_s * 1000))
        self._writing: dict[str, StatusRecord] = {}
        """Statuses whose write is under way: lookups see them (read your writes)."""
        self.on_final: OnFinal | None = None
        self._listeners: dict[str, Listener] = {}
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self.started = False
        self.failure: str | None = None
        """Why the gateway is not ready although Kafka answers (None: nothing failed)."""

    def __repr__(self) -> str:
        return (
            f"<GatewayKafka id={self.gw.gateway_id} listeners={len(self._listeners)} "
            f"store={self.store!r}>"
        )

    @property
    def producer(self) -> AIOKafkaProducer:
        assert self._producer is not None, "GatewayKafka.start() has not run"
        return self._producer

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        partitions = await self._ensure_topics()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.base.bootstrap,
            acks="all",
            linger_ms=2,
            enable_idempotence=True,
            **kafka_kwargs(),
        )
        await self._producer.start()
        loaded = await self._load_status(partitions[self.gw.status_topic])
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.base.bootstrap,
            group_id=self.gw.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **kafka_kwargs(),
        )
        await consumer.start()
        topic = self.gw.reply_topic(self.base)
        consumer.assign([TopicPartition(topic, p) for p in range(partitions[topic])])
        self._consumer = consumer
        self._tasks = [
            asyncio.create_task(self._consume(), name="gateway-replies"),
            asyncio.create_task(self._sweep(), name="gateway-status-sweep"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_ended)
        self.started = True
        log.info(
            "gateway_kafka_started",
            reply_topic=self.gw.reply_topic(self.base),
            status_topic=self.gw.status_topic,
            statuses_loaded=loaded,
        )
        for rid, rec in self.store.items():  # webhooks a crash left undelivered
            if rec.final and rec.webhook == "pending":
                self._spawn(self._final(rid, rec))

    async def stop(self) -> None:
        self.started = False
        for task in [*self._tasks, *self._background]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or not self.started:
            return
        exc = task.exception()
        self.failure = f"{task.get_name()} stopped: {type(exc).__name__ if exc else 'returned'}"
        log.error("gateway_task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)

    async def ready(self) -> bool:
        """Kafka answers a metadata request, the reply consumer runs, status writes succeed."""
        if not self.started or self.failure is not None or any(t.done() for t in self._tasks):
            return False
        try:
            async with asyncio.timeout(2):
                await self.producer.client.fetch_all_metadata()
        except (KafkaError, TimeoutError, OSError):
            return False
        return True

    async def _ensure_topics(self) -> dict[str, int]:
        """Create the topics the gateway uses if missing, durably; refuse unsafe ones.

        Returns their partition counts. Raises ``KafkaStartupError`` (one line) when
        Kafka is unreachable, refuses us, or a request or reply topic can lose records.
        """
        retention = int((self.gw.status_ttl_s + 3600) * 1000)
        return await kafka_admin.ensure_topics(
            self.base.bootstrap,
            [],
            1,
            specs={
                self.base.request_topic: (
                    self.base.request_partitions,
                    dict(REQUEST_TOPIC_CONFIGS),
                ),
                self.gw.reply_topic(self.base): (self.base.reply_partitions, {}),
                self.gw.status_topic: (
                    1,
                    {"cleanup.policy": "compact,delete", "retention.ms": str(retention)},
                ),
            },
            check_safe=[self.base.request_topic, self.gw.reply_topic(self.base)],
        )

    async def _load_status(self, partitions: int) -> int:
        """Read the status topic from the beginning to its end at start; return records read."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.base.bootstrap, **kafka_kwargs(), enable_auto_commit=False,
        )
        await consumer.start()
        count = 0
        try:
            tps = [TopicPartition(self.gw.status_topic, p) for p in range(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            todo = {tp for tp in tps if ends[tp] > 0}
            while todo:
                for recs in (await consumer.getmany(*todo, timeout_ms=1000)).values():
                    for rec in recs:
                        count += 1
                        self._apply_status(rec.key, rec.value)
                for tp in list(todo):
                    if await consumer.position(tp) >= ends[tp]:
                        todo.discard(tp)
        finally:
            await consumer.stop()
        self.store.sweep(now_ms())
        return count

    def _apply_status(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        rid = key.decode("utf-8", "replace")
        if value is None:
            self.store.delete(rid)
            return
        try:
            rec = StatusRecord.from_wire(value)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.warning("gateway_status_unreadable", request_id=rid)
            return
        self.store.put(rid, rec)  # in topic order; a status never goes backwards

    # -- requests -------------------------------------------------------------------------------

    @contextmanager
    def listen(self, request_id: str, *, stream: bool = False) -> Iterator[Listener]:
        listener = Listener(request_id, stream=stream)
        self._listeners[request_id] = listener
        try:
            yield listener
        finally:
            self._listeners.pop(request_id, None)

    async def accept(
        self,
        request: Request,
        *,
        webhook_url: str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> StatusRecord:
        """Record the request as queued (durably), then publish it (with ``headers``, e.g.
        the trace context); raise KafkaError if down."""
        now = now_ms()
        rec = StatusRecord(
            status="queued",
            client_id=request.client_id,
            kind=request.kind,
            model=request.model,
            created_ms=now,
            updated_ms=now,
            webhook_url=webhook_url,
        )
        # Both records go out together, in one round trip (usually one produce request);
        # the status is sent first, so on its partition it comes before the reply's.
        sent = []
        if self.store.put(request.id, rec):
            key = request.id.encode()
            sent.append(await self.producer.send(self.gw.status_topic, rec.to_wire(), key=key))
        key = request.client_id.encode()
        sent.append(
            await self.producer.send(
                self.base.request_topic, request.to_wire(), key=key, headers=headers or None
            )
        )
        await asyncio.gather(*sent)
        return rec

    def lookup(self, request_id: str) -> StatusRecord | None:
        """The request's status, including one whose write is not acked yet: a client
        that got its answer and asks again at once must see it done."""
        writing = self._writing.get(request_id)
        return writing if writing is not None else self.store.get(request_id, now_ms())

    async def record(self, request_id: str, rec: StatusRecord, *, retry: bool = False) -> None:
        """Write ``rec`` to the status topic (acked by all replicas), then to memory.

        Without ``retry``, ``KafkaError`` reaches the caller (the HTTP path answers 503).
        With it, retriable errors are retried with backoff for up to
        ``TURNOUT_GATEWAY_STATUS_RETRY_S``; anything else, or a failure outlasting
        that, raises ``StatusWriteFailed`` and fails readiness. Memory changes only
        once the write is acked, so a failed write is made again when its reply is
        read again.
        """
        if not self.store.accepts(request_id, rec):
            if self._writing.get(request_id) is rec:
                del self._writing[request_id]
            return
        self._writing[request_id] = rec
        try:
            await self._write_status(request_id, rec, retry)
        finally:
            if self._writing.get(request_id) is rec:
                del self._writing[request_id]
        self.store.put(request_id, rec)

    async def _write_status(self, request_id: str, rec: StatusRecord, retry: bool) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.gw.status_retry_s
        delay = 0.2
        while True:
            try:
                await self.producer.send_and_wait(
                    self.gw.status_topic, rec.to_wire(), key=request_id.encode()
                )
                break
            except KafkaError as exc:
                if not retry:
                    raise
                name = type(exc).__name__
                if not retriable(exc) or loop.time() + delay > give_up:
                    why = "not retriable" if not retriable(exc) else (
                        f"still failing after {self.gw.status_retry_s:g} s"
                    )
                    self.failure = f"status writes to {self.gw.status_topic} fail: {name} ({why})"
                    log.error(
                        "gateway_status_write_failed",
                        topic=self.gw.status_topic,
                        error=name,
                        retriable=retriable(exc),
                        reason=why,
                    )
                    raise StatusWriteFailed(self.failure) from exc
                log.warning("gateway_status_write_retry", error=name, delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- replies --------------------------------------------------------------------------------

    async def _consume(self) -> None:
        """Route replies; commit what is recorded every ``commit_interval_s``.

        A reply is committed only after its status write is on the broker. Between
        commits a restart reads some replies again: the status store keeps the first.
        Under load fetches are batched (``turnout.core.batching``), as in the worker.
        """
        consumer = self._consumer
        assert consumer is not None
        clock = asyncio.get_running_loop().time
        batching = FetchBatching(above_rps=self.base.fetch_batch_above_rps)
        commits: dict[TopicPartition, int] = {}
        committed_at = clock()
        backoff = 1.0
        while True:
            batches: dict[TopicPartition, list[Any]] = {}
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=500)
                writes: list[Awaitable[None]] = []
                read: dict[TopicPartition, int] = {}
                for tp, recs in batches.items():
                    for rec in recs:
                        write = self._on_message(rec.value)
                        if write is not None:
                            writes.append(write)
                    if recs:
                        read[tp] = recs[-1].offset + 1
                await asyncio.gather(*writes)
                commits.update(read)  # recorded: safe to commit
                if self.failure is not None and writes:
                    log.info("gateway_status_writes_recovered", failure=self.failure)
                    self.failure = None
                    backoff = 1.0
                now = clock()
                if commits and now - committed_at >= self.base.commit_interval_s:
                    await consumer.commit(commits)
                    commits, committed_at = {}, now
                min_bytes = batching.update(sum(len(r) for r in batches.values()), now)
                if min_bytes is not None:
                    # batched: the broker holds a fetch for the worker's short wait
                    wait = self.base.fetch_wait_ms if batching.batching else _FETCH_WAIT_MS
                    set_fetch(consumer, min_bytes, wait)
            except asyncio.CancelledError:
                if commits:
                    with contextlib.suppress(KafkaError):
                        await consumer.commit(commits)
                raise
            except StatusWriteFailed:
                # Nothing of this batch is committed: read it again after a pause, while
                # /readyz says why. Replies already recorded are skipped as repeats.
                for tp, recs in batches.items():
                    if recs:
                        consumer.seek(tp, recs[0].offset)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
            except KafkaError as exc:
                log.warning("gateway_replies_retry", error=type(exc).__name__)
                await asyncio.sleep(1)

    def _on_message(self, raw: bytes | None) -> Awaitable[None] | None:
        """Route one reply-topic record; a record that cannot be read is logged and skipped."""
        try:
            message = decode_reply_message(raw or b"")
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.warning("gateway_reply_unreadable", size=len(raw or b""))
            return None
        try:
            return self._route(message)
        except Exception:  # a bug must not stop the consumer: the others still need answers
            log.exception("gateway_reply_failed", request_id=message.id)
            return None

    def _route(self, message: Reply | ReplyChunk) -> Awaitable[None] | None:
        listener = self._listeners.get(message.id)
        if isinstance(message, ReplyChunk):
            if listener is not None:
                listener.deliver(message)
                self._mark_running(message.id)
            return None
        recording = self._record_reply(message)
        if listener is not None:
            listener.deliver(message)
        return recording

    def _mark_running(self, request_id: str) -> None:
        old = self.lookup(request_id)
        if old is not None and old.status == "queued":  # in memory only: cheap, and optional
            self.store.put(request_id, msgspec.structs.replace(old, status="running"))

    def _record_reply(self, reply: Reply) -> Awaitable[None] | None:
        """The final status of ``reply``: visible to lookups at once, written by the
        coroutine returned (the caller awaits it before committing the offset)."""
        old = self.lookup(reply.id)
        if old is not None and old.final:
            return None  # a repeat (the worker answered twice after a crash): the first stands
        rec = StatusRecord(
            status="done" if reply.status == "ok" else "failed",
            client_id=reply.client_id or (old.client_id if old else ""),
            kind=old.kind if old else "",
            model=old.model if old else "",
            created_ms=old.created_ms if old else now_ms(),
            updated_ms=now_ms(),
            reply=orjson.loads(reply.to_wire()),
            webhook_url=old.webhook_url if old else None,
            webhook="pending" if old is not None and old.webhook_url else None,
        )
        if self.store.accepts(reply.id, rec):
            self._writing[reply.id] = rec  # before the waiting caller hears of it
        return self._write_reply_status(reply.id, rec)

    async def _write_reply_status(self, request_id: str, rec: StatusRecord) -> None:
        await self.record(request_id, rec, retry=True)
        if rec.webhook == "pending":
            self._spawn(self._final(request_id, rec))

    async def _final(self, request_id: str, rec: StatusRecord) -> None:
        if self.on_final is not None:
            await self.on_final(request_id, rec)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(self._background_ended)

    def _background_ended(self, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway_background_failed", error=repr(task.exception()))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.gw.status_ttl_s / 10))
            dropped = self.store.sweep(now_ms())
            if dropped:
                log.info("gateway_status_expired", count=dropped, kept=len(self.store))
