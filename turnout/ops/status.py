"""Offsets and lag: how deep the request buffer is, per partition, for the worker group.

``turnout status`` prints the request topic's per-partition lag for the group
``TURNOUT_APP_ID`` (end offset minus committed offset: the requests accepted but
not yet answered) and, with ``--worker-url``, what running workers report on
``/status.json``. ``LagSampler`` feeds the same numbers to a worker's metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import urllib.request
from collections.abc import Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from turnout import logs
from turnout.kafka.admin import client_kwargs as kafka_kwargs

log = logs.get(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionLag:
    partition: int
    beginning: int
    end: int
    committed: int | None
    """None: the group never committed here; it will start at ``beginning``."""

    @property
    def lag(self) -> int:
        start = self.beginning if self.committed is None else max(self.committed, self.beginning)
        return max(self.end - start, 0)


def compute_lag(
    beginnings: Mapping[int, int], ends: Mapping[int, int], committed: Mapping[int, int]
) -> list[PartitionLag]:
    """Per-partition lag, in partition order. Pure."""
    return [PartitionLag(p, beginnings.get(p, 0), ends[p], committed.get(p)) for p in sorted(ends)]


class Offsets:
    """Reads topic offsets and a group's commits; one admin client and one group-less consumer."""

    def __init__(self, bootstrap: str) -> None:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_kwargs())
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, **kafka_kwargs(), enable_auto_commit=False,
        )

    async def start(self) -> None:
        await self._admin.start()
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def __aenter__(self) -> Offsets:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def partitions(self, topic: str) -> list[int]:
        """The topic's partitions; [] when it does not exist."""
        described = await self._admin.describe_topics([topic])
        for d in described:
            if d.get("topic") == topic and not d.get("error_code"):
                return sorted(p["partition"] for p in d["partitions"])
        return []

    async def ends(self, topic: str, partitions: list[int]) -> dict[int, int]:
        tps = [TopicPartition(topic, p) for p in partitions]
        return {tp.partition: o for tp, o in (await self._consumer.end_offsets(tps)).items()}

    async def beginnings(self, topic: str, partitions: list[int]) -> dict[int, int]:
        tps = [TopicPartition(topic, p) for p in partitions]
        return {tp.partition: o for tp, o in (await self._consumer.beginning_offsets(tps)).items()}

    async def offsets_for_times(
        self, topic: str, partitions: list[int], ts_ms: int
    ) -> dict[int, int | None]:
        """The first offset at or after ``ts_ms`` per partition; None when there is none."""
        found = await self._consumer.offsets_for_times(
            {TopicPartition(topic, p): ts_ms for p in partitions}
        )
        return {tp.partition: (None if o is None else o.offset) for tp, o in found.items()}

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        offsets = await self._admin.list_consumer_group_offsets(group)
        return {
            tp.partition: m.offset
            for tp, m in offsets.items()
            if tp.topic == topic and m.offset >= 0
        }

    async def lag(self, group: str, topic: str) -> list[PartitionLag]:
        partitions = await self.partitions(topic)
        if not partitions:
            return []
        return compute_lag(
            await self.beginnings(topic, partitions),
            await self.ends(topic, partitions),
            await self.committed(group, topic),
        )


class LagSampler:
    """Every ``interval_s``, sets ``metrics.consumer_lag`` from the group's commits.

    The worker starts one beside its web server: ``await sampler.start()`` ...
    ``await sampler.stop()``. A failed sample is retried next time; the first failure
    and the recovery are logged.
    """

    def __init__(
        self, bootstrap: str, group: str, topic: str, metrics: Any, interval_s: float = 5.0
    ) -> None:
        self._offsets = Offsets(bootstrap)
        self._group = group
        self._topic = topic
        self._metrics = metrics
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._offsets.start()
        self._task = asyncio.create_task(self._run(), name="turnout-lag-sampler")

    async def sample(self) -> None:
        lags = await self._offsets.lag(self._group, self._topic)
        self._metrics.consumer_lag({p.partition: p.lag for p in lags})

    async def _run(self) -> None:
        # One line when sampling starts failing and one when it works again (with the
        # count), not one per sample: a broker outage is reported by turnout.worker.outage.
        failures = 0
        while True:
            try:
                await self.sample()
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning("lag_sample_failed", error=f"{type(exc).__name__}: {exc}")
            else:
                if failures:
                    log.info("lag_sample_recovered", failed_samples=failures)
                failures = 0
            await asyncio.sleep(self._interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._offsets.stop()


# -- turnout status ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--worker-url",
        action="append",
        default=[],
        metavar="URL",
        help="a worker's web address (http://host:TURNOUT_WEB_PORT); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def fetch_worker(url: str, timeout_s: float = 3.0) -> dict[str, Any]:
    """A worker's /status.json, or {"error": ...} when it cannot be read."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/status.json", timeout=timeout_s) as r:
            doc = orjson.loads(r.read())
            return doc if isinstance(doc, dict) else {"error": "not a JSON object"}
    except (OSError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


async def run(settings: Any, args: argparse.Namespace) -> int:
    async with Offsets(settings.bootstrap) as offsets:
        lags = await offsets.lag(settings.app_id, settings.request_topic)
    workers = {}
    for url in args.worker_url:
        workers[url] = await asyncio.to_thread(fetch_worker, url)
    if args.json:
        doc = {
            "group": settings.app_id,
            "topic": settings.request_topic,
            "partitions": [{**dataclasses.asdict(p), "lag": p.lag} for p in lags],
            "lag_total": sum(p.lag for p in lags),
            "workers": workers,
        }
        sys.stdout.buffer.write(orjson.dumps(doc) + b"\n")
        return 0
    print(render_text(settings.app_id, settings.request_topic, lags, workers))
    return 0 if lags else 1


def render_text(
    group: str, topic: str, lags: list[PartitionLag], workers: Mapping[str, Mapping[str, Any]]
) -> str:
    if not lags:
        return f"topic {topic} does not exist (no request was ever published to it)"
    lines = [
        f"group {group}, topic {topic}",
        f"{'partition':>9} {'end':>10} {'committed':>10} {'lag':>8}",
    ]
    for p in lags:
        committed = "-" if p.committed is None else str(p.committed)
        lines.append(f"{p.partition:>9} {p.end:>10} {committed:>10} {p.lag:>8}")
    lines.append(f"total lag {sum(p.lag for p in lags)} (requests accepted, not yet answered)")
    for url, doc in workers.items():
        if "error" in doc and "backends" not in doc:
            lines.append(f"worker {url}: unreachable ({doc['error']})")
            continue
        t = doc.get("totals", {})
        backends = ", ".join(
            f"{bid}={b.get('state', '?')}"
            + (f" ({b['latency_ms']} ms)" if b.get("latency_ms") is not None else "")
            for bid, b in doc.get("backends", {}).items()
        )
        lines.append(
            f"worker {url}: in flight {doc.get('in_flight', '?')}, ok {t.get('ok', 0)}, "
            f"errors {t.get('error', 0)}, skipped {t.get('skipped', 0)}, "
            f"dead letters {t.get('dead_lettered', 0)}; backends: {backends or 'none'}"
        )
    return "\n".join(lines)
