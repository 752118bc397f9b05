"""Token buckets with reservation: exact, honest about retry times, compact on disk."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.config import Client
from turnout.core.ratelimit import Bucket, ClientLimits, ClientState, refill, take

T0 = 1_700_000_000_000


def take1(bucket, now_ms=T0, *, cost=1.0, rate=10.0, burst=5.0, max_wait_ms=0):
    return take(
        bucket, cost=cost, rate_per_s=rate, burst=burst, now_ms=now_ms, max_wait_ms=max_wait_ms
    )


@pytest.mark.parametrize(
    ("bucket", "now_ms", "kwargs", "expected"),
    [
        # (allowed, wait_ms, retry_after_ms, new level)
        (None, T0, {}, (True, 0, 0, 4.0)),  # a new client starts full
        (Bucket(1.0, T0), T0, {}, (True, 0, 0, 0.0)),
        (Bucket(0.0, T0), T0, {}, (False, 0, 100, 0.0)),  # 10/s: one token per 100 ms
        (Bucket(0.0, T0), T0 + 40, {}, (False, 0, 60, 0.4)),  # refilled, not charged
        (Bucket(0.0, T0), T0 + 100, {}, (True, 0, 0, 0.0)),
        (Bucket(0.0, T0), T0 + 10_000, {}, (True, 0, 0, 4.0)),  # refill stops at burst
        (Bucket(0.0, T0), T0, {"max_wait_ms": 100}, (True, 100, 0, -1.0)),  # reservation
        (Bucket(-1.0, T0), T0, {"max_wait_ms": 100}, (False, 0, 200, -1.0)),
        (Bucket(-1.0, T0), T0, {"max_wait_ms": 200}, (True, 200, 0, -2.0)),
        (Bucket(0.5, T0), T0, {"cost": 3.0}, (False, 0, 250, 0.5)),
        (None, T0, {"cost": 50.0}, (True, 0, 0, 0.0)),  # more than burst costs burst
        (Bucket(2.0, T0 + 500), T0, {}, (True, 0, 0, 1.0)),  # time never runs back
    ],
)
def test_take(bucket, now_ms, kwargs, expected):
    """take charges, reserves or rejects, and says how long to wait or retry after."""
    t = take1(bucket, now_ms, **kwargs)
    assert (t.allowed, t.wait_ms, t.retry_after_ms) == expected[:3]
    assert t.bucket.level == pytest.approx(expected[3])


def test_time_running_back_does_not_refill_twice():
    """A clock that steps back keeps the later timestamp, so no refill is counted twice."""
    assert refill(Bucket(0.0, T0 + 500), rate_per_s=10, burst=5, now_ms=T0) == Bucket(0.0, T0 + 500)


def test_take_refuses_a_zero_rate():
    """A zero rate is a configuration error, named as such."""
    with pytest.raises(ValueError, match="rate_per_s and burst must be > 0"):
        take1(None, rate=0)


def test_acceptance_fifty_per_second():
    """A client limited to 50 req/s sending 100 req/s evenly for 10 s gets about 500 through."""
    bucket, allowed = None, 0
    for i in range(1000):
        t = take1(bucket, T0 + i * 10, rate=50, burst=5)
        bucket = t.bucket
        allowed += t.allowed
    assert 475 <= allowed <= 525


# Invariants over generated request sequences.

RATES = st.floats(0.5, 200)
BURSTS = st.integers(1, 20).map(float)
WAITS = st.sampled_from([0, 10, 100, 1000])
GAPS = st.lists(st.integers(0, 300), min_size=1, max_size=200)
COSTS = st.floats(0.1, 30)


def run(gaps, costs, rate, burst, max_wait_ms):
    """Replay requests at increasing times; return (time, cost, take) per request."""
    bucket, now, out = None, T0, []
    for i, gap in enumerate(gaps):
        now += gap
        t = take1(bucket, now, cost=costs[i % len(costs)], rate=rate, burst=burst,
                  max_wait_ms=max_wait_ms)  # fmt: skip
        bucket = t.bucket
        out.append((now, min(costs[i % len(costs)], burst), t))
    return out


@settings(max_examples=300)
@given(GAPS, st.lists(COSTS, min_size=1, max_size=5), RATES, BURSTS, WAITS)
def test_allowed_never_exceeds_burst_plus_rate(gaps, costs, rate, burst, max_wait_ms):
    """In any window of T ms, allowed cost is at most burst + rate * (T + max_wait)."""
    out = run(gaps, costs, rate, burst, max_wait_ms)
    times = [now for now, _, _ in out]
    for i, start in enumerate(times):
        spent = 0.0
        for now, cost, t in out[i:]:
            spent += cost if t.allowed else 0.0
            bound = burst + rate * (now - start + max_wait_ms) / 1000
            assert spent <= bound + 1e-6


@settings(max_examples=300)
@given(GAPS, RATES, BURSTS, WAITS)
def test_reserved_starts_never_exceed_burst_plus_rate(gaps, rate, burst, max_wait_ms):
    """Counted at their starts (arrival + wait), any T ms hold at most burst + rate * (T + 1 ms).

    The extra millisecond is the rounding of each wait to whole milliseconds.
    """
    out = run(gaps, [1.0], rate, burst, max_wait_ms)
    starts = sorted(now + t.wait_ms for now, _, t in out if t.allowed)
    for i, s in enumerate(starts):
        for j in range(i, len(starts)):
            assert j - i + 1 <= burst + rate * (starts[j] - s + 1) / 1000 + 1e-6


@settings(max_examples=300)
@given(GAPS, st.lists(COSTS, min_size=1, max_size=5), RATES, BURSTS, WAITS)
def test_retry_after_is_honest(gaps, costs, rate, burst, max_wait_ms):
    """Taking again retry_after_ms after a rejection succeeds at once."""
    for now, cost, t in run(gaps, costs, rate, burst, max_wait_ms):
        if not t.allowed:
            assert t.retry_after_ms > max_wait_ms
            again = take1(t.bucket, now + t.retry_after_ms, cost=cost, rate=rate, burst=burst)
            assert again.allowed
            assert again.wait_ms == 0


@settings(max_examples=300)
@given(GAPS, st.lists(COSTS, min_size=1, max_size=5), RATES, BURSTS, WAITS)
def test_rejection_charges_nothing(gaps, costs, rate, burst, max_wait_ms):
    """A rejected take leaves the bucket as refilled, as if the request never came."""
    bucket = None
    for i, (now, _, t) in enumerate(run(gaps, costs, rate, burst, max_wait_ms)):
        if not t.allowed:
            assert t.bucket == refill(bucket, rate_per_s=rate, burst=burst, now_ms=now)
        else:
            assert t.wait_ms <= max_wait_ms
        bucket = t.bucket
        assert i >= 0


FLOATS = st.floats(allow_nan=False)
BUCKETS = st.builds(Bucket, FLOATS, st.integers(-(2**63), 2**63 - 1))


@given(BUCKETS)
def test_bucket_round_trips_through_bytes(bucket):
    """A bucket survives being stored as a table value, in 16 bytes."""
    raw = bucket.to_bytes()
    assert len(raw) == 16
    assert Bucket.from_bytes(raw) == bucket


@given(st.builds(ClientState, st.none() | BUCKETS, st.none() | BUCKETS))
def test_client_state_round_trips_through_bytes(state):
    """A client's buckets survive being stored as one table value."""
    assert ClientState.from_bytes(state.to_bytes()) == state


