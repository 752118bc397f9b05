"""Routing policies, rules and rate limits on the real broker with real backends."""

import asyncio
import collections
import time

from tests.integration.harness import BOOTSTRAP, chat_request, collect_replies, unique
from turnout.client import RequestPublisher, ensure_topics


def backend_line(bid, url, tier="local", conc=4096, weight=1.0):
    return (
        f"  - {{id: {bid}, protocol: openai, base_url: '{url}', models: [echo], "
        f"tier: {tier}, max_concurrency: {conc}, weight: {weight}}}"
    )


async def prepare(names, n_clients=1):
    clients = [unique("c") for _ in range(n_clients)]
    await ensure_topics(BOOTSTRAP, [names.request_topic], 4)
    await ensure_topics(BOOTSTRAP, [f"turnout.replies.{c}" for c in clients], 1)
    return clients


async def publish(topic, requests, rate=None):
    pub = RequestPublisher(BOOTSTRAP, topic)
    await pub.start()
    try:
        if rate is None:
            await asyncio.gather(*(pub.send(r) for r in requests))
        else:
            start = time.monotonic()
            for i, r in enumerate(requests):
                await pub.send(r)
                await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
    finally:
        await pub.stop()


async def replies(client, ids, timeout_s=90):
    topic = f"turnout.replies.{client}"
    got = (await collect_replies({topic: set(ids)}, timeout_s))[topic]
    assert set(ids) <= set(got), f"{len(set(ids) - set(got))} requests unanswered"
    return {rid: got[rid][0] for rid in ids}


RATE_CONFIG = """backends:
{b}
routes:
  default: {{targets: [{{backend: a, model: echo}}]}}
clients:
  {client}: {{requests_per_s: 50, burst: 5, max_wait_ms: 0}}
"""


async def rate_limit_run(spawn, names, workers):
    a = spawn.backend()
    (client,) = await prepare(names)
    config = RATE_CONFIG.format(b=backend_line("a", a.url), client=client)
    for i in range(workers):
        spawn.worker(config, app_id=names.app_id, request_topic=names.request_topic, name=f"w{i}")
    reqs = [chat_request(f"r{i}", client, "x") for i in range(1000)]
    await publish(names.request_topic, reqs, rate=100)
    got = await replies(client, [r.id for r in reqs])
    ok = [r for r in got.values() if r.status == "ok"]
    limited = [r for r in got.values() if r.status == "error"]
    assert {r.error.code for r in limited} == {"rate_limited"}
    assert all(r.error.retryable and 0 < r.error.retry_after_ms <= 1000 for r in limited)
    assert 475 <= len(ok) <= 525, len(ok)
    return len(ok)


async def test_a_client_over_its_rate_gets_honest_rate_limited_replies(spawn, names):
    """50 req/s allowed, 100 req/s sent for 10 s: about 500 served, the rest rate_limited."""
    await rate_limit_run(spawn, names, workers=1)


async def test_the_rate_limit_is_exact_with_two_workers(spawn, names):
    """Two workers sharing the partitions enforce the same limit as one."""
    await rate_limit_run(spawn, names, workers=2)


async def test_rate_limit_state_survives_a_worker_restart(spawn, names):
    """A client's spent bucket is still spent after the worker restarts."""
    a = spawn.backend()
    (client,) = await prepare(names)
    config = f"""backends:
{backend_line("a", a.url)}
routes:
  default: {{targets: [{{backend: a, model: echo}}]}}
clients:
  {client}: {{requests_per_s: 0.05, burst: 5, max_wait_ms: 0}}
"""
    worker = spawn.worker(config, app_id=names.app_id, request_topic=names.request_topic)
    first = [chat_request(f"a{i}", client, "x") for i in range(5)]
    await publish(names.request_topic, first)
    assert all(r.status == "ok" for r in (await replies(client, [r.id for r in first])).values())
    await asyncio.sleep(1.5)  # commit and changelog flush
    worker.kill(__import__("signal").SIGTERM)
    worker.start()
    second = [chat_request(f"b{i}", client, "x") for i in range(3)]
    await publish(names.request_topic, second)
    got = await replies(client, [r.id for r in second])
    assert [r.error.code for r in got.values()] == ["rate_limited"] * 3


async def test_weighted_route_splits_three_to_one(spawn, names):
    """A 3:1 weighted route splits 4,000 requests within 5% of 3:1."""
    a, b = spawn.backend(), spawn.backend()
    (client,) = await prepare(names)
    config = f"""backends:
{backend_line("a", a.url, weight=3)}
{backend_line("b", b.url, weight=1)}
routes:
  default:
    policy: weighted
    targets: [{{backend: a, model: echo}}, {{backend: b, model: echo}}]
"""
    spawn.worker(config, app_id=names.app_id, request_topic=names.request_topic)
    reqs = [chat_request(f"r{i}", client, "x") for i in range(4000)]
    await publish(names.request_topic, reqs)
    got = await replies(client, [r.id for r in reqs], timeout_s=120)
    counts = collections.Counter(r.backend for r in got.values())
    share = counts["a"] / 4000
    assert abs(share - 0.75) <= 0.75 * 0.05, counts
    assert all(r.policy == "weighted" for r in got.values())


