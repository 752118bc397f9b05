"""Broker failures under load on a real three-node cluster: no accepted request is lost.

Each drill runs 2,000 requests from 10 Kafka clients through one worker, and
sync chat calls through a gateway at 5/s meanwhile (every one must succeed),
takes brokers away mid-load, and prints sent / answered / lost / duplicated and
the longest pause in replies. Duplicates are
allowed by the contract (readers dedupe by id) and reported; losses are not.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request

import pytest

from tests.cluster.drill import NODES, Cluster, DrillResult, Load
from tests.integration.harness import config_for, events, unique
from turnout.client import ensure_topics
from turnout.kafka import cluster as kafka_cluster

pytestmark = pytest.mark.cluster

TOTAL = 2000
CLIENTS = 10
PARTITIONS = 8


async def setup(cluster: Cluster, procs, *, rate: float) -> tuple[Load, object, object]:
    await cluster.wait_healthy()
    request_topic = unique("drill.requests")
    await ensure_topics(cluster.bootstrap, [request_topic], PARTITIONS)
    backend = procs.backend("--latency-ms", "20")
    worker = procs.worker(
        config_for(("mock", "openai", backend.url)),
        app_id=unique("drill"),
        request_topic=request_topic,
        partitions=PARTITIONS,
    )
    gateway = procs.gateway(worker, request_topic)
    deadline = time.monotonic() + 120
    while not events(worker, "partitions_assigned"):
        assert worker.alive(), worker.log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, "worker got no partitions in 120 s"
        await asyncio.sleep(0.5)
    load = Load(
        cluster.bootstrap,
        request_topic,
        clients=CLIENTS,
        total=TOTAL,
        rate=rate,
        http_url=gateway.url,
    )
    await load.prepare()
    return load, worker, gateway


def report(capsys: pytest.CaptureFixture[str], result: DrillResult) -> None:
    with capsys.disabled():
        print(f"\n{result.line()}")


def assert_survived(result: DrillResult, worker, gateway) -> None:
    assert worker.alive() and worker.runs == 1, "the worker died or was restarted"
    assert gateway.proc.poll() is None, "the gateway died"
    with urllib.request.urlopen(f"{gateway.url}/readyz", timeout=5) as r:
        assert r.status == 200
    assert result.refused == 0, f"Kafka refused {result.refused} requests: {result.line()}"
    assert result.sent == TOTAL, result.line()
    assert result.lost == 0, result.line()
    assert result.answered == TOTAL, result.line()
    assert result.http_sent > 0 and result.http_ok == result.http_sent, (
        f"gateway calls failed: {result.http_errors[:5]}; {result.line()}"
    )


async def test_kill_9_of_the_busiest_request_leader(cluster: Cluster, procs, capsys) -> None:
    """kill -9 of the broker leading most request partitions mid-load loses no request."""
    load, worker, gateway = await setup(cluster, procs, rate=100)
    leaders = await cluster.leaders(load.request_topic)
    victim = kafka_cluster.busiest_leader(leaders)
    led = sum(1 for b in leaders.values() if b == victim)

    async def kill() -> None:
        await asyncio.to_thread(cluster.kill, victim)

    result = await load.run(
        f"kill -9 of node {victim} (led {led}/{PARTITIONS})", kill, action_after=TOTAL // 3
    )
    report(capsys, result)
    await asyncio.to_thread(cluster.start, victim)
    await cluster.wait_healthy()
    assert_survived(result, worker, gateway)


async def test_rolling_restart_of_all_brokers(cluster: Cluster, procs, capsys) -> None:
    """Each broker in turn stopped and restarted under load (waiting for in-sync) loses none."""
    load, worker, gateway = await setup(cluster, procs, rate=40)

    async def rolling() -> None:
        for node in range(1, NODES + 1):
            await asyncio.to_thread(cluster.stop, node)
            await asyncio.to_thread(cluster.start, node)
            await cluster.wait_healthy()

    result = await load.run("rolling restart of nodes 1, 2, 3", rolling, action_after=200)
    report(capsys, result)
    assert_survived(result, worker, gateway)


async def test_controller_failover(cluster: Cluster, procs, capsys) -> None:
    """kill -9 of the active KRaft controller mid-load: a new one is elected, none lost."""
    load, worker, gateway = await setup(cluster, procs, rate=100)
    victim = await cluster.controller()
    elected: list[tuple[int, float]] = []

    async def kill_controller() -> None:
        t0 = time.monotonic()
        await asyncio.to_thread(cluster.kill, victim)
        while time.monotonic() - t0 < 60:
            try:
                leader = await cluster.controller()
                if leader not in (victim, -1):
                    elected.append((leader, time.monotonic() - t0))
                    return
            except Exception:
                pass
            await asyncio.sleep(0.2)

    result = await load.run(
        f"kill -9 of the active controller (node {victim})",
        kill_controller,
        action_after=TOTAL // 3,
    )
    report(capsys, result)
    with capsys.disabled():
        print(f"new controller: {elected}")
    await asyncio.to_thread(cluster.start, victim)
    await cluster.wait_healthy()
    assert elected, "no new controller was elected within 60 s"
    assert_survived(result, worker, gateway)
