"""Retry steps, blame, backlog and retry advice, and per-call timeouts: pure tables of cases."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.core.retry import backlog_clear_ms, blames_backend, next_step, retry_after_ms
from turnout.health.timeouts import call_timeouts

BASE = dict(
    retryable=True,
    reached=True,
    relayed=0,
    attempts_reached=1,
    max_attempts=3,
    remaining_ms=5_000,
    budget_available=True,
    idle_target=None,
)


@pytest.mark.parametrize(
    ("change", "retry", "charge", "why"),
    [
        ({}, True, True, "within the route's retry budget"),
        ({"relayed": 3}, False, False, "the stream broke after 3 chunk(s)"),
        ({"remaining_ms": 0}, False, False, "the deadline passed"),
        ({"retryable": False}, False, False, "the error is not retryable"),
        ({"attempts_reached": 3}, False, False, "3 of 3 attempts used"),
        ({"reached": False, "budget_available": False}, True, False, "never reached"),
        ({"budget_available": False}, False, False, "retry budget is spent"),
        (
            {"budget_available": False, "idle_target": "b"},
            True,
            False,
            "'b' is healthy and idle",
        ),
        # An idle target does not override the hard limits.
        ({"budget_available": False, "idle_target": "b", "attempts_reached": 3}, False, False, ""),
        ({"idle_target": "b", "remaining_ms": -1}, False, False, "deadline"),
    ],
)
def test_next_step(change, retry, charge, why):
    """A table of what follows a failed attempt."""
    step = next_step(**{**BASE, **change})
    assert (step.retry, step.charge_budget) == (retry, charge)
    assert why in step.why


@given(
    retryable=st.booleans(),
    reached=st.booleans(),
    relayed=st.integers(0, 3),
    attempts=st.integers(0, 5),
    max_attempts=st.integers(1, 5),
    remaining=st.integers(-100, 10_000),
    budget=st.booleans(),
    idle=st.none() | st.just("b"),
)
def test_a_retry_never_breaks_a_hard_limit(
    retryable, reached, relayed, attempts, max_attempts, remaining, budget, idle
):
    """No retry past the deadline, max_attempts, a non-retryable error or a started stream;
    a charged retry only when the budget has it."""
    step = next_step(
        retryable=retryable,
        reached=reached,
        relayed=relayed,
        attempts_reached=attempts,
        max_attempts=max_attempts,
        remaining_ms=remaining,
        budget_available=budget,
        idle_target=idle,
    )
    if step.retry:
        assert retryable and not relayed and remaining > 0 and attempts < max_attempts
        assert budget or idle is not None or not reached
    if step.charge_budget:
        assert step.retry and budget and reached


@pytest.mark.parametrize(
    ("timed_out", "capped", "timeout_ms", "p99", "blamed"),
    [
        (False, True, 3, 200.0, True),  # a 5xx is the backend's, whatever the deadline
        (True, False, 3, 200.0, True),  # its own limit: its fault
        (True, True, 3, 200.0, False),  # 3 ms of deadline left: the router's queueing
        (True, True, 200, 200.0, True),  # given its p99 and still no answer
        (True, True, 3, None, False),  # nothing known: do not blame on a cut-short call
    ],
)
def test_blames_backend(timed_out, capped, timeout_ms, p99, blamed):
    """Only failures the backend caused move its health."""
    assert (
        blames_backend(
            timed_out=timed_out, deadline_capped=capped, timeout_ms=timeout_ms, p99_ms=p99
        )
        is blamed
    )


@pytest.mark.parametrize(
    ("in_flight", "waiting", "rate", "clear"),
    [
        (0, [], 10.0, 0.0),
        (2, [], 10.0, 200.0),
        (2, [10_000] * 8, 10.0, 1000.0),  # all 8 can be served
        (2, [250] * 8, 10.0, 400.0),  # only 2 before their deadlines pass
        (0, [150, 99_000, 150, 99_000], 10.0, 300.0),  # all but the second 150 ms one
        (2, [10_000] * 8, 0.0, None),  # nothing drains: unknown
    ],
)
def test_backlog_clear_ms(in_flight, waiting, rate, clear):
    """Waiting requests that will expire first do not delay the backlog's end."""
    assert backlog_clear_ms(
        in_flight=in_flight, waiting_remaining_ms=waiting, drain_per_s=rate
    ) == (pytest.approx(clear) if clear is not None else None)


