"""The routing decision, as tables of cases."""

import pytest

from turnout.config import Backend, Route, Target
from turnout.routing import Snapshot, decide, retry_delay_s

BACKENDS = {
    b.id: b
    for b in [
        Backend(id="a", protocol="openai", base_url="http://a", models=["m"], max_concurrency=2),
        Backend(id="b", protocol="ollama", base_url="http://b", models=["m"], max_concurrency=1),
    ]
}
RR = Route(targets=[Target(backend="a", model="m"), Target(backend="b", model="m2")])
FIRST = Route(targets=RR.targets, policy="first")


@pytest.mark.parametrize(
    ("route", "in_flight", "tried", "turn", "expected"),
    [
        (RR, {}, (), 0, ("a", "m")),
        (RR, {}, (), 1, ("b", "m2")),
        (RR, {"a": 2}, (), 0, ("b", "m2")),  # a is full
        (RR, {}, ("a",), 0, ("b", "m2")),  # a failed already: prefer b
        (RR, {"b": 1}, ("a",), 0, ("a", "m")),  # b full: retry on a
        (FIRST, {}, (), 7, ("a", "m")),
        (FIRST, {"a": 2}, (), 0, ("b", "m2")),
        (RR, {"a": 2, "b": 1}, (), 0, None),  # everything full
    ],
)
def test_decide(route, in_flight, tried, turn, expected):
    """decide picks the expected target for each situation."""
    snap = Snapshot(BACKENDS, in_flight, turn=turn)
    d = decide(route, snap, tried=frozenset(tried))
    assert (None if d is None else (d.backend, d.model)) == expected


def test_excluded_backends_are_never_chosen():
    """An excluded backend is not chosen even when it is the only one with capacity."""
    snap = Snapshot(BACKENDS, {"b": 1}, excluded=frozenset({"a"}))
    assert decide(RR, snap) is None


def test_decision_says_why():
    """Every decision names its policy and a reason."""
    d = decide(FIRST, Snapshot(BACKENDS, {}))
    assert d is not None
    assert d.policy == "first"
    assert "route order" in d.reason


def test_retry_delay_is_jittered_and_capped():
    """Backoff grows with the attempt but never past the cap."""
    import random

    rng = random.Random(1)
    delays = [retry_delay_s(n, rng) for n in range(1, 20)]
    assert all(0 <= d <= 2.0 for d in delays)
    assert max(delays[:2]) <= 0.1
