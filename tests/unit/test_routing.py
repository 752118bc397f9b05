"""The routing decision, as tables of cases and invariants."""

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.config import Backend, Cost, Route, Target
from turnout.core.routing import RouteRequest, Snapshot, decide, retry_delay_s, unavailable


def backend(id, tier="local", max_concurrency=2, weight=1.0, caps=(), cost=(0.0, 0.0)):
    return Backend(
        id=id,
        protocol="openai",
        base_url=f"http://{id}",
        models=["m"],
        tier=tier,
        max_concurrency=max_concurrency,
        weight=weight,
        capabilities=list(caps),
        cost=Cost(input_per_mtok=cost[0], output_per_mtok=cost[1]),
    )


BACKENDS = {
    b.id: b
    for b in [
        backend("a", max_concurrency=2),
        backend("b", max_concurrency=1),
        backend("c", tier="cloud", max_concurrency=4, weight=3, caps=["vision"], cost=(3, 15)),
        backend("d", tier="cloud", max_concurrency=4, weight=1, caps=["vision"], cost=(1, 2)),
    ]
}
AB = [Target(backend="a", model="m"), Target(backend="b", model="m2")]
ABCD = [*AB, Target(backend="c", model="mc"), Target(backend="d", model="md")]
RNG_SEED = 7


def route(policy, targets=ABCD, require=()):
    return Route(targets=targets, policy=policy, require=list(require))


def pick(rt, in_flight=None, *, tried=(), turn=0, latency=None, excluded=(), cooldown=(), **req):
    snap = Snapshot(
        BACKENDS,
        in_flight or {},
        excluded=frozenset(excluded),
        turn=turn,
        latency_ms=latency or {},
        cooldown=frozenset(cooldown),
    )
    d = decide(rt, snap, RouteRequest(**req), tried=frozenset(tried), rng=random.Random(RNG_SEED))
    return None if d is None else d.backend


@pytest.mark.parametrize(
    ("rt", "in_flight", "tried", "turn", "expected"),
    [
        (route("round_robin", AB), {}, (), 0, "a"),
        (route("round_robin", AB), {}, (), 1, "b"),
        (route("round_robin", AB), {"a": 2}, (), 0, "b"),  # a is full
        (route("round_robin", AB), {}, ("a",), 0, "b"),  # a failed already: prefer b
        (route("round_robin", AB), {"b": 1}, ("a",), 0, "a"),  # b full: retry on a
        (route("round_robin", AB), {"a": 2, "b": 1}, (), 0, None),  # everything full
        (route("first", AB), {}, (), 7, "a"),
        (route("first", AB), {"a": 2}, (), 0, "b"),
        (route("least_connections"), {"a": 1, "b": 0, "c": 0, "d": 0}, (), 0, "b"),
        (route("least_connections"), {"a": 1, "b": 1, "c": 1, "d": 0}, (), 0, "d"),
        (route("least_connections"), {"a": 1, "b": 0, "c": 3}, ("b",), 0, "d"),
        (route("least_connections"), {"a": 1, "c": 2, "d": 1}, ("b",), 0, "d"),  # 1/4 < 1/2
        (route("local_first"), {}, (), 0, "a"),
        (route("local_first"), {"a": 1}, (), 0, "b"),  # b has the lower load
        (route("local_first"), {"a": 2, "b": 1}, (), 0, "c"),  # local full: spill
        (route("local_first"), {"a": 2, "b": 1, "c": 1}, (), 0, "d"),  # to least-loaded cloud
        (route("local_first"), {"a": 2}, ("b",), 0, "c"),  # b tried, a full: spill
        (route("cost"), {}, (), 0, "a"),  # free local backends
        (route("cost", ABCD[2:]), {}, (), 0, "d"),
        (route("cost", ABCD[2:]), {"d": 4}, (), 0, "c"),
        (route("cost", require=["vision"]), {}, (), 0, "d"),
    ],
)
def test_decide(rt, in_flight, tried, turn, expected):
    """decide picks the expected backend for each policy and situation."""
    assert pick(rt, in_flight, tried=tried, turn=turn) == expected


@pytest.mark.parametrize(
    ("latency", "in_flight", "expected"),
    [
        ({"a": 100, "b": 50, "c": 300, "d": 200}, {}, "b"),
        ({"a": 100, "b": 50, "c": 300}, {}, "d"),  # d unknown: measure it
        ({"a": 100, "c": 300}, {"b": 0, "d": 1}, "b"),  # both unknown: lower load
        ({"a": 100, "b": 50, "c": 300, "d": 200}, {"b": 1}, "a"),  # b full
    ],
)
def test_latency_policy(latency, in_flight, expected):
    """latency picks the lowest EWMA, counting an unknown one as best."""
    assert pick(route("latency"), in_flight, latency=latency) == expected


