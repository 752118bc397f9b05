"""Bounded state and shared caps on the real broker: dedupe across restarts, eviction, caps."""

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.integration.harness import (
    BOOTSTRAP,
    chat_request,
    collect_replies,
    config_for,
    events,
    record_count,
    unique,
)
from turnout.client import ensure_topics


async def publish(topic: str, requests, *, replay: bool = False) -> dict[str, int]:
    """Send ``requests`` keyed by client (optionally as replays); return each id's partition."""
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    await producer.start()
    try:
        headers = [("turnout-replay", b"1")] if replay else None
        sent = await asyncio.gather(
            *(
                producer.send_and_wait(
                    topic, r.to_wire(), key=r.client_id.encode(), headers=headers
                )
                for r in requests
            )
        )
    finally:
        await producer.stop()
    return {r.id: meta.partition for r, meta in zip(requests, sent, strict=True)}


async def changelog(topic: str) -> list[tuple[bytes, bytes | None]]:
    """Every (key, value) record of a changelog topic, oldest first per partition."""
    partitions = (await ensure_topics(BOOTSTRAP, [topic], 1))[topic]
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[bytes, bytes | None]] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend((rec.key, rec.value) for rec in recs)
    finally:
        await consumer.stop()
    return out


def clients_per_partition(partitions: int, each: int) -> list[str]:
    """Client ids chosen so that each partition of the request topic gets ``each`` of them."""
    from aiokafka.partitioner import DefaultPartitioner

    part = DefaultPartitioner()
    chosen: dict[int, list[str]] = {p: [] for p in range(partitions)}
    while any(len(cs) < each for cs in chosen.values()):
        c = unique("c")
        p = part(c.encode(), list(range(partitions)), list(range(partitions)))
        if len(chosen[p]) < each:
            chosen[p].append(c)
    return [c for cs in chosen.values() for c in cs]


def drill(name: str, sent: int, got: dict[str, dict[str, list]], extra: str = "") -> None:
    replies = {rid: rs for t in got.values() for rid, rs in t.items()}
    answered = sum(1 for rs in replies.values() if rs)
    duplicated = sum(len(rs) - 1 for rs in replies.values() if len(rs) > 1)
    print(
        f"drill {name}: sent={sent} answered={answered} lost={sent - answered} "
        f"duplicated={duplicated}{extra}"
    )


async def test_dedupe_survives_a_worker_restart(spawn, names):
    """Answered ids sent again, and replayed, after a restart on RocksDB: none served twice."""
    backend = spawn.backend()
    client = unique("c")
    topic = f"turnout.replies.{client}"
    await ensure_topics(BOOTSTRAP, [names.request_topic], 4)
    await ensure_topics(BOOTSTRAP, [topic], 1)
    worker = spawn.worker(
        config_for(("b", "openai", backend.url)),
        app_id=names.app_id,
        request_topic=names.request_topic,
    )
    first = [chat_request(f"r{i}", client, f"q{i}", timeout_ms=120_000) for i in range(20)]
    await publish(names.request_topic, first)
    got = await collect_replies({topic: {r.id for r in first}}, 90)
    assert all(len(rs) == 1 for rs in got[topic].values()) and len(got[topic]) == 20
    for _ in range(200):  # each answer is recorded just after its reply
        if await record_count(f"{names.app_id}-done-changelog") >= 20:
            break
        await asyncio.sleep(0.1)

    worker.stop()  # SIGTERM: a fresh process next, on the same data directory
    assert list(worker.tmp.glob(f"data-{names.app_id}-worker/v1/tables/done-*.db"))
    worker.start()
    fresh = [chat_request(f"n{i}", client, f"n{i}", timeout_ms=120_000) for i in range(5)]
    await publish(names.request_topic, first)
    await publish(names.request_topic, first, replay=True)
    await publish(names.request_topic, fresh)
    everything = {r.id for r in [*first, *fresh]}
    await collect_replies({topic: {r.id for r in fresh}}, 120)
    for _ in range(300):  # the 40 repeats are skipped in partition order, not after fresh
        if len(events(worker, "request_skipped")) >= 40:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # time for any wrongly served repeat to show up
    got = await collect_replies({topic: everything}, 10)
    skipped = events(worker, "request_skipped")
    drill(
        "dedupe-restart",
        len(everything),
        got,
        f" repeats_sent={2 * len(first)} skipped={len(skipped)} "
        f"backend_calls={backend.stats()['requests']}",
    )
    assert all(len(got[topic][rid]) == 1 for rid in everything), "an id was answered twice"
    assert backend.stats()["requests"] == 25
    assert len(skipped) == 40
    assert sum(1 for e in skipped if e.get("replay")) == 20


