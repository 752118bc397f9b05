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


LATENCY = loads(
    """
backends:
  - {id: a, protocol: openai, base_url: "http://127.0.0.1:1", models: [m]}
  - {id: b, protocol: openai, base_url: "http://127.0.0.1:2", models: [m]}
routes:
  default:
    targets: [{backend: a, model: m}, {backend: b, model: m}]
    policy: latency
default_route: default
"""
)


def latency_job(now_ms: int) -> Admitted:
    request = Request(id="r", client_id="c", kind="chat", model="default", body={})
    route = LATENCY.route("default")
    assert route is not None
    return Admitted(request, "turnout.replies.c", "default", route, now_ms + 30_000)


async def test_a_backend_slow_once_is_measured_again_and_wins_back(clock):
    """latency: 'a' slow once (300 ms) loses to 'b' (40 ms) until its average is
    LATENCY_REFRESH_S old; then it is tried once, and its new 20 ms replaces the 300."""
    c = Chooser(settings=Settings(), config=LATENCY)
    c.observe("a", None, 300.0)
    c.observe("b", None, 40.0)
    decision, _ = await c.choose(latency_job(clock[0]), frozenset())
    assert decision.backend == "b", decision.reason
    clock[0] += int(chooser_mod.LATENCY_REFRESH_S * 1000) + 1
    c.observe("b", None, 40.0)  # b keeps serving, so only a's average is old
    decision, _ = await c.choose(latency_job(clock[0]), frozenset())
    assert decision.backend == "a", decision.reason
    assert "measured again" in decision.reason
    c.observe("a", None, 20.0)
    decision, _ = await c.choose(latency_job(clock[0]), frozenset())
    assert decision.backend == "a", decision.reason
    assert "20 ms" in decision.reason


async def test_a_backend_with_a_call_in_flight_is_not_due(clock):
    """The call in flight will refresh the average: no second request is sent to measure."""
    c = Chooser(settings=Settings(), config=LATENCY)
    c.observe("a", None, 300.0)
    c.observe("b", None, 40.0)
    c.started("a")
    clock[0] += int(chooser_mod.LATENCY_REFRESH_S * 1000) + 1
    c.observe("b", None, 40.0)
    decision, _ = await c.choose(latency_job(clock[0]), frozenset())
    assert decision.backend == "b", decision.reason