def test_latency_policy_measures_a_due_backend_again():
    """A backend whose old average is due is tried before the fastest, saying why."""
    LAT = {"a": 900, "b": 40, "c": 500, "d": 600}
    snap = Snapshot(BACKENDS, {}, latency_ms=LAT, latency_due=frozenset({"a"}))
    got = decide(route("latency"), snap, RouteRequest(), tried=(), rng=random.Random(0))
    assert got is not None and got.backend == "a"
    assert "measured again" in got.reason
    snap = Snapshot(BACKENDS, {}, latency_ms=LAT)
    got = decide(route("latency"), snap, RouteRequest(), tried=(), rng=random.Random(0))
    assert got is not None and got.backend == "b"


@pytest.mark.parametrize(
    ("latency", "remaining_ms", "expected"),
    [
        ({"a": 900, "b": 900}, 1000, "a"),  # fits the deadline
        ({"a": 900, "b": 900}, 500, "c"),  # local too slow: spill
        ({"a": 900}, 500, "b"),  # b has no measurement: assume it fits
    ],
)
def test_local_first_respects_the_deadline(latency, remaining_ms, expected):
    """local_first skips a local backend whose latency EWMA exceeds the time left."""
    assert pick(route("local_first"), latency=latency, remaining_ms=remaining_ms) == expected


def test_local_first_uses_a_slow_local_backend_when_nothing_else_is_open():
    """A slow local backend still serves when no cloud backend is open."""
    rt = route("local_first")
    got = pick(rt, {"b": 1}, latency={"a": 900}, remaining_ms=500, excluded=("c", "d"))
    assert got == "a"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"excluded": ("a",)}, "b"),
        ({"cooldown": ("a",)}, "b"),
        ({"excluded": ("a",), "cooldown": ("b",)}, "c"),
        ({"tiers": frozenset({"cloud"})}, "c"),
        ({"tiers": frozenset({"local"}), "in_flight": {"a": 2, "b": 1}}, None),
        ({"excluded": ("a", "b", "c", "d")}, None),
    ],
)
def test_candidates_are_filtered(kwargs, expected):
    """Excluded, cooling-down and disallowed-tier backends are never chosen."""
    assert pick(route("first"), **kwargs) == expected


def test_required_capabilities_filter_candidates():
    """A route's required capabilities leave only backends that have them."""
    assert pick(route("first", require=["vision"])) == "c"
    assert pick(route("first", AB, require=["vision"])) is None


@pytest.mark.parametrize(
    ("rt", "kwargs", "fragment"),
    [
        (route("first"), {}, "first: first target with capacity in route order"),
        (route("round_robin", AB), {"turn": 3}, "round_robin: turn 3 of 2"),
        (route("least_connections"), {}, "least_connections: 'a' has 0/2 in flight"),
        (route("latency"), {}, "latency: 'a' has no latency measured yet"),
        (route("cost", ABCD[2:]), {"prompt_tokens": 1000}, "cost: 'd' estimated 0.001512"),
        (route("weighted"), {}, "weighted: "),
        (route("local_first"), {}, "local_first: local backend 'a' has capacity (0/2)"),
        (
            route("local_first"),
            {"in_flight": {"a": 2}, "tried": ("b",)},
            "local_first: local backend 'a' full (2/2); local backend 'b' already tried, "
            "spilled to cloud 'c' (0/4)",
        ),
        (
            route("local_first", ABCD[2:]),
            {},
            "local_first: the route has no local target, spilled to cloud 'c'",
        ),
        (
            route("local_first"),
            {"latency": {"a": 900, "b": 2000}, "remaining_ms": 800},
            "local backend 'a' predicted too slow (latency EWMA 900 ms > 800 ms left)",
        ),
        (
            route("round_robin", AB),
            {"in_flight": {"b": 1}, "tried": ("a",)},
            "every untried target is unavailable, so a tried one serves again",
        ),
    ],
)
def test_decision_says_why(rt, kwargs, fragment):
    """Every decision names its policy and a reason a person can read."""
    in_flight = kwargs.pop("in_flight", {})
    tried = kwargs.pop("tried", ())
    latency = kwargs.pop("latency", {})
    turn = kwargs.pop("turn", 0)
    snap = Snapshot(BACKENDS, in_flight, turn=turn, latency_ms=latency)
    d = decide(rt, snap, RouteRequest(**kwargs), tried=frozenset(tried), rng=random.Random(1))
    assert d is not None
    assert d.policy == rt.policy
    assert fragment in d.reason


def test_unavailable_names_each_blocked_backend():
    """unavailable says why each target was passed over."""
    snap = Snapshot(BACKENDS, {"b": 1}, excluded=frozenset({"a"}), cooldown=frozenset({"d"}))
    got = unavailable(route("first"), snap, RouteRequest(tiers=frozenset({"local", "cloud"})))
    assert got == {"a": "excluded by health", "b": "full (1/1)", "d": "cooling down after a 429"}
    got = unavailable(route("first", require=["vision"]), snap, RouteRequest(tiers=frozenset()))
    assert got["c"] == "tier cloud not allowed by the rule ()"
    assert unavailable(
        route("first", AB, require=["vision"]), Snapshot(BACKENDS, {}), RouteRequest()
    ) == {
        "a": "lacks capability vision",
        "b": "lacks capability vision",
    }


