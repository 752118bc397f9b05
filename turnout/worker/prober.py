"""Active health probes and the ``turnout.health`` topic. The I/O edge of health.

One prober for the whole deployment: faust runs ``Prober.round`` on the group's
leader only. Each round sends every backend a tiny real request (one output
token) whose response shape the protocol adapter checks, then publishes the
backend's ``HealthRecord`` with the probe's result to the compacted health
topic, keyed by backend id. Every worker runs a ``HealthFeed`` that reads the
topic and feeds each new probe result into its own ``HealthBook``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from turnout import logs
from turnout.backends import BackendClient
from turnout.client import ensure_topics
from turnout.config import Backend, Config
from turnout.errors import BackendError
from turnout.health.book import HealthBook
from turnout.health.machine import HealthRecord, InvalidHealthRecord, State
from turnout.kafka.admin import client_kwargs as kafka_kwargs
from turnout.settings import Settings
from turnout.worker.chooser import report_transitions
from turnout.worker.metrics import Metrics
from turnout.worker.publisher import Publisher

log = logs.get("turnout.health")

PROBE_BODIES: dict[str, dict[str, Any]] = {
    "chat": {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1},
    "embeddings": {"input": "ping"},
}


def _now_ms() -> int:
    return int(time.time() * 1000)


class Prober:
    def __init__(
        self,
        *,
        settings: Settings,
        config: Config,
        client: BackendClient,
        book: HealthBook,
        publisher: Publisher,
        at_cap: Callable[[str], bool] | None = None,
    ) -> None:
        self._at_cap = at_cap
        """Whether this worker has a backend's whole concurrency cap in flight."""
        self._settings = settings
        self._config = config
        self._client = client
        self._book = book
        self._publisher = publisher
        self._rounds = 0

    async def round(self) -> None:
        """Probe every backend due this round (see ``probe.every`` in the config).

        A healthy backend that served real traffic since the last round is skipped:
        that traffic is fresher evidence than a probe, and free. So probes cost
        nothing under load and never add a call on top of a busy backend's cap;
        unhealthy backends get no traffic and are always probed.

        A healthy backend with its whole concurrency cap in flight is skipped too: a
        probe would queue behind those calls, and a one-slot server (llama.cpp's
        Python server) busy with a long generation would fail it as if it were dead.
        The calls in flight are the evidence instead: they finish or time out.
        """
        since = _now_ms() - int(self._settings.probe_interval_s * 1000)
        due, busy = [], []
        for b in self._config.backends:
            if self._book.serving_well(b.id, since) or self._full(b.id):
                busy.append(b)
            elif self._rounds % b.probe.every == 0:
                due.append(b)
        self._rounds += 1
        # Busy backends still get their record published (no probe result in it), so
        # `turnout backends` and the status page list every backend.
        await asyncio.gather(*(self._probe(b) for b in due), *(self._publish(b) for b in busy))

    def _full(self, backend_id: str) -> bool:
        state = self._book.state(backend_id)
        healthy = state in (State.HEALTHY, State.DEGRADED)
        return healthy and self._at_cap is not None and self._at_cap(backend_id)

    async def _publish(self, backend: Backend) -> None:
        record = self._book.machines[backend.id].record()
        await self._publisher.publish(self._settings.health_topic, record.key, record.to_wire(), ())

    async def _probe(self, backend: Backend) -> None:
        started = time.monotonic()
        try:
            await self._client.call(
                backend,
                kind=backend.probe.kind,
                model=backend.probe.model or backend.models[0],
                body=PROBE_BODIES[backend.probe.kind],
                timeout_s=self._settings.probe_timeout_s,
            )
            ok, error = True, None
        except BackendError as exc:
            ok, error = False, exc.code
        latency = (time.monotonic() - started) * 1000
        record = msgspec.structs.replace(
            self._book.machines[backend.id].record(),
            probe_ok=ok,
            probe_latency_ms=round(latency, 1),
            probe_at_ms=_now_ms(),
            probe_error=error,
        )
        await self._publisher.publish(self._settings.health_topic, record.key, record.to_wire(), ())
        log.debug("probe_done", backend=backend.id, ok=ok, error=error, latency_ms=latency)


class HealthFeed:
    """Reads the health topic from the start and applies new probe results to the book."""

    def __init__(
        self,
        settings: Settings,
        book: HealthBook,
        on_change: Callable[[], None],
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._settings = settings
        self._book = book
        self._on_change = on_change
        self._seen: dict[str, int] = {}
        self.latest: dict[str, HealthRecord] = {}

    async def run(self) -> None:
        topic = self._settings.health_topic
        partitions = (await ensure_topics(self._settings.bootstrap, [topic], 1))[topic]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap, **kafka_kwargs(), enable_auto_commit=False
        )
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                # Every 100 ms at least: the tick runs the hang detector, whose bound
                # should not be stretched by a slow tick.
                batches = await consumer.getmany(timeout_ms=100)
                changed = self._book.tick(_now_ms())
                for records in batches.values():
                    for rec in records:
                        changed = self._apply(rec.value) or changed
                if changed:
                    report_transitions(self._book, self._metrics)
                    self._on_change()
        finally:
            await consumer.stop()

    def _apply(self, raw: bytes | None) -> bool:
        if raw is None:
            return False
        try:
            record = HealthRecord.from_wire(raw)
        except InvalidHealthRecord as exc:
            log.warning("health_record_invalid", error=str(exc))
            return False
        self.latest[record.backend] = record
        at = record.probe_at_ms
        now = _now_ms()
        # Old probes (from before this worker started) say nothing about now.
        if at is None or at <= self._seen.get(record.backend, 0) or now - at > 60_000:
            return False
        self._seen[record.backend] = at
        self._book.probe(
            record.backend,
            bool(record.probe_ok),
            record.probe_latency_ms or 0.0,
            now,
            timed_out=record.probe_error == "backend_timeout",
        )
        return True


async def read_health(settings: Settings, timeout_s: float = 5.0) -> dict[str, HealthRecord]:
    """The latest published record of every backend (what ``turnout backends`` shows)."""
    topic = settings.health_topic
    partitions = (await ensure_topics(settings.bootstrap, [topic], 1))[topic]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, **kafka_kwargs(), enable_auto_commit=False,
    )
    await consumer.start()
    latest: dict[str, HealthRecord] = {}
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for rec in records:
                    if rec.value is not None:
                        with contextlib.suppress(InvalidHealthRecord):
                            record = HealthRecord.from_wire(rec.value)
                            latest[record.backend] = record
    finally:
        await consumer.stop()
    return latest


def format_health(records: dict[str, HealthRecord], now_ms: int) -> str:
    """A table a person can read: state, since when, why, success interval, latency."""
    if not records:
        return "no health records yet: is a worker running? (the group leader probes backends)"
    rows = [("backend", "state", "since", "success (CI)", "n", "p50/p95/p99 ms", "probe", "why")]
    for b, r in sorted(records.items()):
        since = f"{(now_ms - r.since_ms) / 1000:.0f}s ago"
        ci = f"{r.success_low:.0%}-{r.success_high:.0%}"
        lat = "/".join("-" if v is None else f"{v:.0f}" for v in (r.p50_ms, r.p95_ms, r.p99_ms))
        probe = "traffic" if r.probe_ok is None else ("ok" if r.probe_ok else "FAILED")
        rows.append((b, r.state.name, since, ci, str(r.n), lat, probe, r.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    )
