# ruff: noqa: F811  (pytest fixtures imported from test_gateway_http)
"""The gateway's /metrics: calls by endpoint template and status, latency, in flight,
status-store size, webhook outcomes and tokens (cached ones included)."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_gateway_http import (  # noqa: F401 (fixtures)
    CHAT,
    Receiver,
    Running,
    answer,
    gw,
    receiver,
    receiver_prefix,
)
from turnout.gateway.metrics import GatewayMetrics


async def samples(gw: Running) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = await gw.get("/metrics", headers={})
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(await r.text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_calls_are_counted_by_endpoint_template_and_status(gw: Running) -> None:
    """A chat, an unknown path and two status polls land under bounded labels."""
    assert (await gw.post("/v1/chat/completions", CHAT)).status == 200
    assert (await gw.get("/v1/no-such-thing")).status == 404
    await gw.get("/v1/requests/req-a")
    await gw.get("/v1/requests/req-b")
    got = await samples(gw)
    total = "turnout_gateway_requests_total"
    assert got[(total, (("endpoint", "/v1/chat/completions"), ("status", "200")))] == 1
    assert got[(total, (("endpoint", "other"), ("status", "404")))] == 1
    assert got[(total, (("endpoint", "/v1/requests/{id}"), ("status", "404")))] == 2
    hist = "turnout_gateway_request_seconds_count"
    assert got[(hist, (("endpoint", "/v1/chat/completions"),))] == 1
    assert got[("turnout_gateway_in_flight", ())] == 1  # the /metrics call itself
    assert got[("turnout_gateway_status_store_entries", ())] >= 1
    assert got[("turnout_gateway_tokens_total", (("type", "prompt"),))] == 1
    assert got[("turnout_gateway_tokens_total", (("type", "completion"),))] == 2


async def test_streamed_replies_count_tokens_too(gw: Running) -> None:
    """The final reply of a stream is counted like a sync one."""
    r = await gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    await r.read()
    got = await samples(gw)
    assert got[("turnout_gateway_tokens_total", (("type", "completion"),))] == 2


async def test_webhook_outcomes_are_counted(gw: Running, receiver: tuple[Receiver, str]) -> None:
    """A delivered webhook counts as delivered."""
    hook, prefix = receiver
    body = {"kind": "chat", "model": "default", "body": CHAT, "webhook_url": prefix + "done"}
    await gw.post("/v1/requests", body)
    await asyncio.wait_for(hook.got.wait(), 5)
    for _ in range(100):
        got = await samples(gw)
        if got[("turnout_gateway_webhooks_total", (("outcome", "delivered"),))] == 1:
            break
        await asyncio.sleep(0.02)
    assert got[("turnout_gateway_webhooks_total", (("outcome", "delivered"),))] == 1
    assert got[("turnout_gateway_webhooks_total", (("outcome", "failed"),))] == 0


def test_cached_tokens_are_counted_in_either_usage_shape() -> None:
    """OpenAI's prompt_tokens_details.cached_tokens and Anthropic's cache reads both count."""
    m = GatewayMetrics()
    m.usage({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 8}})
    m.usage({"prompt_tokens": 4, "cache_read_input_tokens": 3})
    m.usage("not usage")
    assert m.tokens.labels("cached")._value.get() == 11
    assert m.tokens.labels("prompt")._value.get() == 14
