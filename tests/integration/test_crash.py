"""kill -9 of a worker loses nothing: every accepted request gets a final reply."""

import asyncio
import time

from tests.integration.harness import (
    BOOTSTRAP,
    chat_request,
    collect_replies,
    committed_offsets,
    config_for,
    request_ids_below,
    unique,
)
from turnout.client import RequestPublisher, ensure_topics


async def wait_for(predicate, timeout_s: float, what: str):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_kill_9_with_200_in_flight_loses_no_request(spawn, names):
    """A worker killed with 200 slow requests in flight, some finished out of order, loses none."""
    # Latencies spread over 0.2..3.8 s: requests finish out of order, so commits
    # happen while earlier offsets are still in flight when the worker dies.
    backend = spawn.backend("--latency-ms", "2000", "--latency-jitter-ms", "1800", "--seed", "7")
    clients = [unique("c") for _ in range(4)]
    topics = {f"turnout.replies.{c}": c for c in clients}
    await ensure_topics(BOOTSTRAP, [names.request_topic], 4)
    await ensure_topics(BOOTSTRAP, list(topics), 2)
    worker = spawn.worker(
        config_for(("slow", "openai", backend.url)),
        app_id=names.app_id,
        request_topic=names.request_topic,
    )

    ids = {t: {f"{c}-{i}" for i in range(50)} for t, c in topics.items()}
    pub = RequestPublisher(BOOTSTRAP, names.request_topic)
    await pub.start()
    try:
        await asyncio.gather(
            *(
                pub.send(chat_request(rid, c, rid, timeout_ms=120_000))
                for t, c in topics.items()
                for rid in ids[t]
            )
        )
    finally:
        await pub.stop()

    await wait_for(lambda: backend.stats()["in_flight"] >= 150, 60, "requests in flight")
    # Kill once the group has committed past some requests while many are in flight.
    for _ in range(300):
        if sum((await committed_offsets(names.app_id, names.request_topic)).values()) > 0:
            break
        await asyncio.sleep(0.05)
    in_flight_at_kill = backend.stats()["in_flight"]
    worker.kill()  # SIGKILL: no shutdown, no final commit
    assert in_flight_at_kill > 0

    # The invariant itself: every request below a committed offset was answered
    # before the kill, so no restart can skip a request that has no reply.
    committed = await committed_offsets(names.app_id, names.request_topic)
    assert sum(committed.values()) > 0, "nothing was committed before the kill"
    below = await request_ids_below(names.request_topic, committed)
    before = await collect_replies({t: ids[t] & below for t in ids}, timeout_s=5)
    answered_before = {rid for rs in before.values() for rid in rs}
    assert below <= answered_before, f"committed past {len(below - answered_before)} unanswered"

    backend.configure(latency_ms=50, latency_jitter_ms=0)
    worker.start()
    got = await collect_replies(ids, timeout_s=120)

    served = backend.stats()["requests"]
    redone = served - 200
    for topic, want in ids.items():
        replies = got[topic]
        missing = want - set(replies)
        assert not missing, f"{len(missing)} requests lost, e.g. {sorted(missing)[:3]}"
        for rid, rs in replies.items():
            assert {r.id for r in rs} == {rid}
            assert all(r.status == "ok" for r in rs), rs[0].error
    # Only requests not yet committed at the kill are served again.
    assert 0 < redone <= 200 - len(below)
