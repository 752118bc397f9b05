"""A Kafka client that sends to the nearest healthy region and fails over (issue 18 point 4).

The decisions are ``turnout.core.nearest``'s (rank by RTT, skip regions that failed until
their backoff ends); this module does the I/O: one producer per region,
created on first use, and one reply reader per region the client has sent to.

- ``send`` tries the ranked regions in turn. An attempt that does not get the region's
  acknowledgement within ``attempt_timeout_s`` (the failover bound) marks the region
  down, drops its producer and tries the next region with the *same* request id. The
  producer is not idempotent and its batches expire at the bound, so a batch it still
  holds is not written there later, once the request is already elsewhere. An
  acknowledged request is never re-sent: it is in that region's log and is answered
  there, after the region returns if it must.
- Replies are read from the client's reply topic in every region it sent to; the
  first final reply per id is the answer, later ones are counted as duplicates (a
  send whose acknowledgement was lost can be served twice; the caller sees it once).
- ``measure_rtts`` times Kafka metadata round trips to each region: "nearest" measured
  instead of configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.types import Reply, Request, decode_reply_message
from turnout import logs
from turnout.client import ensure_topics
from turnout.core.nearest import (
    Down,
    Endpoint,
    mark_down,
    mark_up,
    rank,
    unfit_regions,
    with_rtts,
)
from turnout.core.region_state import RegionState, RegionView, accept, source_region, view
from turnout.kafka.admin import KafkaStartupError

log = logs.get(__name__)

REPLY_SKEW_MS = 60_000
"""How far before its creation a client reads reply topics: covers clock skew between
the client and the workers that stamp replies, so no reply of ours is skipped."""


class NoRegionReachable(Exception):
    """Every region refused or timed out within the failover bound."""


class _MarkedDown(Exception):
    """A concurrent send found the region down while this one waited for it."""


@dataclass
class Sent:
    region: str
    attempts: list[str] = field(default_factory=list)
    """Regions tried, in order; the last one accepted the request."""
    took_s: float = 0.0


class RegionalClient:
    """Send requests to the nearest usable region; read replies from every region used."""

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        *,
        request_topic: str,
        reply_topic: str,
        attempt_timeout_s: float = 3.0,
        backoff_max_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.request_topic = request_topic
        self.reply_topic = reply_topic
        self.attempt_timeout_s = attempt_timeout_s
        self.backoff_max_ms = int(backoff_max_s * 1000)
        """A down region is retried at least this often, so the client comes back soon."""
        self._clock = clock
        self.down: dict[str, Down] = {}
        self.unfit: set[str] = set()
        """Regions whose fresh synced state says they cannot serve (``unfit_regions``)."""
        self._producers: dict[str, AIOKafkaProducer] = {}
        self._starting: dict[str, asyncio.Lock] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.replies: dict[str, list[tuple[str, Reply]]] = {}
        self.got_reply = asyncio.Event()
        self._created_ms = self._now_ms()

    def __repr__(self) -> str:
        return (
            f"<RegionalClient regions={[e.region for e in self.endpoints]} "
            f"down={sorted(self.down)} producers={sorted(self._producers)} "
            f"readers={sorted(self._readers)} replies={len(self.replies)}>"
        )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _address(self, region: str) -> str:
        return next(e.address for e in self.endpoints if e.region == region)

    async def measure_rtts(self, samples: int = 3) -> dict[str, float]:
        """The best of ``samples`` metadata round trips per reachable region, in ms."""
        out: dict[str, float] = {}
        for e in self.endpoints:
            try:
                producer = await self._producer(e.region)
                best = float("inf")
                for _ in range(samples):
                    t0 = time.monotonic()
                    await asyncio.wait_for(
                        producer.client.fetch_all_metadata(), self.attempt_timeout_s
                    )
                    best = min(best, (time.monotonic() - t0) * 1000)
                out[e.region] = round(best, 1)
            except (KafkaError, OSError, TimeoutError):
                self._drop(e.region)
        self.endpoints = with_rtts(self.endpoints, out)
        log.info("region_rtts_measured", rtts=out)
        return out

    async def _producer(self, region: str) -> AIOKafkaProducer:
        """The region's producer; concurrent sends wait for one start, never make two."""
        held = self._producers.get(region)
        if held is not None:
            return held
        lock = self._starting.setdefault(region, asyncio.Lock())
        before = self.down.get(region)
        async with lock:
            held = self._producers.get(region)
            if held is not None:
                return held
            after = self.down.get(region)
            if after is not None and after is not before:
                raise _MarkedDown(region)  # the start we waited for failed: do not wait again
            return await self._start_producer(region)

    async def _start_producer(self, region: str) -> AIOKafkaProducer:
        timeout_ms = int(self.attempt_timeout_s * 1000)
        # Not idempotent, on purpose: aiokafka never expires an idempotent producer's
        # batches, it retries them until they land, so a request that failed over to the
        # next region would still be written here once this region is back (measured:
        # 12-15 requests served twice per drill). Without idempotence a batch expires
        # after request_timeout_ms (the failover bound) and is never sent again; a
        # retry inside the bound can repeat a record, which the worker's dedupe and the
        # first-reply-wins rule absorb.
        producer = AIOKafkaProducer(
            bootstrap_servers=self._address(region),
            acks="all",
            enable_idempotence=False,
            linger_ms=2,
            request_timeout_ms=timeout_ms,
            metadata_max_age_ms=5000,
        )
        try:
            await asyncio.wait_for(producer.start(), self.attempt_timeout_s)
        except BaseException:
            self._close_later(producer)
            raise
        self._producers[region] = producer
        return producer

    def _close_later(self, producer: AIOKafkaProducer) -> None:
        task = asyncio.create_task(_quietly_stop(producer))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _drop(self, region: str) -> None:
        producer = self._producers.pop(region, None)
        if producer is not None:
            self._close_later(producer)

    async def send(self, request: Request) -> Sent:
        """Publish to the nearest usable region, failing over; NoRegionReachable if none."""
        t0 = time.monotonic()
        sent = Sent(region="")
        ranked = rank(self.endpoints, now_ms=self._now_ms(), down=self.down, unfit=self.unfit)
        for choice in ranked:
            sent.attempts.append(choice.region)
            try:
                try:
                    producer = await self._producer(choice.region)
                except _MarkedDown:
                    continue
                self._ensure_reader(choice.region)
                await asyncio.wait_for(
                    producer.send_and_wait(
                        self.request_topic, request.to_wire(), key=request.client_id.encode()
                    ),
                    self.attempt_timeout_s,
                )
            except (KafkaError, OSError, TimeoutError) as exc:
                self.down = mark_down(
                    self.down, choice.region, now_ms=self._now_ms(), max_ms=self.backoff_max_ms
                )
                self._drop(choice.region)
                log.warning(
                    "region_send_failed",
                    region=choice.region,
                    request_id=request.id,
                    error=type(exc).__name__,
                    retry_in_ms=self.down[choice.region].retry_at_ms - self._now_ms(),
                )
                continue
            if choice.region in self.down:
                log.info("region_recovered", region=choice.region, request_id=request.id)
            self.down = mark_up(self.down, choice.region)
            sent.region = choice.region
            sent.took_s = time.monotonic() - t0
            return sent
        raise NoRegionReachable(
            f"request {request.id}: no region accepted it within {self.attempt_timeout_s:g} s "
            f"each (tried {', '.join(sent.attempts)}); the request was not sent"
        )

    # -- replies ------------------------------------------------------------------------------

    def _ensure_reader(self, region: str) -> None:
        if region not in self._readers:
            self._readers[region] = asyncio.create_task(
                self._read(region), name=f"turnout-replies-{region}"
            )

    async def start_readers(self) -> None:
        """Read replies in every region from now on (before the first send)."""
        for e in self.endpoints:
            self._ensure_reader(e.region)

    async def _read(self, region: str) -> None:
        """Follow the reply topic in ``region``; reconnects by itself after an outage."""
        consumer: AIOKafkaConsumer | None = None
        while consumer is None:
            candidate = AIOKafkaConsumer(
                bootstrap_servers=self._address(region),
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                request_timeout_ms=int(max(self.attempt_timeout_s, 5) * 1000),
            )
            try:
                bound = max(self.attempt_timeout_s, 5)
                counts = await asyncio.wait_for(
                    ensure_topics(self._address(region), [self.reply_topic], 1), bound
                )
                await asyncio.wait_for(candidate.start(), bound)
                tps = [TopicPartition(self.reply_topic, p) for p in range(counts[self.reply_topic])]
                candidate.assign(tps)
                # Replies from before this client existed are not ours to read: start at
                # its creation time (less a margin for clock skew), not at the beginning.
                # The end offsets are taken first: a reply written while we ask is at or
                # past them, so it is read whichever way the time lookup answers.
                ends = await asyncio.wait_for(candidate.end_offsets(tps), bound)
                since = {tp: self._created_ms - REPLY_SKEW_MS for tp in tps}
                found = await asyncio.wait_for(candidate.offsets_for_times(since), bound)
                for tp in tps:
                    at = found.get(tp)
                    candidate.seek(tp, ends[tp] if at is None else min(at.offset, ends[tp]))
                consumer = candidate
            except (KafkaError, KafkaStartupError, OSError, TimeoutError) as exc:
                log.warning("region_reply_reader_retry", region=region, error=type(exc).__name__)
                await _quietly_stop(candidate)
                await asyncio.sleep(1)
        try:
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=500)
                except KafkaError as exc:
                    log.warning("region_reply_read_failed", region=region, error=type(exc).__name__)
                    await asyncio.sleep(0.5)
                    continue
                for records in batches.values():
                    for rec in records:
                        reply = decode_reply_message(rec.value)
                        if isinstance(reply, Reply):
                            self.replies.setdefault(reply.id, []).append((region, reply))
                            self.got_reply.set()
        finally:
            await _quietly_stop(consumer)

    async def wait_for(self, ids: set[str], timeout_s: float) -> set[str]:
        """Wait until every id has a reply or ``timeout_s`` passes; the ids still missing."""
        deadline = time.monotonic() + timeout_s
        while True:
            missing = ids - self.replies.keys()
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                return missing
            self.got_reply.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.got_reply.wait(), min(left, 1.0))

    async def stop(self) -> None:
        for task in self._readers.values():
            task.cancel()
        await asyncio.gather(*self._readers.values(), return_exceptions=True)
        self._readers = {}
        for region in list(self._producers):
            self._drop(region)
        await asyncio.gather(*self._closing, return_exceptions=True)


