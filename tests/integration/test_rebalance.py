"""Rebalances with in-flight slots full lose nothing, and re-serve only what moved.

Every drill prints sent / answered / lost / duplicated, then checks the invariant
against the broker itself: every request below a committed offset has a reply.
"""

import asyncio
import random
import signal
import time

from tests.integration.harness import (
    BOOTSTRAP,
    chat_request,
    collect_replies,
    committed_offsets,
    config_for,
    events,
    request_ids_below,
    unique,
)
from turnout.client import RequestPublisher, ensure_topics


async def send_paced(topic: str, requests, rate: float) -> None:
    """Publish ``requests`` at ``rate`` per second (the drill's producers)."""
    pub = RequestPublisher(BOOTSTRAP, topic)
    await pub.start()
    try:
        start = time.monotonic()
        for i, req in enumerate(requests):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await pub.send(req)
    finally:
        await pub.stop()


def make_requests(clients: list[str], n: int, timeout_ms: int = 300_000):
    reqs = [chat_request(f"{clients[i % len(clients)]}-{i}", clients[i % len(clients)], f"q{i}",
                         timeout_ms=timeout_ms) for i in range(n)]  # fmt: skip
    ids = {f"turnout.replies.{c}": set() for c in clients}
    for r in reqs:
        ids[f"turnout.replies.{r.client_id}"].add(r.id)
    return reqs, ids


async def outcome(name: str, ids, group: str, request_topic: str, timeout_s: float) -> dict:
    """Wait for replies, print the drill's counts and check commits against replies."""
    got = await collect_replies(ids, timeout_s=timeout_s)
    sent = sum(len(v) for v in ids.values())
    answered = {rid for t in got for rid in got[t]}
    lost = {rid for t in ids for rid in ids[t]} - answered
    duplicated = {rid for t in got for rid, rs in got[t].items() if len(rs) > 1}
    wrong = [rs for t in got for rs in got[t].values() if any(r.status != "ok" for r in rs)]
    committed = await committed_offsets(group, request_topic)
    below = await request_ids_below(request_topic, committed)
    print(
        f"\n{name}: sent {sent}, answered {len(answered)}, lost {len(lost)}, "
        f"duplicated {len(duplicated)}, committed {sum(committed.values())} offsets"
    )
    assert not lost, f"{len(lost)} accepted requests never answered, e.g. {sorted(lost)[:5]}"
    assert below <= answered, f"committed past {len(below - answered)} unanswered requests"
    assert not wrong, f"error replies: {[r.error for rs in wrong[:3] for r in rs]}"
    return {"sent": sent, "answered": len(answered), "duplicated": len(duplicated), "got": got}


async def test_a_worker_joining_and_one_leaving_with_slots_full_loses_nothing(spawn, names):
    """The reported loss: 4 slots, 200 ms calls, 900 requests at 30/s; join at 10 s, leave at 20."""
    backend = spawn.backend("--latency-ms", "200")
    clients = [unique("rb") for _ in range(10)]
    reqs, ids = make_requests(clients, 900)
    await ensure_topics(BOOTSTRAP, [names.request_topic], 8)
    await ensure_topics(BOOTSTRAP, list(ids), 1)
    cfg = config_for(("mock", "openai", backend.url))
    env = {"TURNOUT_MAX_IN_FLIGHT": "4"}
    kw = dict(app_id=names.app_id, request_topic=names.request_topic, partitions=8, extra_env=env)
    first = spawn.worker(cfg, name="first", **kw)

    sending = asyncio.create_task(send_paced(names.request_topic, reqs, rate=30))
    await asyncio.sleep(10)
    second = spawn.worker(cfg, name="second", **kw)
    await asyncio.sleep(10)
    first.kill(signal.SIGTERM)
    await sending
    await outcome("join-then-leave", ids, names.app_id, names.request_topic, timeout_s=240)
    assert second.alive()