async def test_least_connections_favours_the_fast_backend(spawn, names):
    """least_connections sends clearly more traffic to a fast backend than to a slow one."""
    fast = spawn.backend("--latency-ms", "10")
    slow = spawn.backend("--latency-ms", "400")
    (client,) = await prepare(names)
    config = f"""backends:
{backend_line("fast", fast.url)}
{backend_line("slow", slow.url)}
routes:
  default:
    policy: least_connections
    targets: [{{backend: slow, model: echo}}, {{backend: fast, model: echo}}]
"""
    spawn.worker(config, app_id=names.app_id, request_topic=names.request_topic)
    reqs = [chat_request(f"r{i}", client, "x") for i in range(400)]
    await publish(names.request_topic, reqs, rate=100)
    got = await replies(client, [r.id for r in reqs])
    counts = collections.Counter(r.backend for r in got.values())
    assert counts["fast"] > 3 * counts["slow"], counts


async def test_local_first_spills_to_cloud_only_when_local_is_full(spawn, names):
    """local_first stays local until the local backend is full, spills, then comes back."""
    local = spawn.backend("--latency-ms", "1500")
    cloud = spawn.backend()
    (client,) = await prepare(names)
    config = f"""backends:
{backend_line("local", local.url, conc=4)}
{backend_line("cloud", cloud.url, tier="cloud")}
routes:
  default:
    policy: local_first
    targets: [{{backend: local, model: echo}}, {{backend: cloud, model: echo}}]
"""
    spawn.worker(config, app_id=names.app_id, request_topic=names.request_topic)
    calm = [chat_request(f"calm{i}", client, "x") for i in range(3)]
    await publish(names.request_topic, calm)
    first = await replies(client, [r.id for r in calm])
    assert {r.backend for r in first.values()} == {"local"}
    burst = [chat_request(f"burst{i}", client, "x") for i in range(20)]
    await publish(names.request_topic, burst)
    got = await replies(client, [r.id for r in burst])
    counts = collections.Counter(r.backend for r in got.values())
    assert counts["local"] >= 4 and counts["cloud"] >= 10, counts
    assert any(
        "spill" in r.reason or "full" in r.reason for r in got.values() if r.backend == "cloud"
    )
    after = [chat_request(f"after{i}", client, "x") for i in range(3)]
    await publish(names.request_topic, after)
    back = await replies(client, [r.id for r in after])
    assert {r.backend for r in back.values()} == {"local"}


async def test_a_pii_rule_never_sends_tagged_requests_to_the_cloud(spawn, names):
    """Requests tagged pii go only to local backends; untagged ones use both tiers."""
    local, cloud = spawn.backend(), spawn.backend()
    (client,) = await prepare(names)
    config = f"""backends:
{backend_line("local", local.url)}
{backend_line("cloud", cloud.url, tier="cloud")}
routes:
  default:
    targets: [{{backend: local, model: echo}}, {{backend: cloud, model: echo}}]
rules:
  - name: pii-stays-local
    match: {{tags: {{pii: "true"}}}}
    route: default
    tiers: [local]
"""
    spawn.worker(config, app_id=names.app_id, request_topic=names.request_topic)
    reqs = [
        chat_request(f"r{i}", client, "x", metadata={"pii": "true"} if i % 3 == 0 else {})
        for i in range(200)
    ]
    await publish(names.request_topic, reqs)
    got = await replies(client, [r.id for r in reqs])
    tagged = [got[r.id].backend for r in reqs if r.metadata.get("pii") == "true"]
    untagged = [got[r.id].backend for r in reqs if not r.metadata]
    assert set(tagged) == {"local"}
    assert set(untagged) == {"local", "cloud"}


async def test_a_backend_cap_holds_across_two_workers(spawn, names):
    """max_concurrency 8 across two workers: the backend never sees more than 8 calls at once."""
    slow = spawn.backend("--latency-ms", "300")
    clients = await prepare(names, n_clients=8)
    config = f"""backends:
{backend_line("slow", slow.url, conc=8)}
routes:
  default: {{targets: [{{backend: slow, model: echo}}]}}
"""
    for i in range(2):
        # No probe during the measurement: the cap is about routed calls.
        spawn.worker(config, app_id=names.app_id, request_topic=names.request_topic,
                     name=f"w{i}", extra_env={"TURNOUT_PROBE_INTERVAL_S": "600"})
    await asyncio.sleep(8)  # both workers in the group, partitions shared
    reqs = [chat_request(f"r{i}-{c}", c, "x") for i in range(20) for c in clients]
    await publish(names.request_topic, reqs)
    for c in clients:
        got = await replies(c, [r.id for r in reqs if r.client_id == c])
        assert all(r.status == "ok" for r in got.values())
    peak = slow.stats()["max_in_flight"]
    print(f"backend cap 8 across two workers: peak {peak} calls at once")
    assert 4 <= peak <= 8