async def _quietly_stop(client: AIOKafkaProducer | AIOKafkaConsumer) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.stop(), 10)


async def read_region_views(
    endpoint: Endpoint, *, stale_after_s: float, timeout_s: float
) -> dict[str, RegionView]:
    """Every region's synced state as ``endpoint``'s cluster holds it (its own topic and
    the mirrored ones), read to the end; stale and unknown regions carry no state."""
    from turnout.worker.region_sync import STATE_PATTERN

    consumer = AIOKafkaConsumer(
        bootstrap_servers=endpoint.address,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        metadata_max_age_ms=1000,
    )
    latest: dict[str, RegionState] = {}
    deadline = time.monotonic() + timeout_s
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        consumer.subscribe(pattern=STATE_PATTERN)
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            for tp, records in batches.items():
                via = source_region(tp.topic, endpoint.region)
                for rec in records if via else ():
                    try:
                        state = RegionState.from_wire(rec.value) if rec.value else None
                    except ValueError:
                        continue
                    merged = accept(latest, state, via=via) if state and via else None
                    latest = merged if merged is not None else latest
            assigned = list(consumer.assignment())
            if assigned and not batches:
                ends = await consumer.end_offsets(assigned)
                if all([await consumer.position(tp) >= ends[tp] for tp in assigned]):
                    break
    finally:
        await _quietly_stop(consumer)
    return view(
        latest,
        now_ms=int(time.time() * 1000),
        stale_after_ms=int(stale_after_s * 1000),
        regions=[endpoint.region],
    )