@pytest.mark.parametrize("raw", [b"", b"\x00\x00", b"\x01" + b"\x00" * 15, b"\x04", b"\x00" * 17])
def test_malformed_state_is_refused(raw):
    """Bytes of the wrong length or flags are refused with the expected size."""
    with pytest.raises(ValueError, match=r"got \d+"):
        if len(raw) == 17:
            Bucket.from_bytes(raw)
        else:
            ClientState.from_bytes(raw)


# Both of a client's limits together.

BOTH = ClientLimits(requests_per_s=10, burst=2, tokens_per_min=600, max_wait_ms=0)


@pytest.mark.parametrize(
    ("limits", "state", "tokens", "expected"),
    [
        # (allowed, wait_ms, retry_after_ms, limit)
        (ClientLimits(), None, 10**9, (True, 0, 0, None)),
        (BOTH, None, 100, (True, 0, 0, None)),
        (BOTH, ClientState(Bucket(0, T0), None), 100, (False, 0, 100, "requests_per_s")),
        (BOTH, ClientState(None, Bucket(50, T0)), 100, (False, 0, 5000, "tokens_per_min")),
        (
            BOTH,
            ClientState(Bucket(0, T0), Bucket(0, T0)),
            100,
            (False, 0, 10_000, "tokens_per_min"),  # the longer wait is the honest one
        ),
        (
            ClientLimits(requests_per_s=10, burst=2, tokens_per_min=600, max_wait_ms=500),
            ClientState(Bucket(0, T0), Bucket(80, T0)),
            82,
            (True, 200, 0, None),  # both reserve; the longer wait applies
        ),
    ],
)
def test_client_limits(limits, state, tokens, expected):
    """check allows only when both limits allow, and reports the binding one."""
    v = limits.check(state, tokens=tokens, now_ms=T0)
    assert (v.allowed, v.wait_ms, v.retry_after_ms, v.limit) == expected


