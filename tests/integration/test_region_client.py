"""The failover client on the real broker: a dead nearest region is skipped, the request
lands in the next, and its reply is read there; replies from before the client are not."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaProducer

from schemas.types import Reply
from tests.integration.harness import BOOTSTRAP, chat_request, free_port, unique
from turnout.client import ensure_request_topic, ensure_topics
from turnout.core.nearest import Endpoint
from turnout.region_client import RegionalClient


def test_a_dead_nearest_region_is_skipped_and_the_reply_is_read_in_the_next():
    """Sent to 'live' after 'dead' (nearer) refuses; a reply written there is collected,
    an older reply of the same id is not, and 'dead' is held down for its backoff."""

    async def run() -> None:
        request_topic = unique("rc.requests")
        client_id = unique("rc")
        reply_topic = f"turnout.replies.{client_id}"
        await ensure_request_topic(BOOTSTRAP, request_topic, 1)
        await ensure_topics(BOOTSTRAP, [reply_topic], 1)
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
        await producer.start()
        old = chat_request("r-1", client_id, "hi")
        stale = Reply(id=old.id, status="error", client_id=client_id)
        two_min_ago = int(time.time() * 1000) - 120_000
        await producer.send_and_wait(reply_topic, stale.to_wire(), timestamp_ms=two_min_ago)
        client = RegionalClient(
            [
                Endpoint("dead", f"127.0.0.1:{free_port()}", 1.0),
                Endpoint("live", BOOTSTRAP, 50.0),
            ],
            request_topic=request_topic,
            reply_topic=reply_topic,
            attempt_timeout_s=3.0,
        )
        try:
            t0 = time.monotonic()
            sent = await client.send(old)
            took = time.monotonic() - t0
            assert (sent.region, sent.attempts) == ("live", ["dead", "live"])
            assert took < 3.0, "a refused connection must fail over before the bound"
            assert "dead" in client.down and "dead" in repr(client)
            again = await client.send(chat_request("r-2", client_id, "hi"))
            assert again.attempts == ["live"], "dead is skipped until its retry time (1 s)"
            fresh = Reply(id=old.id, status="ok", client_id=client_id)
            await producer.send_and_wait(reply_topic, fresh.to_wire())
            assert await client.wait_for({old.id}, 30) == set()
            await asyncio.sleep(1)
            got = client.replies[old.id]
            assert [(r, rep.status) for r, rep in got] == [("live", "ok")]
        finally:
            await client.stop()
            await producer.stop()

    asyncio.run(run())


def test_synced_state_steers_the_client_away_from_a_region_without_capacity():
    """A fresh summary of eu with no serving backend (read from the mirrored topic) makes
    the client skip eu, though eu is nearer; a stale one would not."""
    from turnout.core.region_state import STATE_TOPIC, BackendSummary, RegionState
    from turnout.region_client import read_region_views

    async def run() -> None:
        await ensure_topics(BOOTSTRAP, [STATE_TOPIC, f"eu.{STATE_TOPIC}"], 1)
        now = int(time.time() * 1000)
        down = BackendSummary(id="b", tier="local", state="unhealthy", capacity=4)
        up = BackendSummary(id="b", tier="local", state="healthy", capacity=4)
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
        await producer.start()
        try:
            for topic, state in [
                (STATE_TOPIC, RegionState(region="zz", published_at_ms=now, backends=(up,))),
                (
                    f"eu.{STATE_TOPIC}",
                    RegionState(region="eu", published_at_ms=now, backends=(down,)),
                ),
            ]:
                await producer.send_and_wait(topic, state.to_wire(), key=state.key)
        finally:
            await producer.stop()
        views = await read_region_views(Endpoint("zz", BOOTSTRAP), stale_after_s=15, timeout_s=20)
        assert views["eu"].status == "fresh" and views["eu"].state.capacity == 0
        assert views["zz"].status == "fresh"
        request_topic = unique("rc.requests")
        client_id = unique("rc")
        await ensure_request_topic(BOOTSTRAP, request_topic, 1)
        await ensure_topics(BOOTSTRAP, [f"turnout.replies.{client_id}"], 1)
        client = RegionalClient(
            [Endpoint("eu", BOOTSTRAP, 1.0), Endpoint("zz", BOOTSTRAP, 50.0)],
            request_topic=request_topic,
            reply_topic=f"turnout.replies.{client_id}",
        )
        from turnout.core.nearest import unfit_regions

        client.unfit = unfit_regions(views)
        try:
            sent = await client.send(chat_request("r-1", client_id, "hi"))
            assert sent.attempts == ["zz"]
        finally:
            await client.stop()
        later = await read_region_views(
            Endpoint("zz", BOOTSTRAP), stale_after_s=0.001, timeout_s=20
        )
        assert unfit_regions(later) == set(), "stale state never rules a region out"

    asyncio.run(run())
