"""Backend health on the real broker: exclusion, no flapping, verified recovery, degradation."""

import asyncio
import time

from tests.integration.harness import (
    BOOTSTRAP,
    TURNOUT,
    chat_request,
    collect_replies,
    config_for,
    events,
    log_time,
    unique,
)
from turnout.client import RequestPublisher, ensure_topics

PROBE = {"TURNOUT_PROBE_INTERVAL_S": "1.0", "TURNOUT_PROBE_TIMEOUT_S": "1.0"}


async def setup(names, clients=1):
    ids = [unique("c") for _ in range(clients)]
    await ensure_topics(BOOTSTRAP, [names.request_topic], 2)
    await ensure_topics(BOOTSTRAP, [f"turnout.replies.{c}" for c in ids], 1)
    return ids


async def send_steady(topic, client, n, rate, prefix="r", **extra):
    """Publish n requests at ``rate`` per second; return their ids."""
    pub = RequestPublisher(BOOTSTRAP, topic)
    await pub.start()
    ids = []
    try:
        start = time.monotonic()
        for i in range(n):
            rid = f"{prefix}{i}"
            ids.append(rid)
            await pub.send(chat_request(rid, client, rid, **extra))
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
    finally:
        await pub.stop()
    return ids


async def replies_for(client, ids, timeout_s=90):
    """Replies to exactly these ids (the topic may hold others)."""
    topic = f"turnout.replies.{client}"
    got = (await collect_replies({topic: set(ids)}, timeout_s))[topic]
    return {rid: rs for rid, rs in got.items() if rid in set(ids)}


def state_changes(worker, backend):
    return [e for e in events(worker, "backend_state_changed") if e["backend"] == backend]


async def test_a_killed_backend_is_excluded_and_clients_see_no_errors(spawn, names):
    """Killing one of two backends mid-load excludes it within two probe intervals; no errors."""
    a, b = spawn.backend(), spawn.backend()
    (client,) = await setup(names)
    worker = spawn.worker(
        config_for(("a", "openai", a.url), ("b", "openai", b.url), max_attempts=3),
        app_id=names.app_id,
        request_topic=names.request_topic,
        extra_env=PROBE,
    )
    load = asyncio.create_task(send_steady(names.request_topic, client, 160, 20))
    await asyncio.sleep(3)
    a.stop()
    killed_at = time.time()
    ids = await load
    replies = await replies_for(client, ids)
    assert set(replies) == set(ids)
    errors = [rs[0].error for rs in replies.values() if rs[0].status != "ok"]
    assert errors == []
    down = [e for e in state_changes(worker, "a") if e["new"] == "UNHEALTHY"]
    assert down, "backend a was never excluded"
    assert log_time(down[0]) - killed_at < 2.0
    served_by_a_late = [
        rid for rid, rs in replies.items() if rs[0].backend == "a" and int(rid[1:]) > 120
    ]
    assert served_by_a_late == []
    proc = await asyncio.create_subprocess_exec(
        *TURNOUT, "backends", env=worker.env, stdout=asyncio.subprocess.PIPE
    )
    shown = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    rows = {line.split()[0]: line for line in shown.splitlines()[1:]}
    assert "UNHEALTHY" in rows["a"] and "FAILED" in rows["a"]
    # b kept serving, so its evidence is its traffic, not a probe.
    assert "HEALTHY" in rows["b"] and ("traffic" in rows["b"] or " ok " in rows["b"])


async def test_a_backend_failing_5_percent_stays_in_the_pool(spawn, names):
    """Random 5% failures never exclude a backend; retries hide them from clients."""
    a = spawn.backend("--error-rate", "0.05", "--seed", "3")
    b = spawn.backend()
    (client,) = await setup(names)
    worker = spawn.worker(
        config_for(("a", "openai", a.url), ("b", "openai", b.url), max_attempts=3),
        app_id=names.app_id,
        request_topic=names.request_topic,
        extra_env=PROBE,
    )
    ids = await send_steady(names.request_topic, client, 1200, 150)
    replies = await replies_for(client, ids)
    assert all(rs[0].status == "ok" for rs in replies.values())
    assert a.stats()["by_status"].get("500", 0) > 10  # failures really happened
    assert not [e for e in state_changes(worker, "a") if e["new"] == "UNHEALTHY"]


