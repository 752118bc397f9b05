"""Cross-region spillover end to end, on three real Kafka clusters and MirrorMaker 2.

One worker and one mock backend per region; every region's route ``chat`` names its
own backend, then the other two regions (us: ``[us-local, {region: eu}, {region: ap}]``).
Clients send to us only. The drill, with its figures printed (sent, answered, lost,
duplicated, added latency, times; a loaded 2-core machine, so times are indicative):

1. baseline: us serves its own traffic (no ``served_region``);
2. us's backend dies: its traffic is served by eu (the first named region with
   fresh room), replies in the client's us reply topic, marked degraded; the same
   forwards and the same requests sent again (a retried forward) add no final reply;
3. eu's state goes stale (its worker stops): spillover goes to ap, nothing more to eu;
   ap goes stale too: nothing is forwarded, requests end in an explicit error;
4. us's backend returns: us serves locally again.

Runs with the ``regions`` fixture of tests/regions/conftest.py (shared with the other
region tests); leaves the clusters and MirrorMaker 2 running.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import urllib.request

import orjson
import pytest

from tests.integration.harness import (
    GatewayProcess,
    MockBackend,
    Worker,
    chat_request,
    free_port,
    probing_env,
    unique,
)
from tests.regions.conftest import REGIONS, bootstrap, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.regions, pytest.mark.timeout(900)]

STALE_AFTER_S = 6.0
PUBLISH_S = 1.0
TIMEOUT_MS = 30_000
N = 20
CRASH_EU_LATENCY_MS = 15_000
"""eu answers the crash drill slowly, so the killed us worker restarts while they wait."""


CLOUD_IN = ("ap",)
"""Every region has a local-tier backend; only these also have a cloud-tier one."""


def config(region: str, url: str, cloud_url: str | None = None) -> str:
    others = ", ".join(f"{{region: {o}}}" for o in REGIONS if o != region)
    cloud = (
        f"  - {{id: {region}-cloud, protocol: openai, base_url: '{cloud_url}', models: [echo],"
        " tier: cloud}\n"
        if cloud_url
        else ""
    )
    cloud_target = f"{{backend: {region}-cloud, model: echo}}, " if cloud_url else ""
    return (
        "backends:\n"
        f"  - {{id: {region}-local, protocol: openai, base_url: '{url}', models: [echo],"
        " max_concurrency: 16, hang_after_ms: 60000}\n"
        + cloud
        + "routes:\n"
        "  chat:\n"
        f"    targets: [{{backend: {region}-local, model: echo}}, {cloud_target}{others}]\n"
        "    policy: local_first\n"
        "default_route: chat\n"
    )


def gateway_chat(url: str, text: str) -> str:
    """One synchronous chat completion through a region's gateway (the OpenAI API)."""
    body = orjson.dumps(
        {"model": "chat", "messages": [{"role": "user", "content": text}]}
    )
    req = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": "Bearer x"},
    )
    with urllib.request.urlopen(req, timeout=90) as r:
        content: str = orjson.loads(r.read())["choices"][0]["message"]["content"]
        return content


def regions_seen(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=3) as r:
            return orjson.loads(r.read()).get("regions", {})
    except OSError:
        return {}


async def _send(region: str, topic: str, requests) -> float:
    from turnout.client import RequestPublisher, ensure_request_topic

    await ensure_request_topic(bootstrap(region), topic, 2)
    pub = RequestPublisher(bootstrap(region), topic)
    await pub.start()
    try:
        sent_at = time.time()
        for r in requests:
            await pub.send(r)
        return sent_at
    finally:
        await pub.stop()


async def _collect(region: str, topic: str, ids: set[str], timeout_s: float, settle_s: float):
    """Every reply on ``topic`` (from the beginning) until all ``ids`` are answered, then
    ``settle_s`` more, so that a duplicate final reply would be seen."""
    from turnout.client import ReplyReader

    reader = ReplyReader(bootstrap(region), topic)
    await reader.start(from_end=False)
    try:
        got = await reader.collect(ids, timeout_s)
        more = await reader.collect({"never-sent"}, settle_s)
        for rid, replies in more.items():
            got.setdefault(rid, []).extend(replies)
        return got
    finally:
        await reader.stop()


