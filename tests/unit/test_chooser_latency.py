"""The chooser's latency averages: local_first comes back to a local backend once idle."""

from __future__ import annotations

import time

import pytest

from schemas.types import Request
from turnout.config import loads
from turnout.core.admission import Admitted
from turnout.settings import Settings
from turnout.worker import chooser as chooser_mod
from turnout.worker.chooser import LATENCY_MEMORY_S, Chooser

CONFIG = loads(
    """
backends:
  - {id: local, protocol: openai, base_url: "http://127.0.0.1:1", models: [m], max_concurrency: 2}
  - {id: cloud, protocol: openai, base_url: "http://127.0.0.1:2", models: [m], tier: cloud}
routes:
  default:
    targets: [{backend: local, model: m}, {backend: cloud, model: m}]
    policy: local_first
default_route: default
"""
)


def job(now_ms: int, remaining_ms: int) -> Admitted:
    request = Request(id="r", client_id="c", kind="chat", model="default", body={})
    route = CONFIG.route("default")
    assert route is not None
    return Admitted(request, "turnout.replies.c", "default", route, now_ms + remaining_ms)


@pytest.fixture
def clock(monkeypatch):
    now = [int(time.time() * 1000)]
    monkeypatch.setattr(chooser_mod, "_now_ms", lambda: now[0])
    return now


async def test_a_local_backend_slower_than_the_deadline_is_passed_over(clock):
    """A local average of 5 s against 1 s left sends the request to the cloud, saying why."""
    c = Chooser(settings=Settings(), config=CONFIG)
    c.observe("local", None, 5000.0)
    decision, _ = await c.choose(job(clock[0], 1000), frozenset())
    assert decision.backend == "cloud", decision.reason
    assert "predicted too slow" in decision.reason
    assert "predicted too slow (latency EWMA 5000 ms" in decision.reason


async def test_an_idle_local_backends_old_average_is_forgotten(clock):
    """After LATENCY_MEMORY_S without a call, the slow average no longer keeps local out."""
    c = Chooser(settings=Settings(), config=CONFIG)
    c.observe("local", None, 5000.0)
    clock[0] += int(LATENCY_MEMORY_S * 1000) + 1
    decision, _ = await c.choose(job(clock[0], 1000), frozenset())
    assert decision.backend == "local", decision.reason
    # The next measurement starts a fresh average instead of blending with the old one.
    c.observe("local", None, 400.0)
    decision, _ = await c.choose(job(clock[0], 1000), frozenset())
    assert decision.backend == "local", decision.reason


async def test_a_busy_backends_average_is_kept_however_old(clock):
    """A backend with a call in flight keeps its average: that call will refresh it."""
    c = Chooser(settings=Settings(), config=CONFIG)
    c.observe("local", None, 5000.0)
    c.started("local")
    clock[0] += int(LATENCY_MEMORY_S * 1000) + 1
    decision, _ = await c.choose(job(clock[0], 1000), frozenset())
    assert decision.backend == "cloud", decision.reason
    assert "predicted too slow" in decision.reason
