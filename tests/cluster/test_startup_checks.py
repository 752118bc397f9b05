"""Start against a real cluster: durable topics, and one clear line when something is wrong."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.cluster.drill import Cluster
from tests.integration.harness import (
    chat_request,
    config_for,
    events,
    free_port,
    run_turnout,
    unique,
)
from turnout.client import ReplyReader, RequestPublisher

pytestmark = pytest.mark.cluster


def worker_env(cluster: Cluster, tmp_path, request_topic: str, **extra: str) -> dict[str, str]:
    config = tmp_path / "c.yaml"
    config.write_text(config_for(("mock", "openai", "http://127.0.0.1:9")))
    app_id = unique("start")
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP": cluster.bootstrap,
        "TURNOUT_CONFIG": str(config),
        "TURNOUT_APP_ID": app_id,
        "TURNOUT_REQUEST_TOPIC": request_topic,
        "TURNOUT_HEALTH_TOPIC": f"{app_id}.health",
        "TURNOUT_DATA_DIR": str(tmp_path / app_id),
        "TURNOUT_LOG_FORMAT": "json",
        **extra,
    }


async def make_topic(cluster: Cluster, name: str, rf: int, configs: dict[str, str] | None = None):
    async with cluster.admin() as admin:
        await admin.create_topics([NewTopic(name, 2, rf, topic_configs=configs or {})])
    await cluster.wait_visible(name)  # the worker may ask any node


def assert_one_line(rc: int, out: str, err: str, expected: str) -> str:
    assert rc == 2, (rc, out, err)
    text = (out + err).strip()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert expected in lines[0], lines[0]
    return lines[0]


async def test_worker_refuses_a_request_topic_with_replication_factor_1(cluster, tmp_path):
    """An existing RF-1 request topic on a 3-broker cluster: exit 2, one line naming it."""
    topic = unique("start.requests")
    await make_topic(cluster, topic, 1)
    rc, out, err = await run_turnout(
        "worker", env=worker_env(cluster, tmp_path, topic), timeout_s=60
    )
    line = assert_one_line(rc, out, err, f"unsafe topic settings: {topic}: replication factor 1")
    assert "TURNOUT_ALLOW_UNSAFE_TOPICS=1" in line


async def test_worker_refuses_unclean_leader_election_on_a_reply_topic(cluster, tmp_path):
    """An existing reply topic with unclean.leader.election.enable=true is refused too."""
    topic = unique("start.requests")
    reply = f"turnout.replies.{unique('unclean')}"
    await make_topic(cluster, reply, 3, {"unclean.leader.election.enable": "true"})
    try:
        rc, out, err = await run_turnout(
            "worker", env=worker_env(cluster, tmp_path, topic), timeout_s=60
        )
        assert_one_line(rc, out, err, f"{reply}: unclean.leader.election.enable=true")
    finally:  # never leave it for the other tests' workers, which would refuse it too
        async with cluster.admin() as admin:
            await admin.delete_topics([reply])


async def test_gateway_refuses_an_unsafe_request_topic(cluster, tmp_path):
    """The gateway checks the same way and says so in one line."""
    topic = unique("start.requests")
    await make_topic(cluster, topic, 1)
    env = worker_env(cluster, tmp_path, topic, TURNOUT_GATEWAY_ID=unique("gw"))
    rc, out, err = await run_turnout("gateway", "--port", str(free_port()), env=env, timeout_s=60)
    assert_one_line(rc, out, err, f"unsafe topic settings: {topic}: replication factor 1")


async def test_allow_unsafe_topics_starts_with_a_warning(cluster, procs):
    """TURNOUT_ALLOW_UNSAFE_TOPICS=1: the worker starts and logs unsafe_topics_allowed."""
    topic = unique("start.requests")
    await make_topic(cluster, topic, 1)
    worker = procs.worker(
        config_for(("mock", "openai", "http://127.0.0.1:9")),
        app_id=unique("unsafe"),
        request_topic=topic,
        partitions=2,
        extra_env={"TURNOUT_ALLOW_UNSAFE_TOPICS": "1"},
    )
    deadline = time.monotonic() + 90
    while not events(worker, "partitions_assigned"):
        assert worker.alive(), worker.log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, worker.log_path.read_text()[-3000:]
        await asyncio.sleep(0.5)
    (warning,) = events(worker, "unsafe_topics_allowed")
    assert f"{topic}: replication factor 1" in warning["detail"]


async def test_unreachable_kafka_is_one_line(tmp_path, cluster):
    """Nothing listening at KAFKA_BOOTSTRAP: exit 2 and 'Kafka not reachable', no traceback."""
    env = worker_env(cluster, tmp_path, unique("x"), KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    rc, out, err = await run_turnout("worker", env=env, timeout_s=60)
    assert_one_line(rc, out, err, "Kafka not reachable at 127.0.0.1:")
    rc, out, err = await run_turnout("send", "hi", env=env, timeout_s=60)
    assert_one_line(rc, out, err, "turnout send: refusing to start: Kafka not reachable")


async def test_every_topic_a_worker_creates_is_replicated(cluster, procs, tmp_path):
    """Request, reply, dead-letter, health, changelog and faust's own topics: RF 3, min ISR 2."""
    backend = procs.backend()
    topic = unique("start.requests")
    app_id = unique("durable")
    worker = procs.worker(
        config_for(("mock", "openai", backend.url)),
        app_id=app_id,
        request_topic=topic,
        extra_env={"TURNOUT_DEAD_LETTER_TOPIC": f"{app_id}.dead-letter"},
    )
    deadline = time.monotonic() + 120
    while not events(worker, "partitions_assigned"):
        assert worker.alive() and time.monotonic() < deadline
        await asyncio.sleep(0.5)
    client = unique("c")
    pub = RequestPublisher(cluster.bootstrap, topic)
    await pub.start()
    try:
        await pub.send(chat_request("r1", client, "hello"))
        await pub.send_raw(b"not json", key=client.encode())  # dead-lettered
    finally:
        await pub.stop()
    reply_topic = f"turnout.replies.{client}"
    deadline = time.monotonic() + 120
    while not events(worker, "request_completed"):
        assert worker.alive() and time.monotonic() < deadline
        await asyncio.sleep(0.5)
    async with cluster.admin() as admin:
        names = [
            t for t in await admin.list_topics()
            if t.startswith(app_id) or t in (topic, reply_topic)
        ]  # fmt: skip
        described = await admin.describe_topics(names)
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
        )
    rf = {d["topic"]: {len(p["replicas"]) for p in d["partitions"]} for d in described}
    isr = {
        r["resource_name"]: {e["config_names"]: e["config_value"] for e in r["config_entries"]}[
            "min.insync.replicas"
        ]
        for c in configs
        for r in c.to_object()["resources"]
    }
    expected = {topic, reply_topic, f"{app_id}.health", f"{app_id}.dead-letter",
                f"{app_id}-done-changelog", f"{app_id}-client-buckets-changelog"}  # fmt: skip
    assert expected <= set(names), sorted(names)
    assert all(v == {3} for v in rf.values()), rf
    assert all(v == "2" for v in isr.values()), isr
    reader = ReplyReader(cluster.bootstrap, reply_topic)
    await reader.start(from_end=False)
    try:
        got = await reader.collect({"r1"}, timeout_s=30)
    finally:
        await reader.stop()
    assert got["r1"][0].status == "ok"
