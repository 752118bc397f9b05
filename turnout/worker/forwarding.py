"""Cross-region spillover, the I/O side: forward, bridge, relay.

The decisions are in ``turnout.core.spillover``; this module moves records. Started by the
runtime when ``TURNOUT_REGION`` is set (with the routing-state sync it depends on).

Three duties of every worker of a region R:

- **forward** (R is home). A request no local target can serve in time goes, as a
  ``Request`` with the same id and ``reply_to = turnout.forward-replies.R``, to R's
  own ``turnout.forward.<D>`` (acks=all, through the worker's publisher, which
  retries transient broker errors). MirrorMaker 2 carries it to D as
  ``R.turnout.forward.D``. The request's offset stays unfinished meanwhile: its task
  waits for D's reply and publishes the final reply itself, so a crash at any point
  leaves the request in R's request topic, to be served (and forwarded) again.
- **bridge** (R serves). One consumer group per region reads every
  ``<home>.turnout.forward.R`` and copies each record, unchanged, into R's own request
  topic, committing only after the copy is acknowledged. R's workers then serve it
  like any request: admission, dedupe by id (the ``done`` table), retries, dead
  letters, one reply, to ``turnout.forward-replies.<home>`` (R's own cluster; MM2
  carries it home as ``R.turnout.forward-replies.<home>``).
- **relay** (R is home). Every worker reads every ``<server>.turnout.forward-replies.R``
  from the beginning (no group) and hands each final reply to the request task that
  waits for it. Replies nobody waits for are kept a while (``KEEP_S``): an ok answer
  to a forward made before a crash or rebalance is found by the request's next serve,
  which then publishes it without forwarding again.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.types import Reply, Timings
from turnout import logs
from turnout.core.admission import Admitted
from turnout.core.region_state import trusted
from turnout.core.spillover import (
    Spill,
    choose_region,
    final_reply,
    forward_pattern,
    forward_replies_pattern,
    forward_topic,
    forwarded_request,
    no_answer,
    source_of,
)
from turnout.kafka.admin import client_kwargs
from turnout.worker.publisher import Publisher
from turnout.worker.region_sync import RegionSync

log = logs.get("turnout.spillover")

KEEP_S = 900.0
"""How long an unclaimed forwarded reply is kept for a later serve of the same id (by the
reply record's timestamp: older ones are ignored when the relay reads from the start)."""
KEEP_MAX = 20_000
REPLY_GRACE_MS = 3000
"""How long past the deadline the home waits for the serving region's reply: that
region answers ``deadline_exceeded`` itself at the deadline, and the answer needs a
mirror hop to come home."""

Key = tuple[str | None, str]


class Forwarding:
    def __init__(
        self,
        *,
        region: str,
        sync: RegionSync,
        publisher: Publisher,
        bootstrap: str,
        request_topic: str,
        group: str,
    ) -> None:
        self.region = region
        self._sync = sync
        self._publisher = publisher
        self._bootstrap = bootstrap
        self._request_topic = request_topic
        self._group = group
        self._waiters: dict[Key, list[asyncio.Future[Reply]]] = {}
        """Serves waiting for an id's answer (two serves of one id both get it; the
        dispatcher's ``done`` check lets only the first publish it)."""
        self._kept: collections.OrderedDict[Key, tuple[Reply, float]] = collections.OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self._consumers: list[AIOKafkaConsumer] = []
        self.counts: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return f"<Forwarding region={self.region} waiting={len(self._waiters)} {dict(self.counts)}>"

    # -- home side ------------------------------------------------------------------

    def offer(self, job: Admitted, why: str) -> Spill | None:
        """A ``Spill`` to the first named region with spare capacity, or None (wait locally)."""
        choice = choose_region(
            [(r.region, r.model) for r in job.route.regions],
            trusted(self._sync.view()),
            home=self.region,
            tiers=job.tiers,
        )
        if choice is None:
            return None
        return Spill(choice.region, choice.model, why, choice.reason)

    async def forward(
        self,
        job: Admitted,
        to: Spill,
        *,
        record_timestamp_ms: int,
        local_attempts: int,
        generation: str | None,
    ) -> Reply:
        """Forward ``job`` to ``to.region`` and return the final reply for its client."""
        req = job.request
        key: Key = (req.client_id, req.id)
        kept = self._kept.get(key)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if kept is not None and kept[0].status == "ok":
            # Answered ok by a forward made before (this worker crashed, or the partition
            # moved, after forwarding): that answer is final, forward nothing.
            fut.set_result(kept[0])
            region = source_of_reply(kept[0]) or to.region
            self.counts["reused"] += 1
        else:
            region = to.region
            self._waiters.setdefault(key, []).append(fut)
            wire = forwarded_request(
                req, home=self.region, model=to.model, deadline_ms=job.deadline_ms
            ).to_wire()
            headers = [("turnout-forwarded-from", self.region.encode())]
            # acks=all: once this returns the forward is on the home cluster's disk.
            try:
                await self._publisher.publish(
                    forward_topic(region), req.client_id.encode(), wire, headers, declare=False
                )
            except BaseException:  # refused for good, or cancelled: nobody waits any more
                self._unwait(key, fut)
                raise
            self.counts["forwarded"] += 1
            log.info(
                "request_forwarded",
                request_id=req.id,
                client_id=req.client_id,
                region=region,
                why=to.why,
                reason=to.reason,
            )
        forwarded_ms = _now_ms()
        wait_s = max(0.0, (job.deadline_ms + REPLY_GRACE_MS - forwarded_ms) / 1000)
        try:
            remote: Reply | None = await asyncio.wait_for(fut, wait_s)
        except TimeoutError:
            remote = None
        finally:
            self._unwait(key, fut)
        now = _now_ms()
        timings = Timings(
            queue_ms=float(forwarded_ms - record_timestamp_ms),
            backend_ms=remote.timings.backend_ms if remote and remote.timings else 0.0,
            total_ms=float(now - record_timestamp_ms),
        )
        if remote is None:
            self.counts["unanswered"] += 1
            return no_answer(
                req.id,
                req.client_id,
                region=region,
                route=job.route_name,
                local_attempts=local_attempts,
                timings=timings,
                retry_after_ms=REPLY_GRACE_MS,
            )
        self.counts["answered"] += 1
        return final_reply(
            remote,
            region=region,
            why=to.why,
            route=job.route_name,
            local_attempts=local_attempts,
            timings=timings,
            generation=generation,
        )

    def _unwait(self, key: Key, fut: asyncio.Future[Reply]) -> None:
        waiting = self._waiters.get(key, [])
        if fut in waiting:
            waiting.remove(fut)
        if not waiting:
            self._waiters.pop(key, None)

    def receive_reply(self, reply: Reply, source: str, now: float | None = None) -> None:
        """A reply came home from ``source``: to its waiter, else kept for a later serve."""
        key: Key = (reply.client_id, reply.id)
        reply = msgspec.structs.replace(reply, served_region=source)
        waiting = [f for f in self._waiters.pop(key, []) if not f.done()]
        for fut in waiting:
            fut.set_result(reply)
        if waiting:
            return
        now = time.time() if now is None else now
        self._kept[key] = (reply, now)
        self._kept.move_to_end(key)
        while self._kept and (
            len(self._kept) > KEEP_MAX or next(iter(self._kept.values()))[1] < now - KEEP_S
        ):
            self._kept.popitem(last=False)

    # -- tasks ----------------------------------------------------------------------

    async def start(self) -> None:
        relay = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=5000,
            **client_kwargs(),
        )
        bridge = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=5000,
            **client_kwargs(),
        )
        await relay.start()
        await bridge.start()
        self._consumers = [relay, bridge]
        relay.subscribe(pattern=forward_replies_pattern(self.region))
        bridge.subscribe(pattern=forward_pattern(self.region))
        self._tasks = [
            asyncio.create_task(self._relay_loop(relay), name="turnout-forward-relay"),
            asyncio.create_task(self._bridge_loop(bridge), name="turnout-forward-bridge"),
        ]
        log.info("spillover_started", region=self.region, bridge_group=self._group)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for consumer in self._consumers:
            await consumer.stop()
        self._consumers = []

    async def _relay_loop(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("forward_relay_failed", error=str(exc))
                await asyncio.sleep(1)
                continue
            now = time.time()
            for tp, records in batches.items():
                for rec in records:
                    if dict(rec.headers or ()).get("turnout-kind") == b"chunk" or not rec.value:
                        continue
                    if rec.timestamp / 1000 < now - KEEP_S:
                        continue  # read again from the beginning at start: too old to matter
                    try:
                        reply = Reply.from_wire(rec.value)
                    except (msgspec.ValidationError, msgspec.DecodeError):
                        log.warning("forward_reply_invalid", topic=tp.topic, offset=rec.offset)
                        continue
                    self.counts["replies_received"] += 1
                    self.receive_reply(reply, source_of(tp.topic))

    async def _bridge_loop(self, consumer: AIOKafkaConsumer) -> None:
        """Copy forwarded requests into our request topic; commit only what is copied."""
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("forward_bridge_failed", error=str(exc))
                await asyncio.sleep(1)
                continue
            for tp, records in batches.items():
                for rec in records:
                    try:
                        await self._publisher.publish(
                            self._request_topic,
                            rec.key,
                            rec.value or b"",
                            [*(rec.headers or ()), ("turnout-forward-source", tp.topic.encode())],
                        )
                    except Exception as exc:  # keep it: read it again from here
                        log.error(
                            "forward_bridge_refused",
                            topic=tp.topic,
                            offset=rec.offset,
                            error=str(exc) or type(exc).__name__,
                        )
                        consumer.seek(tp, rec.offset)
                        await asyncio.sleep(1)
                        break
                    self.counts["bridged"] += 1
                    await self._commit(consumer, tp, rec.offset + 1)

    async def _commit(self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        try:
            await consumer.commit({tp: offset})
        except KafkaError as exc:  # copied again after a restart: dedupe by id absorbs it
            log.warning("forward_bridge_commit_failed", topic=tp.topic, error=str(exc))

    def status(self) -> dict[str, Any]:
        return {"waiting": len(self._waiters), "kept": len(self._kept), **dict(self.counts)}


def source_of_reply(reply: Reply) -> str | None:
    return reply.served_region


def _now_ms() -> int:
    return int(time.time() * 1000)


async def start_forwarding(
    settings: Any, config: Any, sync: RegionSync | None, publisher: Publisher
) -> Forwarding | None:
    """The runtime's hook: started spillover duties, or None when single-region."""
    named = {n: [r.region for r in route.regions] for n, route in config.routes.items()}
    named = {n: rs for n, rs in named.items() if rs}
    if sync is None:
        if named:
            log.warning("route_regions_ignored", routes=named, why="TURNOUT_REGION is not set")
        return None
    for name, regions in named.items():
        if settings.region in regions:
            log.warning(
                "route_names_own_region",
                route=name,
                region=settings.region,
                why="a region never spills to itself; its own targets are the route's backends",
            )
    fw = Forwarding(
        region=settings.region,
        sync=sync,
        publisher=publisher,
        bootstrap=settings.bootstrap,
        request_topic=settings.request_topic,
        group=f"{settings.app_id}.forward-bridge",
    )
    await fw.start()
    return fw
