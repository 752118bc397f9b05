"""The worker's side of routing-state sync: publish our summary, read everyone's.

Started by the runtime when ``TURNOUT_REGION`` is set; with it empty the worker is
single-region and nothing here runs. Two tasks on the worker's loop:

- publish: every ``TURNOUT_REGION_PUBLISH_INTERVAL_S``, this region's ``RegionState``
  (built by the runtime's ``summarize`` callback) to the local compacted
  ``turnout.regions``, keyed by region. MirrorMaker 2 carries it to the other regions.
- read: the local ``turnout.regions`` and every mirrored ``<region>.turnout.regions``
  (one pattern subscription, no consumer group: every worker reads every record from
  the beginning), keeping each region's newest summary.

``view()`` applies the staleness bound at the moment it is asked. The decisions live in
``turnout.core.region_state``; this module only moves bytes and logs transitions.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from turnout import logs
from turnout.core.region_state import (
    STATE_TOPIC,
    InvalidRegionState,
    RegionState,
    RegionView,
    accept,
    describe,
    source_region,
    summarize,
    view,
)

log = logs.get(__name__)

STATE_PATTERN = r"^([a-z][a-z0-9-]{0,31}\.)?" + re.escape(STATE_TOPIC) + "$"


class RegionSync:
    def __init__(
        self,
        *,
        region: str,
        bootstrap: str,
        summarize: Callable[[int], RegionState],
        publish_interval_s: float,
        stale_after_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.region = region
        self._bootstrap = bootstrap
        self._summarize = summarize
        self._interval_s = publish_interval_s
        self._stale_after_ms = int(stale_after_s * 1000)
        self._clock = clock
        self._latest: dict[str, RegionState] = {}
        self._trusted: set[str] = set()
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0

    def __repr__(self) -> str:
        return (
            f"<RegionSync region={self.region} published={self.published} "
            f"known={sorted(self._latest)} trusted={sorted(self._trusted)}>"
        )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def view(self) -> dict[str, RegionView]:
        """Every region heard of (and our own), fresh or unknown, at this moment."""
        return view(
            self._latest,
            now_ms=self._now_ms(),
            stale_after_ms=self._stale_after_ms,
            regions=[self.region],
        )

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, linger_ms=0)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=5000,  # see newly mirrored regions within seconds
        )
        await self._producer.start()
        await self._consumer.start()
        self._consumer.subscribe(pattern=STATE_PATTERN)
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="turnout-region-publish"),
            asyncio.create_task(self._read_loop(), name="turnout-region-read"),
        ]
        log.info(
            "region_sync_started",
            region=self.region,
            topic=STATE_TOPIC,
            publish_interval_s=self._interval_s,
            stale_after_ms=self._stale_after_ms,
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish_once(self) -> None:
        assert self._producer is not None, "RegionSync.start() has not run"
        state = self._summarize(self._now_ms())
        await self._producer.send_and_wait(STATE_TOPIC, state.to_wire(), key=state.key)
        self.published += 1

    async def _publish_loop(self) -> None:
        while True:
            try:
                await self.publish_once()
            except KafkaError as exc:
                log.warning("region_state_publish_failed", region=self.region, error=str(exc))
            except Exception:  # the loop must survive a bad summary; say so loudly
                log.exception("region_state_publish_failed", region=self.region)
            self.log_transitions()
            await asyncio.sleep(self._interval_s)

    async def _read_loop(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("region_state_read_failed", region=self.region, error=str(exc))
                await asyncio.sleep(1)
                continue
            for tp, records in batches.items():
                via = source_region(tp.topic, self.region)
                if via is None:
                    continue
                for rec in records:
                    self.receive(via, tp.topic, rec.value)
            self.log_transitions()

    def receive(self, via: str, topic: str, raw: bytes | None) -> None:
        if raw is None:
            return  # a tombstone: the region was retired; its last state ages out
        try:
            state = RegionState.from_wire(raw)
        except InvalidRegionState as exc:
            log.warning("region_state_invalid", topic=topic, error=str(exc))
            return
        merged = accept(self._latest, state, via=via)
        if merged is None:
            if state.region != via:
                log.warning("region_state_ignored", topic=topic, region=state.region, expected=via)
            return
        self._latest = merged

    def log_transitions(self) -> None:
        """One line when a region becomes trusted or stops being trusted."""
        views = self.view()
        now = {name for name, v in views.items() if v.trusted}
        for name in sorted(now - self._trusted):
            log.info("region_state_fresh", region=name, age_ms=views[name].age_ms)
        for name in sorted(self._trusted - now):
            v = views[name]
            log.warning("region_state_stale", region=name, status=v.status, age_ms=v.age_ms)
        self._trusted = now


async def start_region_sync(settings: Any, config: Any, metrics: Any) -> RegionSync | None:
    """The runtime's hook: a started RegionSync, or None when the worker is single-region."""
    if not settings.region:
        return None
    worker = f"{settings.app_id}@{socket.gethostname()}:{os.getpid()}"

    def summarize_now(now_ms: int) -> RegionState:
        return summarize(
            region=settings.region,
            now_ms=now_ms,
            router=settings.region_router,
            worker=worker,
            backends=config.backends,
            snapshot=metrics.snapshot(),
        )

    sync = RegionSync(
        region=settings.region,
        bootstrap=settings.bootstrap,
        summarize=summarize_now,
        publish_interval_s=settings.region_publish_interval_s,
        stale_after_s=settings.region_stale_after_s,
    )
    await sync.start()
    return sync


def region_status(sync: RegionSync | None) -> dict[str, Any]:
    """The ``regions`` block of ``/status.json`` (empty when single-region)."""
    if sync is None:
        return {}
    return {"region": sync.region, "regions": describe(sync.view())}
