"""What a worker holds while it runs: the HTTP session, publisher and dispatcher.

``build(settings)`` wires a faust app: config, topics, the tracked consumer,
the agent, and the rebalance hook. The runtime starts inside the agent (on the
event loop) and stops when the agent stops.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any

import faust
from aiohttp import web
from faust.types import TP

from agents import health, router
from streams import consumer
from streams import tables as tables_mod
from streams.app import create_app
from streams.tables import ChangelogTable, DoneSweeper, Tables
from streams.topics import declare
from turnout import config as config_mod
from turnout import gcfreeze, logs, tracing
from turnout.backends.http import HttpBackendClient, new_session
from turnout.config import Config, Secret
from turnout.core.batching import FetchBatching
from turnout.core.undelivered import Idle, UndeliveredWatch
from turnout.health.book import HealthBook
from turnout.health.looplag import SAMPLE_S, LoopLag
from turnout.health.stats import HealthPolicy
from turnout.ops.status import LagSampler
from turnout.settings import Settings
from turnout.worker import fdlimit, outage
from turnout.worker.dispatch import Dispatcher
from turnout.worker.forwarding import Forwarding, start_forwarding
from turnout.worker.metrics import Metrics
from turnout.worker.prober import HealthFeed, Prober
from turnout.worker.publisher import Publisher
from turnout.worker.region_sync import RegionSync, region_status, start_region_sync
from turnout.worker.web import build_app, start_web

log = logs.get(__name__)


class Runtime:
    def __init__(self, app: faust.App, settings: Settings, config: Config, tables: Tables) -> None:
        self._app = app
        self._tables = tables
        self._settings = settings
        self._config = config
        self._dispatcher: Dispatcher | None = None
        self._client: HttpBackendClient | None = None
        self._prober: Prober | None = None
        self._feed_task: asyncio.Task[None] | None = None
        self._stall_task: asyncio.Task[None] | None = None
        self._delivery_task: asyncio.Task[None] | None = None
        self._loop_lag_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self.health: HealthBook | None = None
        self._assigned: frozenset[int] | None = None
        self._owned: set[TP] | None = None
        self._anchors: dict[TP, int] = {}
        """Positions faust sought to before the dispatcher existed (applied at start)."""
        self.metrics = Metrics.from_config(config, settings.request_topic)
        self._web: web.AppRunner | None = None
        self._lag: LagSampler | None = None
        self._outage: outage.OutageFilter | None = None
        self._outage_task: asyncio.Task[None] | None = None
        self._regions: RegionSync | None = None
        self._forwarding: Forwarding | None = None

    @property
    def dispatcher(self) -> Dispatcher:
        assert self._dispatcher is not None, "Runtime.start() has not run"
        return self._dispatcher

    async def start(self) -> None:
        if self._dispatcher is not None:
            return
        # While the broker is down, aiokafka's per-attempt errors become one line per
        # state change and a summary every 10 s (faust has set up logging by now).
        self._outage = outage.install(outage.log_event(logs.get("turnout.broker")))
        self._outage_task = asyncio.create_task(
            outage.watch(self._outage), name="turnout-outage-watch"
        )
        keys: dict[str, Secret] = {}
        for b in self._config.backends:
            key = b.api_key(os.environ)
            if key is not None:
                keys[b.id] = key
        self._client = HttpBackendClient(new_session(), keys)
        publisher = Publisher(self._app, self._settings)
        policy = HealthPolicy(
            probation_after_ms=int(2 * self._settings.probe_interval_s * 1000),
            probation_probes=self._settings.probation_probes,
        )
        self.health = HealthBook(
            [b.id for b in self._config.backends],
            now_ms=int(time.time() * 1000),
            policy=policy,
            hang_floors_ms={
                b.id: b.hang_after_ms for b in self._config.backends if b.hang_after_ms
            },
        )
        done = ChangelogTable(self._tables.done, self._app)
        self._dispatcher = Dispatcher(
            settings=self._settings,
            config=self._config,
            client=tracing.TracedClient(self._client),
            publisher=publisher,
            done=done,
            buckets=ChangelogTable(self._tables.client_buckets, self._app),
            affinity=ChangelogTable(self._tables.affinity, self._app),
            metrics=self.metrics,
            health=self.health,
            refetch=self._refetch,
        )
        self._prober = Prober(
            settings=self._settings,
            config=self._config,
            client=self._client,
            book=self.health,
            publisher=publisher,
            at_cap=self._dispatcher.chooser.at_cap,
        )
        if self._assigned is not None:
            self._dispatcher.share_capacity(self._assigned, self._settings.request_partitions)
        if self._owned is not None:
            self._dispatcher.assigned(self._owned)
        self._dispatcher.anchor(self._anchors)
        for b in self._config.backends:
            self.metrics.backend_state(b.id, self.health.state(b.id))
        feed = HealthFeed(self._settings, self.health, self._dispatcher.wake, self.metrics)
        self._feed_task = asyncio.create_task(feed.run(), name="turnout-health-feed")
        if self._settings.commit_stall_s > 0:
            self._stall_task = asyncio.create_task(self._watch_commits(), name="turnout-stalls")
        self._delivery_task = asyncio.create_task(self._watch_delivery(), name="turnout-delivery")
        self._loop_lag_task = asyncio.create_task(self._watch_loop_lag(), name="turnout-loop-lag")
        sweeper = DoneSweeper(
            done,
            self._owned_done_partitions,
            window_s=self._settings.dedupe_retention_s,
            budget=self._settings.dedupe_sweep_keys,
        )
        self._sweep_task = asyncio.create_task(
            sweeper.run(self._settings.dedupe_sweep_interval_s), name="turnout-done-sweeper"
        )
        await self._start_web()
        self._regions = await start_region_sync(self._settings, self._config, self.metrics)
        self._forwarding = await start_forwarding(
            self._settings, self._config, self._regions, publisher
        )
        self._dispatcher.forwarding = self._forwarding
        nofile, _ = fdlimit.raise_for(self._settings.max_in_flight)
        log.info(
            "worker_started",
            request_topic=self._settings.request_topic,
            backends=[b.id for b in self._config.backends],
            max_in_flight=self._settings.max_in_flight,
            open_files_limit=nofile,
        )
        if nofile < self._settings.max_in_flight + fdlimit.HEADROOM:
            log.warning(
                "open_files_limit_low",
                limit=nofile,
                max_in_flight=self._settings.max_in_flight,
                detail="backend calls past the limit fail: raise the hard limit (ulimit -Hn, "
                "LimitNOFILE) or lower TURNOUT_MAX_IN_FLIGHT",
            )
        gcfreeze.freeze("worker_started")

    async def _start_web(self) -> None:
        """/metrics, /status.json and the status page, when TURNOUT_WEB_PORT is set."""
        if self._settings.web_port <= 0:
            return
        app = build_app(
            self.metrics,
            lambda: {
                "worker": {"app_id": self._settings.app_id},
                **region_status(self._regions),
                **({"spillover": self._forwarding.status()} if self._forwarding else {}),
            },
        )
        self._web = await start_web(app, self._settings.web_host, self._settings.web_port)
        self._lag = LagSampler(
            self._settings.bootstrap,
            self._settings.app_id,
            self._settings.request_topic,
            self.metrics,
            interval_s=2.0,
        )
        await self._lag.start()

    async def _watch_commits(self) -> None:
        """Every few seconds: is any partition's commit point stuck? (logs commit_stalled)"""
        interval = min(5.0, max(0.2, self._settings.commit_stall_s / 4))
        while True:
            await asyncio.sleep(interval)
            if self._dispatcher is None:
                continue
            try:
                self._dispatcher.check_commits(int(time.time() * 1000))
            except Exception:  # the watch must not stop watching
                log.exception("commit_watch_failed")

    async def _watch_loop_lag(self) -> None:
        """Every 100 ms: how late a timer fires, for health judgement (``LoopLag``)."""
        loop, lag = asyncio.get_running_loop(), LoopLag()
        while True:
            started = loop.time()
            await asyncio.sleep(SAMPLE_S)
            ms = lag.add((loop.time() - started - SAMPLE_S) * 1000)
            if self.health is not None:
                self.health.loop_lag(ms)
            self.metrics.loop_lag(ms)

    async def _watch_delivery(self) -> None:
        """Every second: partitions whose records did not arrive are read again.

        Those the dispatcher knows it dropped (``Dispatcher.ask_rereads``), and, every
        other second, those whose commit point sits below the end of the log with
        nothing of them in flight while slots are free (``UndeliveredWatch``).
        """
        watch: UndeliveredWatch[TP] = UndeliveredWatch(
            after_ms=int(self._settings.undelivered_s * 1000)
        )
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            dispatcher = self._dispatcher
            if dispatcher is None:
                continue
            dispatcher.ask_rereads()
            tick += 1
            if watch.after_ms <= 0 or tick % 2:
                continue
            idle = dispatcher.idle() or {}
            try:
                ends = await self._app.consumer.highwaters(*idle) if idle else {}
            except Exception as exc:  # broker away: next round
                log.debug("log_ends_unknown", error=repr(exc))
                continue
            states = {tp: Idle(c, ends[tp]) for tp, c in idle.items() if tp in ends}
            for r in watch.observe(states, now_ms=int(time.time() * 1000)):
                log.warning(
                    "records_not_delivered",
                    partition=r.partition.partition,
                    committed=r.offset,
                    log_end=r.end,
                    waited_s=round(r.waited_ms / 1000, 1),
                    detail="nothing of the partition in flight and slots free, yet its "
                    "records did not arrive: it is read again from its commit point",
                )
                self._refetch(r.partition, r.offset)

    async def probe_round(self) -> None:
        if self._prober is not None:
            await self._prober.round()

    async def drain(self, *args: Any, **kwargs: Any) -> None:
        """Before faust stops its producer: let in-flight requests publish their replies.

        faust sends ``on_before_shutdown`` after the consumer stopped and before the
        producer flushes. What is not done within the grace period is cancelled and
        stays in Kafka for the next owner of its partition.
        """
        if self._dispatcher is not None:
            await self._dispatcher.stop(grace_s=self._settings.shutdown_grace_s)

    async def stop(self) -> None:
        if self._outage_task is not None:
            self._outage_task.cancel()
            await asyncio.gather(self._outage_task, return_exceptions=True)
            self._outage_task = None
        if self._forwarding is not None:
            await self._forwarding.stop()
            self._forwarding = None
        if self._regions is not None:
            await self._regions.stop()
            self._regions = None
        if self._lag is not None:
            await self._lag.stop()
            self._lag = None
        if self._web is not None:
            await self._web.cleanup()
            self._web = None
        tasks = (self._feed_task, self._stall_task, self._sweep_task, self._delivery_task,
                 self._loop_lag_task)  # fmt: skip
        for task in tasks:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._feed_task = self._stall_task = self._sweep_task = self._delivery_task = None
        self._loop_lag_task = None
        if self._dispatcher is not None:
            await self._dispatcher.stop(grace_s=0)
        if self._client is not None:
            await self._client.close()
        self._dispatcher = None
        self._client = None
        self._prober = None

    def _owned_done_partitions(self) -> set[int]:
        """The ``done`` partitions this worker writes (its active ones, not standbys)."""
        topic = self._tables.done.changelog_topic.get_topic_name()
        return {tp.partition for tp in self._app.assignor.assigned_actives() if tp.topic == topic}

    def committable(self, tp: TP) -> int | None:
        return None if self._dispatcher is None else self._dispatcher.committable(tp)

    def _refetch(self, tp: TP, offset: int) -> None:
        refetch = getattr(self._app.consumer, "refetch", None)
        if refetch is not None:
            refetch(tp, offset)

    def anchor(self, positions: Mapping[TP, int]) -> None:
        """faust sought these request partitions to their committed offsets."""
        offsets = {str(tp.partition): o for tp, o in positions.items()}
        log.info("partitions_anchored", offsets=offsets)
        if self._dispatcher is None:
            self._anchors.update(positions)
        else:
            self._dispatcher.anchor(positions)

    async def on_assigned(self, sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        owned = {tp for tp in assigned if tp.topic == self._settings.request_topic}
        first = self._assigned is None
        self._assigned = frozenset(tp.partition for tp in owned)
        self._owned = owned
        self._anchors = {tp: o for tp, o in self._anchors.items() if tp in owned}
        cancelled = in_flight = 0
        if self._dispatcher is not None:
            in_flight = self._dispatcher.in_flight
            self._dispatcher.share_capacity(self._assigned, self._settings.request_partitions)
            cancelled = self._dispatcher.assigned(owned)
        log.info(
            "partitions_assigned",
            request_partitions=len(owned),
            of=self._settings.request_partitions,
            in_flight=in_flight,
            moved_requests_cancelled=cancelled,
        )
        if first:
            gcfreeze.freeze("first_assignment")

    async def on_revoked(self, sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        """Kafka revokes every partition before it assigns again: nothing stops here.

        Requests keep running; ``on_assigned`` cancels those whose partition moved.
        """
        log.info(
            "partitions_revoked", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in revoked)
        )


def build(settings: Settings) -> faust.App:
    config = config_mod.load(settings.config_path)
    # Held until the process exits: two workers sharing RocksDB files would fight over them.
    tables_mod.lock_data_dir(settings.data_dir)
    app = create_app(settings)
    topics = declare(app, settings)
    tables = tables_mod.declare(app, settings)
    runtime = Runtime(app, settings, config, tables)
    consumer.install(
        app,
        frozenset({settings.request_topic}),
        runtime.committable,
        runtime.anchor,
        settings.fetch_wait_ms,
        FetchBatching(above_rps=settings.fetch_batch_above_rps),
        settings.fast_handover,
    )
    router.register(app, topics.requests, runtime)
    health.register(app, settings.probe_interval_s, runtime)
    # faust types a receiver as taking any positional arguments; these take the one
    # set of partitions faust sends (and its keywords).
    app.on_partitions_revoked.connect(runtime.on_revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(runtime.on_assigned)  # type: ignore[arg-type]
    app.on_before_shutdown.connect(runtime.drain)
    return app
