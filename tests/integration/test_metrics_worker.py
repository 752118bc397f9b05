"""A real worker's /metrics (at TURNOUT_WEB_PORT) counts exactly the traffic it served."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import (
    BOOTSTRAP,
    chat_request,
    collect_replies,
    config_for,
    free_port,
    probing_env,
    record_count,
    unique,
)
from turnout.client import RequestPublisher, ensure_topics


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=3) as r:
        return r.read()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = get(url).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    return sum(
        v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)
    )


async def test_worker_metrics_match_the_traffic_sent(spawn, names):
    """20 served, 3 unknown-model (replied and dead-lettered), 5 repeats skipped as done."""
    backend = spawn.backend()
    clients = [unique("c"), unique("c")]
    topics = {c: f"turnout.replies.{c}" for c in clients}
    dlq = unique("it.dlq")
    port = free_port()
    await ensure_topics(BOOTSTRAP, [names.request_topic], 2)
    await ensure_topics(BOOTSTRAP, [*topics.values(), dlq], 1)
    spawn.worker(
        config_for(("b", "openai", backend.url)),
        app_id=names.app_id,
        request_topic=names.request_topic,
        partitions=2,
        extra_env={
            "TURNOUT_WEB_PORT": str(port),
            "TURNOUT_DEAD_LETTER_TOPIC": dlq,
            **probing_env(unique("it.health"), 30),
        },
    )
    good = [chat_request(f"g{i}", clients[i % 2], f"q{i}") for i in range(20)]
    wrong = [chat_request(f"w{i}", clients[0], "x", model="gpt-17") for i in range(3)]
    pub = RequestPublisher(BOOTSTRAP, names.request_topic)
    await pub.start()
    try:
        for r in [*good, *wrong]:
            await pub.send(r)
        expect = {topics[c]: {r.id for r in [*good, *wrong] if r.client_id == c} for c in clients}
        got = await collect_replies(expect, 60)
        assert sum(len(v) for v in got.values()) == 23
        for _ in range(100):  # outcomes recorded before the repeats come
            if await record_count(f"{names.app_id}-done-changelog") >= 20:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        for r in good[:5]:
            await pub.send(r)
    finally:
        await pub.stop()

    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            m = scrape(f"{url}/metrics")
            if total(m, "turnout_skipped_total") >= 5:
                break
        except OSError:
            m = {}
        assert time.monotonic() < deadline, f"metrics never showed the traffic: {m}"
        await asyncio.sleep(0.5)

    assert total(m, "turnout_requests_total", status="ok", backend="b", route="default") == 20
    assert total(m, "turnout_requests_total", status="error", code="unknown_model") == 3
    assert total(m, "turnout_requests_total") == 23
    assert total(m, "turnout_dead_letters_total", code="unknown_model") == 3
    assert total(m, "turnout_skipped_total") == 5
    assert total(m, "turnout_backend_seconds_count", backend="b") == 20
    assert total(m, "turnout_total_seconds_count") == 23
    assert total(m, "turnout_tokens_total", backend="b", type="prompt") > 0
    assert total(m, "turnout_tokens_total", backend="b", type="completion") > 0
    assert total(m, "turnout_in_flight") == 0
    assert total(m, "turnout_backend_state", backend="b") == 1
    assert ("turnout_consumer_lag", (("partition", "0"), ("topic", names.request_topic))) in m

    status = orjson.loads(get(f"{url}/status.json"))
    assert set(status["backends"]) == {"b"}
    assert status["totals"]["ok"] == 20 and status["totals"]["skipped"] == 5
    assert b"status.json" in get(f"{url}/")
