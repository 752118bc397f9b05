"""Worker metrics: what each recording call counts, and the web app that serves them."""

from __future__ import annotations

import aiohttp
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from turnout.worker.metrics import History, Metrics, Price, tokens_of
from turnout.worker.web import bound_port, build_app, merge, start_web


class Clock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = m.render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float:
    return samples(m).get((name, tuple(sorted(labels.items()))), 0.0)


def metrics(**kw) -> Metrics:
    kw.setdefault("backends", ["a", "b"])
    kw.setdefault("clock", Clock())
    return Metrics(**kw)


def completed(m: Metrics, **kw) -> None:
    args = {
        "route": "default", "backend": "a", "status": "ok", "code": None,
        "queue_ms": 10.0, "backend_ms": 200.0, "total_ms": 215.0, "usage": None,
    }  # fmt: skip
    args.update(kw)
    m.request_completed(**args)


def test_requests_are_counted_by_route_backend_status_and_code():
    m = metrics()
    completed(m)
    completed(m)
    completed(m, status="error", code="backend_unavailable")
    ok = value(m, "turnout_requests_total", route="default", backend="a", status="ok", code="")
    assert ok == 2
    err = value(
        m, "turnout_requests_total", route="default", backend="a", status="error",
        code="backend_unavailable",
    )  # fmt: skip
    assert err == 1


def test_a_request_that_reached_no_backend_is_labelled_none():
    m = metrics()
    completed(m, route=None, backend=None, status="error", code="unknown_model", backend_ms=0)
    labels = {"route": "none", "backend": "none", "status": "error", "code": "unknown_model"}
    assert value(m, "turnout_requests_total", **labels) == 1
    assert value(m, "turnout_backend_seconds_count", backend="none") == 0


def test_latencies_are_histograms_in_seconds():
    """The API takes milliseconds; the exposition is in seconds, as Prometheus expects."""
    m = metrics()
    completed(m, queue_ms=10, backend_ms=200, total_ms=215)
    assert value(m, "turnout_queue_seconds_sum", route="default") == 0.01
    assert value(m, "turnout_backend_seconds_sum", backend="a") == 0.2
    assert value(m, "turnout_total_seconds_count", route="default") == 1
    assert value(m, "turnout_backend_seconds_bucket", backend="a", le="0.25") == 1
    assert value(m, "turnout_backend_seconds_bucket", backend="a", le="0.1") == 0


