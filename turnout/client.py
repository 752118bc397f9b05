"""A small Kafka client for turnout's wire contract: publish requests, collect replies.

Used by ``turnout send``, the tests and the benchmarks; producers in other
languages do the same with the JSON Schema files in ``schemas/``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.types import Reply, Request, decode_reply_message
from turnout import kafka_admin
from turnout.kafka_admin import partition_counts

__all__ = ["ReplyReader", "RequestPublisher", "ensure_topics", "partition_counts"]


async def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    configs: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Create the topics that do not exist, durably; return every named topic's partition count.

    Replication factor and min.insync.replicas come from the cluster's ``TopicPolicy``
    and security from the environment (``turnout.kafka_admin``).
    """
    return await kafka_admin.ensure_topics(bootstrap, names, partitions, configs)


class ReplyReader:
    """Reads a reply topic from a chosen position, without a consumer group."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **kafka_admin.client_kwargs(),
        )

    async def start(self, *, from_end: bool) -> None:
        partitions = (await ensure_topics(self._bootstrap, [self.topic], 1))[self.topic]
        await self._consumer.start()
        tps = [TopicPartition(self.topic, p) for p in range(partitions)]
        self._consumer.assign(tps)
        if from_end:
            await self._consumer.seek_to_end(*tps)
            for tp in tps:  # resolve positions now, before any request is sent
                await self._consumer.position(tp)
        else:
            await self._consumer.seek_to_beginning(*tps)

    async def collect(self, ids: set[str], timeout_s: float) -> dict[str, list[Reply]]:
        """Read until every id in ``ids`` has a reply or ``timeout_s`` passes; keep repeats."""
        got: dict[str, list[Reply]] = {}
        deadline = time.monotonic() + timeout_s
        while not ids <= got.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            batches = await self._consumer.getmany(timeout_ms=int(min(left, 0.5) * 1000))
            for records in batches.values():
                for rec in records:
                    reply = decode_reply_message(rec.value)
                    if isinstance(reply, Reply):
                        got.setdefault(reply.id, []).append(reply)
        return got

    async def stop(self) -> None:
        await self._consumer.stop()


class RequestPublisher:
    def __init__(self, bootstrap: str, topic: str = "turnout.requests") -> None:
        self.topic = topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            **kafka_admin.client_kwargs(),
        )

    async def start(self) -> None:
        await self._producer.start()

    async def send(self, request: Request) -> None:
        await self._producer.send_and_wait(
            self.topic, request.to_wire(), key=request.client_id.encode()
        )

    async def send_raw(self, value: bytes, key: bytes | None) -> None:
        await self._producer.send_and_wait(self.topic, value, key=key)

    async def stop(self) -> None:
        await self._producer.stop()