async def test_a_rebalance_storm_with_slots_full_loses_nothing(spawn, names):
    """Workers join, leave (SIGTERM) and die (SIGKILL) every few seconds under load: 0 lost."""
    backend = spawn.backend("--latency-ms", "150", "--latency-jitter-ms", "100", "--seed", "3")
    clients = [unique("st") for _ in range(10)]
    reqs, ids = make_requests(clients, 900)
    await ensure_topics(BOOTSTRAP, [names.request_topic], 8)
    await ensure_topics(BOOTSTRAP, list(ids), 1)
    cfg = config_for(("mock", "openai", backend.url))
    env = {"TURNOUT_MAX_IN_FLIGHT": "3", "TURNOUT_SESSION_TIMEOUT_S": "6"}
    kw = dict(app_id=names.app_id, request_topic=names.request_topic, partitions=8, extra_env=env)
    rng = random.Random(12)
    alive = [spawn.worker(cfg, name="w0", **kw)]
    sending = asyncio.create_task(send_paced(names.request_topic, reqs, rate=30))
    changes = []
    for step in range(8):
        await asyncio.sleep(3.5)
        if len(alive) < 2 or (len(alive) < 3 and rng.random() < 0.5):
            alive.append(spawn.worker(cfg, name=f"w{step + 1}", **kw))
            changes.append("join")
        else:
            victim = alive.pop(rng.randrange(len(alive)))
            how = rng.choice([signal.SIGTERM, signal.SIGKILL])
            victim.kill(how)
            changes.append(how.name)
    await sending
    print(f"\nstorm: {changes}, {len(alive)} worker(s) left")
    await outcome("rebalance-storm", ids, names.app_id, names.request_topic, timeout_s=300)


async def test_a_worker_joining_re_serves_only_the_partitions_that_moved(spawn, names):
    """One worker joins a group of one with 1,000 requests in flight: kept partitions go on."""
    backend = spawn.backend("--latency-ms", "25000")
    clients = [unique("mv") for _ in range(16)]
    reqs, ids = make_requests(clients, 1000)
    await ensure_topics(BOOTSTRAP, [names.request_topic], 8)
    await ensure_topics(BOOTSTRAP, list(ids), 1)
    # Every call takes 25 s: not a hang (turnout.health.hang), so say so.
    cfg = config_for(("mock", "openai", backend.url)).replace(
        "max_concurrency: 4096}", "max_concurrency: 4096, hang_after_ms: 120000}"
    )
    assert "hang_after_ms" in cfg
    kw = dict(app_id=names.app_id, request_topic=names.request_topic, partitions=8,
              extra_env={"TURNOUT_MAX_IN_FLIGHT": "2000"})  # fmt: skip
    first = spawn.worker(cfg, name="first", **kw)
    await send_paced(names.request_topic, reqs, rate=2000)
    end = time.monotonic() + 60
    while backend.stats()["in_flight"] < 1000 and time.monotonic() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    second = spawn.worker(cfg, name="second", **kw)
    result = await outcome("join-with-1000-in-flight", ids, names.app_id, names.request_topic,
                           timeout_s=180)  # fmt: skip
    repeats = backend.stats()["requests"] - 1000
    last = events(first, "partitions_assigned")[-1]
    at_join, cancelled = last["in_flight"], last["moved_requests_cancelled"]
    print(
        f"join-with-1000-in-flight: {at_join} in flight at the rebalance, {cancelled} cancelled "
        f"on partitions that moved, {at_join - cancelled} kept running, {repeats} backend "
        f"calls repeated, {result['duplicated']} ids answered twice"
    )
    assert second.alive()
    assert at_join >= 900
    # Before, every in-flight request of the group was cancelled and served again.
    # Now only those of the partitions handed to the newcomer are: about half.
    assert 0 < cancelled < at_join * 0.75
    assert repeats <= cancelled + 20  # plus a few health probes, also chat calls
