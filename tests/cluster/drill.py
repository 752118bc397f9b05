"""Failover drills: a real three-node cluster, real load, a broker taken away mid-flight.

``Cluster`` drives ``scripts/kafka`` (KAFKA_NODES=3) and reads the cluster's state
(partition leaders, the active controller, under-replicated partitions).
``Load`` publishes requests for several clients at a steady rate while a drill
action runs, reads every client's reply topic, and reports what a platform team
asks after a broker failure: sent, refused, answered, lost, duplicated, and the
longest pause in replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import pathlib
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.conn import create_conn
from aiokafka.protocol.metadata import MetadataRequest

from schemas.types import Reply, decode_reply_message
from tests.integration.harness import chat_request
from turnout.client import ensure_topics
from turnout.kafka import cluster as kafka_cluster

NODES = 3


class Cluster:
    def __init__(self, root: pathlib.Path, *, port: int, state: pathlib.Path) -> None:
        self.root = root
        self.port = port
        self.state = state
        self.bootstrap = ",".join(f"127.0.0.1:{self.node_port(i)}" for i in range(1, NODES + 1))

    def node_port(self, node: int) -> int:
        return self.port + 2 * (node - 1)

    def script(
        self,
        *args: str,
        timeout_s: float = 120,
        check: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "KAFKA_NODES": str(NODES),
            "KAFKA_BOOTSTRAP": f"127.0.0.1:{self.port}",
            "TURNOUT_STATE": str(self.state),
            "KAFKA_START_TIMEOUT": "180",
            **(extra_env or {}),
        }
        return subprocess.run(
            [str(self.root / "scripts" / "kafka"), *args],
            env=env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=check,
        )

    def kill(self, node: int) -> None:
        """kill -9: no controlled shutdown, leadership moves only after the session times out."""
        self.script("kill-node", str(node))

    def stop(self, node: int) -> None:
        """SIGTERM: a controlled shutdown that hands leadership over first."""
        self.script("stop-node", str(node), timeout_s=90)

    def start(self, node: int) -> None:
        self.script("start-node", str(node))

    @contextlib.asynccontextmanager
    async def admin(self) -> AsyncIterator[AIOKafkaAdminClient]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            yield admin
        finally:
            await admin.close()

    async def wait_visible(self, topic: str, timeout_s: float = 60) -> None:
        """Until every node's metadata has the topic with a leader for each partition.

        A topic just created is known to the controller first; a client that asks
        another node a moment later may not see it yet (slow under load).
        """
        deadline = time.monotonic() + timeout_s
        for node in range(1, NODES + 1):
            while True:
                conn = await create_conn("127.0.0.1", self.node_port(node))
                try:  # ask this node only
                    metadata = ClusterMetadata()
                    metadata.update_metadata(await conn.send(MetadataRequest([topic], False)))
                finally:
                    conn.close()
                parts = metadata.partitions_for_topic(topic) or set()
                leaders = [metadata.leader_for_partition(TopicPartition(topic, p)) for p in parts]
                if parts and all(leader is not None and leader >= 0 for leader in leaders):
                    break
                assert time.monotonic() < deadline, f"{topic} not visible on node {node}"
                await asyncio.sleep(0.2)

    async def leaders(self, topic: str) -> dict[int, int]:
        async with self.admin() as admin:
            return await kafka_cluster.partition_leaders(admin, topic)

    async def controller(self) -> int:
        async with self.admin() as admin:
            return (await kafka_cluster.describe_quorum(admin)).leader_id

    async def wait_healthy(self, timeout_s: float = 120) -> None:
        """All brokers registered and every partition of every topic fully in sync."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                async with self.admin() as admin:
                    brokers = await kafka_cluster.broker_ids(admin)
                    described = await admin.describe_topics(await admin.list_topics())
                    behind = [
                        f"{d['topic']}:{p['partition']}"
                        for d in described
                        for p in d["partitions"]
                        if len(p["isr"]) < len(p["replicas"]) or p["leader"] < 0
                    ]
                    quorum = await kafka_cluster.describe_quorum(admin)
                if len(brokers) == NODES and not behind and quorum.leader_id > 0:
                    return
                last = f"brokers {brokers}, {len(behind)} partitions not in sync {behind[:3]}"
            except Exception as exc:  # a node still starting
                last = repr(exc)
            await asyncio.sleep(1)
        raise AssertionError(f"cluster not healthy after {timeout_s}s: {last}")


@dataclasses.dataclass
class DrillResult:
    name: str
    sent: int  # acknowledged by Kafka
    refused: int  # the producer gave up on them (the client knows: not lost, but counted)
    answered: int
    lost: int  # acknowledged, never answered
    duplicated: int  # ids answered more than once
    pause_s: float  # longest gap between replies after the action
    elapsed_s: float
    http_sent: int = 0  # sync chat calls through the gateway, during the same load
    http_ok: int = 0
    http_errors: tuple[str, ...] = ()

    def line(self) -> str:
        http = (
            f"; through the gateway: sent {self.http_sent} answered {self.http_ok}"
            if self.http_sent
            else ""
        )
        return (
            f"drill {self.name}: sent {self.sent} answered {self.answered} lost {self.lost} "
            f"duplicated {self.duplicated} refused {self.refused}{http}; longest pause in "
            f"replies {self.pause_s:.1f}s; {self.elapsed_s:.0f}s in all (2 shared cores: "
            "times are rough)"
        )