def test_weighted_shares_follow_weights():
    """With weights 3:1, a seeded rng gives shares within 5% of 75/25 over 4,000 picks."""
    rt = route("weighted", ABCD[2:])
    snap = Snapshot(BACKENDS, {})
    rng = random.Random(12345)
    counts = Counter(decide(rt, snap, RouteRequest(), rng=rng).backend for _ in range(4000))
    assert abs(counts["c"] / 4000 - 0.75) < 0.05
    assert abs(counts["d"] / 4000 - 0.25) < 0.05


def test_weighted_skips_zero_weights_unless_nothing_else_is_open():
    """A weight-0 backend is chosen only when no weighted backend is open."""
    backends = {**BACKENDS, "a": backend("a", weight=0)}
    rt = route("weighted", AB)
    picks = {
        decide(rt, Snapshot(backends, {}), RouteRequest(), rng=random.Random(s)).backend
        for s in range(50)
    }
    assert picks == {"b"}
    d = decide(rt, Snapshot(backends, {"b": 1}), RouteRequest(), rng=random.Random(0))
    assert d is not None
    assert d.backend == "a"


def test_retry_delay_is_jittered_and_capped():
    """Backoff grows with the attempt but never past the cap."""
    rng = random.Random(1)
    delays = [retry_delay_s(n, rng) for n in range(1, 20)]
    assert all(0 <= d <= 2.0 for d in delays)
    assert max(delays[:2]) <= 0.1


# Invariants over generated snapshots.

IDS = ["p", "q", "r", "s", "t"]
POLICIES = [
    "round_robin",
    "weighted",
    "least_connections",
    "latency",
    "cost",
    "local_first",
    "first",
]
CAPS = ["chat", "vision"]


@st.composite
def situations(draw):
    backends = {
        i: backend(
            i,
            tier=draw(st.sampled_from(["local", "cloud"])),
            max_concurrency=draw(st.integers(1, 4)),
            weight=draw(st.sampled_from([0.0, 0.5, 1.0, 3.0])),
            caps=draw(st.lists(st.sampled_from(CAPS), unique=True)),
            cost=(draw(st.floats(0, 20)), draw(st.floats(0, 60))),
        )
        for i in IDS
    }
    targets = draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=6))
    rt = Route(
        targets=[Target(backend=t, model="m") for t in targets],
        policy=draw(st.sampled_from(POLICIES)),
        require=draw(st.lists(st.sampled_from(CAPS), unique=True, max_size=1)),
    )
    snap = Snapshot(
        backends,
        {i: draw(st.integers(0, 5)) for i in IDS},
        excluded=frozenset(draw(st.lists(st.sampled_from(IDS)))),
        turn=draw(st.integers(0, 100)),
        latency_ms={i: draw(st.floats(1, 5000)) for i in draw(st.lists(st.sampled_from(IDS)))},
        cooldown=frozenset(draw(st.lists(st.sampled_from(IDS)))),
    )
    request = RouteRequest(
        prompt_tokens=draw(st.integers(0, 100_000)),
        remaining_ms=draw(st.floats(0, 10_000)),
        tiers=draw(st.sampled_from([None, frozenset({"local"}), frozenset({"cloud"})])),
    )
    tried = frozenset(draw(st.lists(st.sampled_from(IDS))))
    return rt, snap, request, tried, draw(st.integers(0, 2**32))


@settings(max_examples=300)
@given(situations())
def test_never_an_unavailable_backend(situation):
    """No policy ever picks an excluded, cooling, full, incapable or disallowed-tier backend."""
    rt, snap, request, tried, seed = situation
    d = decide(rt, snap, request, tried=tried, rng=random.Random(seed))
    open_ = {
        t.backend
        for t in rt.targets
        if t.backend not in snap.excluded | snap.cooldown
        and snap.in_flight[t.backend] < snap.backends[t.backend].max_concurrency
        and set(rt.require) <= set(snap.backends[t.backend].capabilities)
        and (request.tiers is None or snap.backends[t.backend].tier in request.tiers)
    }
    if d is None:
        assert not open_
    else:
        assert d.backend in open_
        assert d.policy == rt.policy
        assert d.reason.startswith(f"{rt.policy}: ")
        assert d.backend not in tried or open_ <= tried


@given(situations())
def test_same_seed_same_decision(situation):
    """The same seed, snapshot and request always give the same decision."""
    rt, snap, request, tried, seed = situation
    first = decide(rt, snap, request, tried=tried, rng=random.Random(seed))
    again = decide(rt, snap, request, tried=tried, rng=random.Random(seed))
    assert first == again
