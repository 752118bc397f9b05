"""Limits run on broker time: turnout creates its request topic with LogAppendTime."""

import asyncio
import time

from aiokafka import AIOKafkaProducer

from tests.integration.harness import (
    BOOTSTRAP,
    chat_request,
    collect_replies,
    config_for,
    events,
    unique,
)
from turnout.client import ensure_topics, timestamp_type


async def wait_for_event(worker, name: str, timeout_s: float = 60) -> list[dict]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        found = events(worker, name)
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {name} line within {timeout_s} s")


async def test_a_request_topic_turnout_creates_stamps_records_with_broker_time(spawn, names):
    """A fake producer timestamp an hour old neither expires the request nor is kept."""
    backend = spawn.backend()
    client = unique("c")
    worker = spawn.worker(
        config_for(("b", "openai", backend.url)),
        app_id=names.app_id,
        request_topic=names.request_topic,
    )
    await wait_for_event(worker, "worker_started")
    assert await timestamp_type(BOOTSTRAP, names.request_topic) == "LogAppendTime"
    assert not events(worker, "request_topic_producer_time")

    topic = f"turnout.replies.{client}"
    await ensure_topics(BOOTSTRAP, [topic], 1)
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    await producer.start()
    an_hour_ago_ms = int(time.time() * 1000) - 3_600_000
    try:
        req = chat_request("old-stamp", client, "hi", timeout_ms=30_000)
        await producer.send_and_wait(
            names.request_topic,
            req.to_wire(),
            key=client.encode(),
            timestamp_ms=an_hour_ago_ms,
        )
    finally:
        await producer.stop()
    got = await collect_replies({topic: {"old-stamp"}}, timeout_s=60)
    (reply,) = got[topic]["old-stamp"]
    # Under CreateTime the deadline (30 s after the stamp) would have passed an hour ago.
    assert reply.status == "ok", reply.error
    assert reply.timings is not None and reply.timings.queue_ms < 60_000


async def test_the_worker_warns_when_an_existing_request_topic_uses_producer_time(spawn, names):
    """A request topic created elsewhere with CreateTime gets one warning at start."""
    await ensure_topics(BOOTSTRAP, [names.request_topic], 2)  # the broker's default: CreateTime
    assert await timestamp_type(BOOTSTRAP, names.request_topic) == "CreateTime"
    backend = spawn.backend()
    worker = spawn.worker(
        config_for(("b", "openai", backend.url)),
        app_id=names.app_id,
        request_topic=names.request_topic,
        partitions=2,
    )
    (warning,) = await wait_for_event(worker, "request_topic_producer_time")
    assert warning["level"] == "warning"
    assert warning["topic"] == names.request_topic
    assert warning["timestamp_type"] == "CreateTime"
    assert "message.timestamp.type=LogAppendTime" in warning["fix"]
