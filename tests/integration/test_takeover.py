"""Quick takeover: kill -9 under steady load, and SIGTERM with requests in flight.

Every drill prints sent / answered / lost / duplicated.
"""

import asyncio
import itertools
import signal
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.types import Reply, decode_reply_message
from tests.integration.harness import (
    BOOTSTRAP,
    chat_request,
    config_for,
    events,
    log_time,
    unique,
)
from turnout.client import RequestPublisher, ensure_request_topic, ensure_topics


class Replies:
    """Reads reply topics from their end; keeps each reply with the time it arrived."""

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics
        self.arrivals: list[tuple[float, Reply]] = []
        self._consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        counts = await ensure_topics(BOOTSTRAP, self.topics, 1)
        await self._consumer.start()
        tps = [TopicPartition(t, p) for t in self.topics for p in range(counts[t])]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for records in batches.values():
                for rec in records:
                    message = decode_reply_message(rec.value)
                    if isinstance(message, Reply):
                        self.arrivals.append((now, message))

    def ids(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, reply in self.arrivals:
            out[reply.id] = out.get(reply.id, 0) + 1
        return out

    async def wait_all(self, want: set[str], timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if want <= self.ids().keys():
                return
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()


def tally(name: str, sent: set[str], replies: Replies) -> tuple[int, int]:
    got = replies.ids()
    lost = len(sent - got.keys())
    duplicated = sum(n - 1 for rid, n in got.items() if rid in sent and n > 1)
    print(
        f"{name}: sent {len(sent)} answered {len(sent & got.keys())} lost {lost} "
        f"duplicated {duplicated}"
    )
    return lost, duplicated


async def settled(workers, partitions: int, timeout_s: float) -> None:
    """Wait until the workers' latest assignments split ``partitions`` among all of them."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        latest = [events(w, "partitions_assigned")[-1:] for w in workers]
        shares = [e[0]["request_partitions"] for e in latest if e]
        if len(shares) == len(workers) and all(shares) and sum(shares) == partitions:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the group did not settle within {timeout_s} s")


async def steady_load(pub, clients, ids: set[str], rate: float, seconds: float) -> None:
    """``rate`` requests/s for ``seconds``, round-robin over ``clients``; new ids each call."""
    start = time.monotonic()
    run = unique("r")
    i = 0
    while time.monotonic() - start < seconds:
        client = clients[i % len(clients)]
        rid = f"{client}-{run}-{i}"
        ids.add(rid)
        await pub.send(chat_request(rid, client, rid, timeout_ms=120_000))
        i += 1
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))


async def test_a_worker_killed_under_load_and_restarted_serves_again_within_3_s(spawn, names):
    """kill -9, restart at once: static membership gives the partitions back without a wait."""
    backend = spawn.backend("--latency-ms", "20")
    clients = [unique("c") for _ in range(4)]
    topics = [f"turnout.replies.{c}" for c in clients]
    await ensure_request_topic(BOOTSTRAP, names.request_topic, 4)
    worker = spawn.worker(
        config_for(("b", "openai", backend.url)),
        app_id=names.app_id,
        request_topic=names.request_topic,
    )
    replies = Replies(topics)
    await replies.start()
    pub = RequestPublisher(BOOTSTRAP, names.request_topic)
    await pub.start()
    ids: set[str] = set()
    try:
        warm: set[str] = set()
        await steady_load(pub, clients, warm, rate=20, seconds=2)
        await replies.wait_all(warm, 60)  # the worker is up and serving
        replies.arrivals.clear()
        load = asyncio.create_task(steady_load(pub, clients, ids, rate=20, seconds=20))
        await asyncio.sleep(6)
        worker.kill()  # SIGKILL: no LeaveGroup, no final commit
        killed_at = time.monotonic()
        worker.start()  # what a supervisor does; same data dir, so the same instance id
        restarted_at = time.monotonic()
        await load
        await replies.wait_all(ids, 90)
    finally:
        await pub.stop()
        await replies.stop()
    lost, _ = tally("kill -9 and restart under 20 req/s", ids, replies)
    times = sorted(t for t, r in replies.arrivals if r.id in ids)
    gap, gap_at = max((b - a, a) for a, b in itertools.pairwise(times))
    # worker_started is logged when the new process's agent starts, before it has
    # joined the group: from there on the time is the takeover's, not Python's.
    started = events(worker, "worker_started")[-1]
    up_at = restarted_at + log_time(started) - (time.time() - (time.monotonic() - restarted_at))
    takeover = min(t for t in times if t > up_at) - up_at
    print(
        f"largest gap between replies {gap:.2f} s (from {gap_at - killed_at:+.2f} s after the "
        f"kill); the new process started in {up_at - restarted_at:.2f} s and served its first "
        f"reply {takeover:.2f} s later"
    )
    assert lost == 0
    # The takeover (rejoin, assignment, table recovery, first fetch, first reply) within
    # 3 s, plus 1 s of margin for this shared 2-core machine. The whole gap also holds
    # the start of a Python process (1.2 to 3.5 s measured here, competing with the
    # broker and other jobs): 3 s more. With TURNOUT_INSTANCE_ID=off the same drill
    # waits out the dead member's session: a gap of 10.0 s.
    assert takeover <= 3.0 + 1.0
    assert gap <= 3.0 + 1.0 + 3.0


async def test_sigterm_with_requests_in_flight_answers_each_exactly_once(spawn, names):
    """SIGTERM within the grace period: every in-flight request gets one reply, 0 lost."""
    backend = spawn.backend("--latency-ms", "1500")
    clients = [unique("c") for _ in range(8)]
    topics = [f"turnout.replies.{c}" for c in clients]
    await ensure_request_topic(BOOTSTRAP, names.request_topic, 4)
    config = config_for(("b", "openai", backend.url))
    first, second = (
        spawn.worker(config, app_id=names.app_id, request_topic=names.request_topic, name=n)
        for n in ("w1", "w2")
    )
    replies = Replies(topics)
    await replies.start()
    pub = RequestPublisher(BOOTSTRAP, names.request_topic)
    await pub.start()
    try:
        # The drill is SIGTERM, not a rebalance during load: start from a settled group
        # (a second worker joining as the load starts is issue 12's point 1).
        await settled([first, second], 4, 90)
        warm: set[str] = set()
        await steady_load(pub, clients, warm, rate=20, seconds=1)
        await replies.wait_all(warm, 90)
        ids: set[str] = set()
        await steady_load(pub, clients, ids, rate=100, seconds=1)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if backend.stats()["in_flight"] >= 50:
                break
            await asyncio.sleep(0.05)
        in_flight = backend.stats()["in_flight"]
        first.kill(signal.SIGTERM)  # waits for the process to exit
        await replies.wait_all(ids, 90)
        await asyncio.sleep(3)  # room for a second reply to show up
    finally:
        await pub.stop()
        await replies.stop()
    lost, duplicated = tally(f"SIGTERM with {in_flight} in flight", ids, replies)
    drained = [e for e in events(first, "request_completed") if e.get("request_id") in ids]
    print(f"the stopping worker answered {len(drained)}; second worker alive: {second.alive()}")
    assert in_flight >= 20
    assert lost == 0
    assert duplicated == 0


async def test_a_second_worker_on_the_same_data_dir_refuses_to_start(spawn, names, tmp_path):
    """One data dir, one worker: its RocksDB files and its static instance id are its own."""
    backend = spawn.backend()
    await ensure_request_topic(BOOTSTRAP, names.request_topic, 4)
    config = config_for(("b", "openai", backend.url))
    shared = {"TURNOUT_DATA_DIR": str(tmp_path / "shared-data")}
    first = spawn.worker(config, app_id=names.app_id, request_topic=names.request_topic,
                         name="w1", extra_env=shared)  # fmt: skip
    await settled([first], 4, 90)
    second = spawn.worker(config, app_id=names.app_id, request_topic=names.request_topic,
                          name="w2", extra_env=shared)  # fmt: skip
    assert second.proc is not None
    assert second.proc.wait(timeout=60) == 2
    assert first.alive()