async def test_a_restarted_backend_rejoins_only_after_passing_probes(spawn, names):
    """An excluded backend goes through probation and needs N passing probes to be healthy."""
    a, b = spawn.backend(), spawn.backend()
    (client,) = await setup(names)
    worker = spawn.worker(
        config_for(("a", "openai", a.url), ("b", "openai", b.url), max_attempts=3),
        app_id=names.app_id,
        request_topic=names.request_topic,
        extra_env={**PROBE, "TURNOUT_PROBATION_PROBES": "3"},
    )
    load = asyncio.create_task(send_steady(names.request_topic, client, 300, 20))
    await asyncio.sleep(2)
    a.stop()
    await asyncio.sleep(3)
    a.start()
    restarted_at = time.time()
    ids = await load
    replies = await replies_for(client, ids)
    assert all(rs[0].status == "ok" for rs in replies.values())
    changes = [(e["old"], e["new"]) for e in state_changes(worker, "a")]
    assert ("HEALTHY", "UNHEALTHY") in changes or ("DEGRADED", "UNHEALTHY") in changes
    i = changes.index(("UNHEALTHY", "PROBATION"))
    assert changes[i + 1] == ("PROBATION", "HEALTHY")
    probation = [e for e in state_changes(worker, "a") if e["new"] == "PROBATION"][-1]
    healthy = [e for e in state_changes(worker, "a") if e["new"] == "HEALTHY"][-1]
    assert probation["signal"] == "probe" and healthy["signal"] == "probe"
    # Three more passing probes, one a second, after probation began.
    assert log_time(healthy) - log_time(probation) >= 2.5
    assert log_time(healthy) - restarted_at >= 2.5


async def test_all_backends_down_buffers_until_recovery_within_the_deadline(spawn, names):
    """With every backend down for 30 s, 60 s deadlines are all answered after recovery."""
    a = spawn.backend()
    short, long_ = await setup(names, clients=2)
    spawn.worker(
        config_for(("a", "openai", a.url)),
        app_id=names.app_id,
        request_topic=names.request_topic,
        extra_env=PROBE,
    )
    warm = await send_steady(names.request_topic, long_, 5, 10, prefix="warm")
    assert all(rs[0].status == "ok" for rs in (await replies_for(long_, warm)).values())
    a.stop()
    down_at = time.monotonic()
    long_ids = await send_steady(names.request_topic, long_, 60, 10, timeout_ms=60_000)
    short_ids = await send_steady(names.request_topic, short, 20, 10, timeout_ms=5_000)
    await asyncio.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
    a.start()
    long_replies = await replies_for(long_, long_ids, timeout_s=60)
    assert set(long_replies) == set(long_ids)
    assert all(rs[0].status == "ok" for rs in long_replies.values())
    short_replies = await replies_for(short, short_ids, timeout_s=10)
    assert set(short_replies) == set(short_ids)
    for rs in short_replies.values():
        err = rs[0].error
        assert err.code == "deadline_exceeded" and err.retryable and err.retry_after_ms > 0
        assert "a: unhealthy" in err.message


async def test_a_backend_answering_429_is_cooled_down(spawn, names):
    """A backend answering 429 is cooled down and traffic moves to the other one."""
    a = spawn.backend("--error-rate", "1.0", "--status", "429")
    b = spawn.backend()
    (client,) = await setup(names)
    worker = spawn.worker(
        config_for(("a", "openai", a.url), ("b", "openai", b.url), max_attempts=3),
        app_id=names.app_id,
        request_topic=names.request_topic,
        extra_env=PROBE,
    )
    ids = await send_steady(names.request_topic, client, 100, 50)
    replies = await replies_for(client, ids)
    assert all(rs[0].status == "ok" and rs[0].backend == "b" for rs in replies.values())
    assert events(worker, "backend_cooling_down")
    # Retry-After is 1 s: a gets about one request per second, b the rest.
    assert a.stats()["requests"] <= 10
