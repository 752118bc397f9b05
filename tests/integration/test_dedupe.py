"""A request answered ok is not served again when the same id comes back."""

import asyncio

from tests.integration.harness import (
    BOOTSTRAP,
    chat_request,
    collect_replies,
    config_for,
    record_count,
    unique,
)
from turnout.client import RequestPublisher, ensure_topics


async def test_a_repeated_request_id_is_not_served_twice(spawn, names):
    """Re-publishing answered requests costs no backend call and produces no second reply."""
    backend = spawn.backend()
    client = unique("c")
    topic = f"turnout.replies.{client}"
    await ensure_topics(BOOTSTRAP, [names.request_topic], 2)
    await ensure_topics(BOOTSTRAP, [topic], 1)
    worker = spawn.worker(config_for(("b", "openai", backend.url)), app_id=names.app_id,
                          request_topic=names.request_topic)
    first = [chat_request(f"r{i}", client, f"q{i}") for i in range(20)]
    pub = RequestPublisher(BOOTSTRAP, names.request_topic)
    await pub.start()
    try:
        for r in first:
            await pub.send(r)
        got = await collect_replies({topic: {r.id for r in first}}, 60)
        assert len(got[topic]) == 20
        # Each answer is recorded in the done table just after its reply; wait for all 20.
        for _ in range(100):
            if await record_count(f"{names.app_id}-done-changelog") >= 20:
                break
            await asyncio.sleep(0.1)
        fresh = [chat_request(f"n{i}", client, f"n{i}") for i in range(5)]
        for r in [*first, *fresh]:
            await pub.send(r)
        got = await collect_replies({topic: {r.id for r in [*first, *fresh]}}, 60)
    finally:
        await pub.stop()
    await asyncio.sleep(1.0)  # time for any wrongly served repeat to show up
    got = await collect_replies({topic: {r.id for r in [*first, *fresh]}}, 5)
    assert all(len(rs) == 1 for rs in got[topic].values()), "a repeat produced a second reply"
    assert backend.stats()["requests"] == 25
    skipped = [line for line in worker.log_lines() if line.get("event") == "request_skipped"]
    assert len(skipped) == 20