def test_a_refused_token_limit_charges_no_request():
    """When the token limit refuses, the request bucket is not charged either."""
    state = ClientState(Bucket(2, T0), Bucket(0, T0))
    v = BOTH.check(state, tokens=100, now_ms=T0)
    assert not v.allowed
    assert v.state.requests == Bucket(2, T0)


def test_an_allowed_request_charges_both():
    """An allowed request takes one request and its tokens."""
    v = BOTH.check(None, tokens=100, now_ms=T0)
    assert v.state == ClientState(Bucket(1, T0), Bucket(500, T0))


def test_unlimited_clients_keep_no_state():
    """A client without limits has nothing to store."""
    v = ClientLimits().check(None, tokens=5, now_ms=T0)
    assert v.state == ClientState()
    assert ClientLimits().unlimited


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        (None, ClientLimits()),
        (Client(requests_per_s=2.5), ClientLimits(requests_per_s=2.5, burst=3.0)),
        (
            Client(requests_per_s=50, burst=5, tokens_per_min=1000, token_burst=200, max_wait_ms=9),
            ClientLimits(50, 5.0, 1000, 200.0, 9),
        ),
        (Client(allowed_routes=["x"]), ClientLimits()),
    ],
)
def test_limits_from_config(client, expected):
    """A client's config block becomes its limits; burst defaults to one second's worth."""
    assert ClientLimits.from_config(client) == expected


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.integers(0, 500), st.integers(0, 3000)), min_size=1, max_size=60),
    st.sampled_from([0, 100]),
)
def test_client_retry_after_is_honest(requests, max_wait_ms):
    """After a refusal, the same request retry_after_ms later is allowed at once."""
    limits = ClientLimits(requests_per_s=5, burst=2, tokens_per_min=6000, max_wait_ms=max_wait_ms)
    state, now = None, T0
    for gap, tokens in requests:
        now += gap
        v = limits.check(state, tokens=tokens, now_ms=now)
        if not v.allowed:
            again = limits.check(v.state, tokens=tokens, now_ms=now + v.retry_after_ms)
            assert again.allowed
            assert again.wait_ms == 0
            assert math.isfinite(v.retry_after_ms)
        state = v.state