@given(
    in_flight=st.integers(0, 50),
    waiting=st.lists(st.integers(-1000, 60_000), max_size=200),
    rate=st.floats(0.1, 1000),
)
def test_the_backlog_never_clears_later_than_serving_everyone(in_flight, waiting, rate):
    """Bounded by in-flight plus every waiting request, at the drain rate."""
    clear = backlog_clear_ms(in_flight=in_flight, waiting_remaining_ms=waiting, drain_per_s=rate)
    assert 0 <= clear <= (in_flight + len(waiting)) * 1000 / rate + 1e-6


@pytest.mark.parametrize(
    ("kwargs", "advice"),
    [
        ({}, 1000),
        ({"backend_says_ms": 2000, "clear_ms": 50_000}, 2000),  # the backend's Retry-After wins
        ({"backend_says_ms": 0}, 100),  # never below the floor
        ({"clear_ms": 17_250.2}, 17_251),
        ({"clear_ms": 3.0}, 100),
        ({"clear_ms": 3000, "recovery_ms": 25_000}, 25_000),
        ({"recovery_ms": 7000}, 7000),
    ],
)
def test_retry_after_ms(kwargs, advice):
    """The advice on a retryable error."""
    assert retry_after_ms(**kwargs) == advice


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # nothing measured: the configured total; chunks get 3 s
        (dict(p99_ms=None, remaining_ms=300_000, stream=True), (120_000, 3_000, 3_000, False)),
        # a plain call's first byte is its answer
        (dict(p99_ms=None, remaining_ms=300_000, stream=False), (120_000, 120_000, 3_000, False)),
        # p99 200 ms: 10 s total (floor), 3 s chunks (floor)
        (dict(p99_ms=200.0, remaining_ms=300_000, stream=False), (10_000, 10_000, 3_000, False)),
        # p99 4 s: 40 s total, 12 s chunks
        (dict(p99_ms=4000.0, remaining_ms=300_000, stream=False), (40_000, 40_000, 12_000, False)),
        # a stream keeps the configured total: its chunk limits catch a wedge
        (dict(p99_ms=4000.0, remaining_ms=300_000, stream=True), (120_000, 12_000, 12_000, False)),
        # the deadline caps everything
        (dict(p99_ms=4000.0, remaining_ms=5_000, stream=True), (5_000, 5_000, 5_000, True)),
        # configured values win over derived ones
        (
            dict(
                p99_ms=4000.0,
                remaining_ms=300_000,
                stream=True,
                first_byte_timeout_ms=1_000,
                stall_timeout_ms=500,
                timeout_ms=30_000,
            ),
            (30_000, 1_000, 500, False),
        ),
        # the derived total never exceeds the configured one
        (
            dict(p99_ms=60_000.0, remaining_ms=900_000, stream=False),
            (120_000, 120_000, 120_000, False),
        ),
    ],
)
def test_call_timeouts(kwargs, expected):
    """Per-call limits: configured, else derived from p99, always capped by the deadline."""
    t = call_timeouts(**kwargs)
    assert (t.total_ms, t.first_byte_ms, t.stall_ms, t.deadline_capped) == expected


@given(
    p99=st.none() | st.floats(0, 100_000),
    remaining=st.floats(1, 1_000_000),
    stream=st.booleans(),
    configured=st.integers(1, 600_000),
)
def test_no_limit_outlives_the_deadline(p99, remaining, stream, configured):
    """Every limit is at most the time left and at most the configured total."""
    t = call_timeouts(p99_ms=p99, remaining_ms=remaining, stream=stream, timeout_ms=configured)
    assert 1 <= t.total_ms <= min(configured, max(1, remaining))
    assert t.first_byte_ms <= t.total_ms and t.stall_ms <= t.total_ms
