"""Each health state's traffic share is applied: a degraded backend gets about half."""

from __future__ import annotations

import random
import time
from collections import Counter

from schemas.types import Request
from turnout.config import loads
from turnout.core.admission import Admitted
from turnout.health import Verdict
from turnout.health.book import HealthBook
from turnout.settings import Settings
from turnout.worker.chooser import Chooser

CONFIG = loads(
    """
backends:
  - {id: shaky, protocol: openai, base_url: "http://127.0.0.1:1", models: [m]}
  - {id: steady, protocol: openai, base_url: "http://127.0.0.1:2", models: [m]}
routes:
  default:
    targets: [{backend: shaky, model: m}, {backend: steady, model: m}]
    policy: first
  alone: {targets: [{backend: shaky, model: m}]}
default_route: default
"""
)
DRAWS = 4000


def job(route_name: str) -> Admitted:
    request = Request(id="r", client_id="c", kind="chat", model=route_name, body={})
    route = CONFIG.route(route_name)
    assert route is not None
    deadline = int(time.time() * 1000) + 60_000
    return Admitted(request, "turnout.replies.c", route_name, route, deadline)


def book_with(state_events: dict[str, list[Verdict]]) -> HealthBook:
    book = HealthBook(["shaky", "steady"], now_ms=0)
    for backend, events in state_events.items():
        for event in events:
            book.machines[backend].handle(event, 0)
    return book


def test_a_degraded_backend_is_held_back_from_about_half_the_decisions() -> None:
    """DEGRADED's share is 0.5: about half the decisions leave it out; a healthy one none."""
    book = book_with({"shaky": [Verdict.DEGRADED]})
    rng = random.Random(1)
    held = Counter(b for _ in range(DRAWS) for b in book.held_back(rng))
    assert held["steady"] == 0
    assert abs(held["shaky"] / DRAWS - 0.5) < 0.05, held


def test_a_healthy_fleet_holds_nothing_back_and_draws_nothing() -> None:
    """With every backend healthy, no decision leaves one out (and the rng is not used)."""
    rng = random.Random(1)
    assert book_with({}).held_back(rng) == frozenset()
    assert rng.random() == random.Random(1).random()


async def test_a_degraded_first_target_serves_about_half_the_requests() -> None:
    """Under ``first``, a degraded first target takes about half; the healthy peer the rest."""
    c = Chooser(settings=Settings(), config=CONFIG, rng=random.Random(2))
    c.health.machines["shaky"].handle(Verdict.DEGRADED, int(time.time() * 1000))
    served = Counter()
    for _ in range(1000):
        decision, fell_back = await c.choose(job("default"), frozenset())
        served[decision.backend] += 1
        assert not fell_back
    assert abs(served["shaky"] / 1000 - 0.5) < 0.07, served


async def test_a_degraded_backend_alone_still_serves_every_request() -> None:
    """Held back only while another can serve: a route with nothing else still gets it."""
    c = Chooser(settings=Settings(), config=CONFIG, rng=random.Random(3))
    c.health.machines["shaky"].handle(Verdict.DEGRADED, int(time.time() * 1000))
    for _ in range(200):
        decision, _ = await c.choose(job("alone"), frozenset())
        assert decision.backend == "shaky"
