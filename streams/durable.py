"""Durable topics and producers for the faust app.

faust creates its own topics (table changelogs, reply topics the publisher declares,
its leader topic) with ``topic_replication_factor`` (1 by default) and no
``min.insync.replicas``, and its producer enables idempotence only inside a
transaction. ``install`` makes every topic the app creates use the cluster's
``TopicPolicy`` and every producer it makes use acks=all with idempotence (no
duplicates from the producer's own retries while a partition leader moves).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from turnout.kafka.durability import TopicPolicy


def install(app: Any, policy: TopicPolicy) -> None:
    """Call before the app starts (as ``streams.consumer.install``)."""
    transport = app.transport
    create = transport._create_topic

    async def create_topic(
        owner: Any, client: Any, topic: str, partitions: int, replication: int, **kwargs: Any
    ) -> None:
        config: Mapping[str, Any] | None = kwargs.get("config")
        kwargs["config"] = policy.configs({k: str(v) for k, v in (config or {}).items()})
        await create(owner, client, topic, partitions, policy.replication_factor, **kwargs)

    transport._create_topic = create_topic
    transport.Producer = type(
        "TurnoutProducer", (transport.Producer,), {"_settings_extra": _idempotent}
    )


def _idempotent(self: Any) -> Mapping[str, Any]:
    return {"acks": "all", "enable_idempotence": True}