async def send_nearest(
    endpoints: tuple[Endpoint, ...],
    request: Request,
    *,
    request_topic: str,
    reply_topic: str,
    partitions: tuple[int, int],
    attempt_timeout_s: float,
    wait_s: float,
    measure: bool,
    use_state: bool = False,
    stale_after_s: float = 15.0,
) -> tuple[Sent, Reply | None]:
    """``turnout send --regions``: one request to the nearest usable region, its reply.

    Creates the request and reply topics in each reachable region first (as plain
    ``turnout send`` does in its one region).
    """
    from turnout.client import ensure_request_topic

    for e in endpoints:
        try:
            await asyncio.wait_for(
                ensure_topics(e.address, [reply_topic], partitions[1]), attempt_timeout_s * 2
            )
            await asyncio.wait_for(
                ensure_request_topic(e.address, request_topic, partitions[0]),
                attempt_timeout_s * 2,
            )
        except (KafkaError, KafkaStartupError, OSError, TimeoutError) as exc:
            log.warning("region_unreachable", region=e.region, error=type(exc).__name__)
    client = RegionalClient(
        endpoints,
        request_topic=request_topic,
        reply_topic=reply_topic,
        attempt_timeout_s=attempt_timeout_s,
    )
    try:
        if measure:
            await client.measure_rtts()
        if use_state:
            client.unfit = await _unfit_from_state(client, stale_after_s)
        sent = await client.send(request)
        await client.wait_for({request.id}, wait_s)
        got = client.replies.get(request.id)
        return sent, got[0][1] if got else None
    finally:
        await client.stop()


async def _unfit_from_state(client: RegionalClient, stale_after_s: float) -> set[str]:
    """Ask the nearest region that answers for everyone's state; advisory, so a region
    that cannot be read just yields nothing."""
    for choice in rank(client.endpoints, now_ms=client._now_ms()):
        endpoint = next(e for e in client.endpoints if e.region == choice.region)
        try:
            views = await read_region_views(
                endpoint, stale_after_s=stale_after_s, timeout_s=client.attempt_timeout_s * 2
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("region_state_unreadable", region=choice.region, error=type(exc).__name__)
            continue
        unfit = unfit_regions(views)
        log.info(
            "region_state_read",
            via=choice.region,
            regions={k: v.status for k, v in views.items()},
            unfit=sorted(unfit),
        )
        return unfit
    return set()
