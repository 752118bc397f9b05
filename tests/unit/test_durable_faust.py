"""faust's own topics and producer are made durable by streams.durable.install."""

import asyncio

import faust

from streams import durable
from turnout.kafka.durability import TopicPolicy


def test_every_faust_topic_gets_the_policy_and_keeps_its_own_configs():
    """_create_topic is called with the policy's RF and min ISR over faust's configs."""
    app = faust.App("durable-test", broker="kafka://127.0.0.1:1")
    calls = []

    async def create(owner, client, topic, partitions, replication, **kwargs):
        calls.append((topic, partitions, replication, kwargs))

    app.transport._create_topic = create
    durable.install(app, TopicPolicy(3, 2))
    asyncio.run(
        app.transport._create_topic(
            None, None, "x-changelog", 8, 1, config={"cleanup.policy": "compact"}, timeout=5
        )
    )
    assert calls == [
        (
            "x-changelog",
            8,
            3,
            {
                "config": {
                    "min.insync.replicas": "2",
                    "unclean.leader.election.enable": "false",
                    "cleanup.policy": "compact",
                },
                "timeout": 5,
            },
        )
    ]


def test_faust_producer_is_idempotent_with_acks_all():
    """The producer class faust instantiates asks aiokafka for idempotence outside transactions."""
    app = faust.App("durable-test-2", broker="kafka://127.0.0.1:1")
    durable.install(app, TopicPolicy(1, 1))
    producer = app.transport.create_producer()
    assert producer._settings_extra() == {"acks": "all", "enable_idempotence": True}

    async def build():  # aiokafka wants a running loop to construct a producer
        p = producer._new_producer()
        await p.stop()  # never started: closes its client
        return p

    # aiokafka keeps a transaction manager exactly when idempotence is on.
    assert asyncio.run(build())._txn_manager is not None