async def _records(region: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    """Every record of ``topic`` in ``region`` (key, value)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap(region), enable_auto_commit=False)
    await consumer.start()
    out = []
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:  # the consumer's metadata knows only what it was asked about
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                for rec in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                    out.append((rec.key, rec.value))
    finally:
        await consumer.stop()
    return out


async def _produce(region: str, topic: str, records) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(region), acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def tally(name: str, ids: list[str], got: dict, sent_at: float) -> dict:
    """Print and return sent / answered / lost / duplicated and latency of one phase."""
    finals = {rid: got.get(rid, []) for rid in ids}
    answered = [rid for rid, rs in finals.items() if rs]
    lost = len(ids) - len(answered)
    duplicated = sum(len(rs) - 1 for rs in finals.values() if len(rs) > 1)
    replies = [rs[0] for rs in finals.values() if rs]
    ok = [r for r in replies if r.status == "ok"]
    totals = [r.timings.total_ms for r in ok if r.timings]
    by_region: dict[str, int] = {}
    for r in replies:
        key = r.served_region or "home"
        by_region[key] = by_region.get(key, 0) + 1
    doc = {
        "sent": len(ids),
        "answered": len(answered),
        "ok": len(ok),
        "lost": lost,
        "duplicated": duplicated,
        "served_by": by_region,
        "p50_ms": round(statistics.median(totals)) if totals else None,
        "max_ms": round(max(totals)) if totals else None,
        "first_answer_s": round(min(totals, default=0) / 1000, 2),
        "last_answer_s": round(max(totals, default=0) / 1000, 2),
    }
    print(f"[spillover] {name}: {doc}")
    return doc


def test_spillover_serves_a_region_whose_backends_die_and_avoids_stale_regions(regions, tmp_path):
    """us's traffic goes to eu when us's backend dies, exactly one final reply per id; a
    region whose state is stale gets no spillover. Each region runs its own worker,
    gateway and local backend; only ap also has a cloud-tier backend."""
    started = []
    try:
        mocks, workers, topics, gateways = {}, {}, {}, {}
        for region in REGIONS:
            mock = MockBackend(tmp_path)
            started.append(mock)
            mocks[region] = mock
            cloud_url = None
            if region in CLOUD_IN:
                cloud = MockBackend(tmp_path)
                started.append(cloud)
                cloud_url = cloud.url
            web = free_port()
            app_id = unique(f"sp-{region}")
            topics[region] = unique(f"sp.{region}.requests")
            w = Worker(
                tmp_path,
                config(region, mock.url, cloud_url),
                app_id=app_id,
                request_topic=topics[region],
                partitions=2,
                name=f"worker-{region}",
                extra_env={
                    "KAFKA_BOOTSTRAP": bootstrap(region),
                    "TURNOUT_REGION": region,
                    "TURNOUT_REGION_ROUTER": f"127.0.0.1:{web}",
                    "TURNOUT_REGION_PUBLISH_INTERVAL_S": str(PUBLISH_S),
                    "TURNOUT_REGION_STALE_AFTER_S": str(STALE_AFTER_S),
                    "TURNOUT_WEB_PORT": str(web),
                    **probing_env(f"{app_id}.health", 1.0),
                    # The crash drill slows eu's backend to 15 s: not a hang, not a failure.
                    "TURNOUT_PROBE_TIMEOUT_S": "60",
                },
            )
            started.append(w)
            workers[region] = (w, web)
            gateways[region] = GatewayProcess(
                tmp_path,
                config_path=w.config_path,
                request_topic=topics[region],
                gateway_id=unique(f"gw-{region}"),
                extra_env={"KAFKA_BOOTSTRAP": bootstrap(region), "TURNOUT_REGION": region},
            )
            started.append(gateways[region])

        def fresh_everywhere():
            seen = {r: regions_seen(web) for r, (_, web) in workers.items()}
            ok = all(
                set(d) == set(REGIONS) and all(v["status"] == "fresh" for v in d.values())
                for d in seen.values()
            )
            return seen if ok else None

        t0 = time.monotonic()
        wait_for(fresh_everywhere, 180, "every region fresh in every worker")
        print(f"[spillover] workers up, all regions fresh after {time.monotonic() - t0:.1f}s")

        client = unique("spc")
        reply_topic = f"turnout.replies.{client}"
        us = topics["us"]

        last_sent = [0.0]

        def run(name: str, ids: list[str], timeout_ms: int = TIMEOUT_MS, settle_s: float = 3.0):
            reqs = [chat_request(rid, client, f"hi {rid}", model="chat", timeout_ms=timeout_ms)
                    for rid in ids]
            sent_at = last_sent[0] = asyncio.run(_send("us", us, reqs))
            got = asyncio.run(_collect("us", reply_topic, set(ids), timeout_ms / 1000 + 30,
                                       settle_s))
            return tally(name, ids, got, sent_at), got

        # 1. Baseline: us serves its own traffic.
        base_ids = [f"base-{i}" for i in range(N)]
        base, got = run("baseline (us serves)", base_ids)
        assert base["lost"] == base["duplicated"] == 0 and base["ok"] == N
        assert base["served_by"] == {"home": N}

        # 2. us's backend dies: eu (first named, fresh, with room) serves us's traffic.
        mocks["us"].stop()
        killed = time.time()
        spill_ids = [f"spill-{i}" for i in range(N)]
        spill, got = run("us backend dead", spill_ids)
        sent_spill = last_sent[0]
        assert spill["lost"] == 0 and spill["duplicated"] == 0 and spill["ok"] == N, spill
        assert spill["served_by"] == {"eu": N}, spill
        for rid in spill_ids:
            (reply,) = got[rid]
            assert reply.degraded and reply.served_region == "eu" and reply.backend == "eu-local"
            assert reply.body["choices"][0]["message"]["content"] == f"echo: hi {rid}"
        # The same through us's own gateway, as an application using an SDK would: us has
        # no backend left, so the answer can only have come from another region.
        answer = gateway_chat(gateways["us"].url, "hi through the gateway")
        assert answer == "echo: hi through the gateway", answer
        print(
            f"[spillover] added latency (p50, record to final reply): "
            f"{spill['p50_ms'] - base['p50_ms']} ms ({base['p50_ms']} -> {spill['p50_ms']} ms); "
            f"sent {sent_spill - killed:.1f}s after the backend died, first answer from "
            f"eu {spill['first_answer_s']}s and all {N} {spill['last_answer_s']}s after sending"
        )

        # A retried forward (same records again into us's turnout.forward.eu) and the same
        # requests sent again: no second final reply for any id.
        forwards = asyncio.run(_records("us", "turnout.forward.eu"))
        assert len(forwards) >= N
        asyncio.run(_produce("us", "turnout.forward.eu", forwards))
        reqs = [chat_request(rid, client, f"hi {rid}", model="chat", timeout_ms=TIMEOUT_MS)
                for rid in spill_ids[:5]]
        asyncio.run(_send("us", us, reqs))
        got = asyncio.run(_collect("us", reply_topic, set(spill_ids), 30, settle_s=15.0))
        again = tally("retried forwards + repeated requests", spill_ids, got, killed)
        assert again["duplicated"] == 0 and again["lost"] == 0, again
        eu_lines = workers["eu"][0].log_lines()
        skipped = [x for x in eu_lines if x.get("event") == "request_skipped"]
        print(f"[spillover] eu skipped {len(skipped)} already-answered forwarded requests "
              f"(of {len(forwards)} re-sent)")
        assert skipped, "eu served a retried forward again instead of skipping it"

        # us's worker is killed while its forwards wait for eu's (slow) answers: it reads
        # the requests again, forwards them again (or reuses an answer that came home
        # meanwhile); still one final reply per id, none lost.
        mocks["eu"].configure(latency_ms=CRASH_EU_LATENCY_MS)
        before = len(asyncio.run(_records("us", "turnout.forward.eu")))
        crash_ids = [f"crash-{i}" for i in range(N // 2)]
        reqs = [chat_request(rid, client, f"hi {rid}", model="chat", timeout_ms=120_000)
                for rid in crash_ids]
        sent_at = asyncio.run(_send("us", us, reqs))
        wait_for(
            lambda: len(asyncio.run(_records("us", "turnout.forward.eu"))) >= before + N // 2,
            60, "us forwarded the crash drill's requests",
        )
        workers["us"][0].kill()
        killed_at = time.time()
        workers["us"][0].start()
        got = asyncio.run(_collect("us", reply_topic, set(crash_ids), 150, settle_s=10.0))
        answered = [r[0] for r in got.values() if r and r[0].timings]
        recovered = max(sent_at + r.timings.total_ms / 1000 for r in answered) - killed_at
        mocks["eu"].configure(latency_ms=0)
        crash = tally("us worker killed mid-forward", crash_ids, got, sent_at)
        assert crash["lost"] == crash["duplicated"] == 0 and crash["ok"] == N // 2, crash
        # eu, or ap when eu's state shows its slow calls filling it.
        assert set(crash["served_by"]) <= {"eu", "ap"}, crash
        forwarded = {
            r: sum(
                1
                for _, v in asyncio.run(_records("us", f"turnout.forward.{r}"))
                if orjson.loads(v).get("id") in crash_ids
            )
            for r in ("eu", "ap")
        }
        served = {
            r: sum(
                1
                for _, v in asyncio.run(_records(r, "turnout.forward-replies.us"))
                if orjson.loads(v).get("id") in crash_ids
            )
            for r in ("eu", "ap")
        }
        print(f"[spillover] crash drill: forwards {forwarded} for {N // 2} requests, answers "
              f"{served}, final replies published {N // 2}; all answered {recovered:.1f}s "
              "after the kill (includes the worker's restart)")

        # 3. eu's state goes stale (its worker stops): spillover goes to ap, none to eu.
        workers["eu"][0].stop()
        stopped = time.monotonic()
        wait_for(lambda: regions_seen(workers["us"][1]).get("eu", {}).get("status") == "stale",
                 STALE_AFTER_S + 20, "eu stale in us")
        print(f"[spillover] eu stale in us {time.monotonic() - stopped:.1f}s after its worker "
              "stopped")
        to_eu = len(asyncio.run(_records("us", "turnout.forward.eu")))
        stale_ids = [f"stale-eu-{i}" for i in range(N // 2)]
        stale, got = run("eu stale", stale_ids)
        assert stale["lost"] == stale["duplicated"] == 0 and stale["ok"] == N // 2, stale
        assert stale["served_by"] == {"ap": N // 2}, stale
        assert len(asyncio.run(_records("us", "turnout.forward.eu"))) == to_eu, "forwarded to eu"

        # ap stale too: no region is trusted, nothing is forwarded; explicit errors, no loss.
        workers["ap"][0].stop()
        wait_for(lambda: regions_seen(workers["us"][1]).get("ap", {}).get("status") == "stale",
                 STALE_AFTER_S + 20, "ap stale in us")
        to_ap = len(asyncio.run(_records("us", "turnout.forward.ap")))
        none_ids = [f"stale-all-{i}" for i in range(3)]
        alone, got = run("eu and ap stale", none_ids, timeout_ms=4000)
        assert alone["lost"] == alone["duplicated"] == 0 and alone["ok"] == 0, alone
        assert all(got[r][0].error.code == "deadline_exceeded" for r in none_ids)
        assert all(got[r][0].served_region is None for r in none_ids)
        assert len(asyncio.run(_records("us", "turnout.forward.ap"))) == to_ap
        assert len(asyncio.run(_records("us", "turnout.forward.eu"))) == to_eu

        # 4. us's backend returns: us serves locally again.
        mocks["us"].start()
        back = time.monotonic()
        n = 0

        def local_again():
            nonlocal n
            n += 1
            rid = f"back-{n}"
            _, got = run(f"recovery probe {n}", [rid], timeout_ms=5000, settle_s=0.0)
            reply = got[rid][0]
            return reply if reply.status == "ok" and reply.served_region is None else None

        wait_for(local_again, 60, "us serving locally again", poll_s=1.0)
        print(f"[spillover] us served locally again {time.monotonic() - back:.1f}s after its "
              "backend came back")
    finally:
        for p in reversed(started):
            p.stop()