def test_tokens_and_cost_come_from_usage_and_prices():
    """Prompt and completion tokens are counted; cost uses the backend's price per million."""
    m = metrics(prices={"a": Price(input_per_mtok=1.0, output_per_mtok=4.0)})
    completed(m, usage={"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500})
    assert value(m, "turnout_tokens_total", backend="a", type="prompt") == 1000
    assert value(m, "turnout_tokens_total", backend="a", type="completion") == 500
    assert abs(value(m, "turnout_cost_total", backend="a") - 0.003) < 1e-12
    a = m.snapshot()["backends"]["a"]
    assert (a["tokens"], a["cost"]) == (1500, 0.003)


def test_odd_usage_is_ignored_not_fatal():
    """Missing, negative or non-integer counts count as zero."""
    assert tokens_of(None) == (0, 0)
    assert tokens_of({"prompt_tokens": "9", "completion_tokens": -3}) == (0, 0)
    assert tokens_of({"prompt_tokens": True}) == (0, 0)


def test_the_other_events_are_counted():
    m = metrics()
    m.dead_lettered("invalid_request")
    m.skipped()
    m.skipped()
    m.rate_limited("tokens_per_min")
    running = [7]
    m.count_in_flight(lambda: running[0])
    assert value(m, "turnout_in_flight") == 7
    running[0] = 3  # read at scrape time, not when a request starts or ends
    assert value(m, "turnout_dead_letters_total", code="invalid_request") == 1
    assert value(m, "turnout_skipped_total") == 2
    assert value(m, "turnout_rate_limited_total", limit="tokens_per_min") == 1
    assert value(m, "turnout_in_flight") == 3


def test_backend_state_marks_exactly_one_state():
    """The current state is 1 and every other known state 0; enums and strings both work."""
    from turnout.health import State

    m = metrics()
    m.backend_state("a", "degraded")
    m.backend_state("a", State.UNHEALTHY)
    assert value(m, "turnout_backend_state", backend="a", state="unhealthy") == 1
    assert value(m, "turnout_backend_state", backend="a", state="degraded") == 0
    assert m.snapshot()["backends"]["a"]["state"] == "unhealthy"


def test_consumer_lag_is_a_gauge_per_partition_and_forgets_lost_ones():
    m = metrics(request_topic="t")
    m.consumer_lag({0: 5, 1: 2})
    m.consumer_lag({0: 1})
    assert value(m, "turnout_consumer_lag", topic="t", partition="0") == 1
    assert ("turnout_consumer_lag", (("partition", "1"), ("topic", "t"))) not in samples(m)
    assert m.snapshot()["lag_total"] == 1


def test_the_registry_is_not_the_global_one():
    """Two workers' metrics in one process (tests) do not collide."""
    m1, m2 = metrics(), metrics()
    completed(m1)
    assert m1.registry is not REGISTRY
    assert value(m2, "turnout_requests_total", route="default", backend="a", status="ok",
                 code="") == 0  # fmt: skip


def test_history_keeps_the_last_buckets_in_a_ring():
    """Counts land in 10 s buckets; older than the ring's span are dropped; gaps are zeros."""
    h = History(bucket_s=10, buckets=3)
    h.add(100, ok=1)
    h.add(105, ok=1, error=1)
    h.add(125, ok=4)
    h.add(135, ok=2)
    series = h.series(139, ["ok", "error"])
    assert series["start_s"] == [110, 120, 130]
    assert series["ok"] == [0, 4, 2] and series["error"] == [0, 0, 0]
    assert h.total(139, "ok", 20) == 6


def test_snapshot_reports_every_configured_backend_and_the_last_minute():
    clock = Clock(1000.0)
    m = metrics(clock=clock)
    completed(m, backend="a")
    completed(m, backend="a", status="error", code="backend_timeout", backend_ms=100)
    clock.t += 120
    completed(m, backend="a")
    snap = m.snapshot()
    assert set(snap["backends"]) == {"a", "b"}
    a = snap["backends"]["a"]
    assert (a["requests"], a["errors"], a["last_minute"]) == (3, 1, {"ok": 1, "error": 0})
    assert snap["totals"]["ok"] == 2 and snap["totals"]["error"] == 1
    assert repr(m) == "<Metrics ok=2 error=1 skipped=0 in_flight=0>"


def test_status_merges_nested_objects():
    """The runtime's status adds fields to a backend's entry without replacing it."""
    got = merge({"backends": {"a": {"state": "x", "n": 1}}, "k": 1}, {"backends": {"a": {"n": 2}}})
    assert got == {"backends": {"a": {"state": "x", "n": 2}}, "k": 1}


async def test_the_web_app_serves_metrics_status_and_the_page():
    """Counters fed to Metrics show up on /metrics and /status.json of a real localhost server."""
    m = metrics()
    for _ in range(3):
        completed(m)
    completed(m, backend="b", status="error", code="backend_status")
    m.skipped()
    runner = await start_web(build_app(m, lambda: {"worker": {"id": "w1"}}), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{bound_port(runner)}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
                text = await r.text()
            async with http.get(f"{base}/status.json") as r:
                status = await r.json()
            async with http.get(f"{base}/") as r:
                page = await r.text()
    finally:
        await runner.cleanup()
    parsed = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    key = (("backend", "a"), ("code", ""), ("route", "default"), ("status", "ok"))
    assert parsed[("turnout_requests_total", key)] == 3
    assert parsed[("turnout_skipped_total", ())] == 1
    assert status["worker"] == {"id": "w1"}
    assert status["totals"] == {
        "ok": 3, "error": 1, "skipped": 1, "dead_lettered": 0, "rate_limited": 0
    }  # fmt: skip
    assert "status.json" in page and "setInterval(poll, 2000)" in page


async def test_a_broken_status_source_does_not_break_the_page():
    def broken() -> dict:
        raise RuntimeError("boom")

    runner = await start_web(build_app(metrics(), broken), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{bound_port(runner)}/status.json"
            async with http.get(url) as r:
                doc = await r.json()
    finally:
        await runner.cleanup()
    assert "status_error" in doc and "backends" in doc