class Load:
    """``total`` requests from ``clients`` client ids at ``rate`` per second, all replies read."""

    def __init__(
        self,
        bootstrap: str,
        request_topic: str,
        *,
        clients: int,
        total: int,
        rate: float,
        http_url: str | None = None,
        http_rate: float = 5.0,
    ) -> None:
        self.http_url = http_url
        self.http_rate = http_rate
        self.http_sent = 0
        self.http_ok = 0
        self.http_errors: list[str] = []
        self.bootstrap = bootstrap
        self.request_topic = request_topic
        self.clients = [f"drill-{i}-{os.urandom(3).hex()}" for i in range(clients)]
        self.total = total
        self.rate = rate
        self.arrivals: dict[str, list[float]] = {}
        self.acked: set[str] = set()
        self.refused: set[str] = set()

    def reply_topics(self) -> list[str]:
        return [f"turnout.replies.{c}" for c in self.clients]

    async def prepare(self) -> None:
        await ensure_topics(self.bootstrap, self.reply_topics(), 2)

    async def _read(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for records in batches.values():
                for rec in records:
                    reply = decode_reply_message(rec.value)
                    if isinstance(reply, Reply):
                        self.arrivals.setdefault(reply.id, []).append(now)

    async def _http(self, stop: asyncio.Event) -> None:
        """Sync chat calls through the gateway at ``http_rate`` until ``stop``."""
        import aiohttp

        async def one(i: int, http: aiohttp.ClientSession) -> None:
            body = {"model": "default", "messages": [{"role": "user", "content": f"gw {i}"}]}
            try:
                async with http.post(f"{self.http_url}/v1/chat/completions", json=body) as r:
                    await r.read()
                    if r.status == 200:
                        self.http_ok += 1
                    else:
                        self.http_errors.append(f"{r.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.http_errors.append(type(exc).__name__)

        calls = []
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not stop.is_set():
                self.http_sent += 1
                calls.append(asyncio.create_task(one(self.http_sent, http)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1 / self.http_rate)
            await asyncio.gather(*calls)

    async def run(
        self,
        name: str,
        action: Callable[[], Awaitable[None]],
        *,
        action_after: int,
        answer_timeout_s: float = 180,
    ) -> DrillResult:
        """Send; after ``action_after`` sends start ``action``; wait for every acked reply."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, request_timeout_ms=30_000
        )
        await consumer.start()
        tps = [TopicPartition(t, p) for t in self.reply_topics() for p in range(2)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        stop = asyncio.Event()
        reader = asyncio.create_task(self._read(consumer, stop))
        http_stop = asyncio.Event()
        http = asyncio.create_task(self._http(http_stop)) if self.http_url else None
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=60_000,
        )
        await producer.start()
        started = time.monotonic()
        action_task: asyncio.Task[None] | None = None
        action_at = 0.0
        pending: list[asyncio.Task[None]] = []

        async def deliver(rid: str, fut: Awaitable[object]) -> None:
            try:
                await fut
                self.acked.add(rid)
            except Exception:
                self.refused.add(rid)

        try:
            for i in range(self.total):
                client = self.clients[i % len(self.clients)]
                rid = f"{client}-{i}"
                request = chat_request(rid, client, f"drill {i}", timeout_ms=300_000)
                fut = await producer.send(
                    self.request_topic, request.to_wire(), key=client.encode()
                )
                pending.append(asyncio.create_task(deliver(rid, fut)))
                if i + 1 == action_after:
                    action_at = time.monotonic()
                    action_task = asyncio.create_task(action())
                delay = started + (i + 1) / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await asyncio.gather(*pending)
            http_stop.set()
            if action_task is not None:
                await action_task
            if http is not None:
                await http
            deadline = time.monotonic() + answer_timeout_s
            # The reader task fills arrivals; poll them.
            while time.monotonic() < deadline and not self.acked <= self.arrivals.keys():  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)  # late duplicates show up too
        finally:
            stop.set()
            http_stop.set()
            await reader
            await producer.stop()
            await consumer.stop()
            if action_task is not None and not action_task.done():
                action_task.cancel()
        firsts = sorted(min(ts) for ts in self.arrivals.values())
        after = [action_at] + [t for t in firsts if t >= action_at]
        pause = max((b - a for a, b in itertools.pairwise(after)), default=0.0)
        answered = len(self.acked & self.arrivals.keys())
        return DrillResult(
            name=name,
            sent=len(self.acked),
            refused=len(self.refused),
            answered=answered,
            lost=len(self.acked - self.arrivals.keys()),
            duplicated=sum(1 for ts in self.arrivals.values() if len(ts) > 1),
            pause_s=pause,
            elapsed_s=time.monotonic() - started,
            http_sent=self.http_sent,
            http_ok=self.http_ok,
            http_errors=tuple(self.http_errors),
        )
