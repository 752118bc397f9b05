"""A small Kafka client for turnout's wire contract: publish requests, collect replies.

Used by ``turnout send``, the tests and the benchmarks; producers in other
languages do the same with the JSON Schema files in ``schemas/``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import GroupCoordinatorNotAvailableError, KafkaError

from schemas.types import Reply, Request, decode_reply_message
from turnout.kafka import admin as kafka_admin
from turnout.kafka.admin import partition_counts

__all__ = ["ReplyReader", "RequestPublisher", "ensure_topics", "partition_counts"]

REQUEST_TOPIC_CONFIGS = {"message.timestamp.type": "LogAppendTime"}
"""How turnout creates a request topic: records carry the broker's time, not the producer's.

Rate limits and deadlines run on a request record's timestamp. With CreateTime the
producer sets it, so spacing fake timestamps would defeat a client's limits; with
LogAppendTime the broker stamps each record as it appends it.
"""


async def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    configs: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Create the topics that do not exist, durably; return every named topic's partition count.

    Replication factor and min.insync.replicas come from the cluster's ``TopicPolicy``
    and security from the environment (``turnout.kafka.admin``).
    """
    return await kafka_admin.ensure_topics(bootstrap, names, partitions, configs)


async def ensure_request_topic(bootstrap: str, name: str, partitions: int) -> int:
    """Create the request topic if missing (broker time, see ``REQUEST_TOPIC_CONFIGS``)."""
    return (await ensure_topics(bootstrap, [name], partitions, REQUEST_TOPIC_CONFIGS))[name]


async def timestamp_type(bootstrap: str, topic: str) -> str | None:
    """The topic's ``message.timestamp.type`` (CreateTime or LogAppendTime), None if unknown."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_admin.client_kwargs())
    await admin.start()
    try:
        described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    for response in described:
        for resource in response.resources:
            for entry in resource[4]:
                if entry[0] == "message.timestamp.type":
                    return str(entry[1])
    return None


async def group_members(bootstrap: str, group: str) -> int | None:
    """How many consumers are in ``group`` now; None when the broker cannot say.

    A broker that has never had a consumer group has no coordinator yet: 0.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_admin.client_kwargs())
    try:
        await admin.start()
        answers = await admin.describe_consumer_groups([group])
    except GroupCoordinatorNotAvailableError:
        return 0
    except (KafkaError, OSError):
        return None
    finally:
        await admin.close()
    # DescribeGroups: groups = [(error_code, group_id, state, protocol_type, protocol, members)]
    return sum(len(g[5]) for a in answers for g in a.groups if g[1] == group and g[0] == 0)


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