async def test_ids_past_the_window_are_tombstoned_and_served_again(spawn, names):
    """With a 2 s window, answered ids are evicted and tombstoned; sent again, they are served."""
    backend = spawn.backend()
    client = unique("c")
    topic = f"turnout.replies.{client}"
    await ensure_topics(BOOTSTRAP, [names.request_topic], 4)
    await ensure_topics(BOOTSTRAP, [topic], 1)
    worker = spawn.worker(
        config_for(("b", "openai", backend.url)),
        app_id=names.app_id,
        request_topic=names.request_topic,
        extra_env={"TURNOUT_DEDUPE_RETENTION_S": "2", "TURNOUT_DEDUPE_SWEEP_INTERVAL_S": "0.2"},
    )
    reqs = [chat_request(f"r{i}", client, f"q{i}", timeout_ms=120_000) for i in range(10)]
    await publish(names.request_topic, reqs)
    await collect_replies({topic: {r.id for r in reqs}}, 90)

    done_topic = f"{names.app_id}-done-changelog"
    tombstones: set[bytes] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = await changelog(done_topic)
        tombstones = {k for k, v in records if v is None}
        if len(tombstones) >= 10:
            break
        await asyncio.sleep(0.5)
    assert tombstones == {f"{client}\x00r{i}".encode() for i in range(10)}

    await publish(names.request_topic, reqs)  # evicted: nothing remembers them any more
    got = await collect_replies({topic: {r.id for r in reqs}}, 90)
    for _ in range(100):
        if all(len(rs) == 2 for rs in got[topic].values()):
            break
        await asyncio.sleep(0.2)
        got = await collect_replies({topic: {r.id for r in reqs}}, 10)
    assert backend.stats()["requests"] == 20
    assert all(len(rs) == 2 for rs in got[topic].values())
    assert not events(worker, "done_sweep_failed")


async def test_a_cap_of_one_holds_across_three_workers(spawn, names):
    """Three workers, a backend capped at 1: never two calls at once, every request answered."""
    backend = spawn.backend("--latency-ms", "150")
    clients = clients_per_partition(4, 3)
    topics = {c: f"turnout.replies.{c}" for c in clients}
    await ensure_topics(BOOTSTRAP, [names.request_topic], 4)
    await ensure_topics(BOOTSTRAP, list(topics.values()), 1)
    config = config_for(("capped", "openai", backend.url), max_concurrency=1)
    workers = [
        spawn.worker(
            config,
            app_id=names.app_id,
            request_topic=names.request_topic,
            name=f"w{i}",
        )
        for i in range(3)
    ]

    def latest_counts() -> list[int]:
        counts = []
        for w in workers:
            lines = events(w, "partitions_assigned")
            counts.append(lines[-1]["request_partitions"] if lines else 0)
        return counts

    stable_since = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        counts = latest_counts()
        if sum(counts) == 4 and min(counts) >= 1:
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since > 3:
                break
        else:
            stable_since = None
        await asyncio.sleep(0.2)
    assert stable_since is not None, f"the group never settled: {latest_counts()}"

    reqs = [
        chat_request(f"{c}-{i}", c, f"q{i}", timeout_ms=8_000) for c in clients for i in range(3)
    ]
    partition = await publish(names.request_topic, reqs)
    want = {t: {r.id for r in reqs if r.client_id == c} for c, t in topics.items()}
    got = await collect_replies(want, 120)
    replies = {rid: rs for t in got.values() for rid, rs in t.items()}
    ok = {rid for rid, rs in replies.items() if rs and rs[0].status == "ok"}
    waited = {rid for rid, rs in replies.items() if rs and rs[0].status == "error"}
    peak = backend.stats()["max_in_flight_by_route"].get("/v1/chat/completions", 0)
    zero = [e for w in workers for e in events(w, "capacity_share_zero")]
    drill(
        "cap-1-three-workers",
        len(reqs),
        got,
        f" ok={len(ok)} waited_out={len(waited)} peak_calls_at_once={peak}",
    )
    assert peak == 1
    assert all(len(rs) == 1 for rs in replies.values()) and len(replies) == len(reqs)
    # The one unit belongs to partition 0: its owner serves; the other two workers wait.
    assert ok == {rid for rid, p in partition.items() if p == 0} and len(ok) == 9
    assert all(replies[rid][0].error.code == "deadline_exceeded" for rid in waited)
    assert zero, "the workers without a unit never said so"
