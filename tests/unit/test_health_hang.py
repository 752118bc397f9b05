"""The hang detector and how the health machine and book use it. Pure: the clock is passed in."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.health import BackendHealth, HealthPolicy, State
from turnout.health.book import HealthBook
from turnout.health.hang import hang_bound_ms, hang_reason

T0 = 1_700_000_000_000


@pytest.mark.parametrize(
    ("p99_ms", "bound"),
    [
        (None, 3000),  # nothing measured yet: the floor
        (10.0, 3000),  # a fast backend: the floor
        (1000.0, 3000),  # exactly 3 x p99 = floor
        (1000.4, 3002),  # 3 x p99 rounded up
        (4000.0, 12000),  # a slow backend: 3 x p99
    ],
)
def test_the_bound_is_the_larger_of_the_floor_and_three_p99(p99_ms, bound):
    """The bound is max(3 s, 3 x p99)."""
    assert hang_bound_ms(p99_ms, floor_ms=3000, factor=3.0) == bound


@pytest.mark.parametrize(
    ("oldest", "progress", "p99", "now", "hung"),
    [
        (None, None, None, 10_000, False),  # nothing in flight
        (0, None, None, 2_999, False),  # not yet old enough
        (0, None, None, 3_000, True),  # never completed anything, a call 3 s old
        (0, 100, 50.0, 3_000, False),  # a completion 2.9 s ago: alive
        (0, 0, 50.0, 3_000, True),  # last completion as old as the call: hung
        (0, 2_500, 50.0, 5_499, False),  # an old call, but others complete: one slow call
        (0, 2_500, 50.0, 5_500, True),  # and then completions stopped for the bound
        (0, 0, 2_000.0, 5_999, False),  # p99 2 s: the bound is 6 s
        (0, 0, 2_000.0, 6_000, True),
    ],
)
def test_hung_means_a_call_as_old_as_the_bound_and_no_completion_within_it(
    oldest, progress, p99, now, hung
):
    """A table of the detector's cases."""
    reason = hang_reason(
        oldest_call_ms=oldest,
        last_progress_ms=progress,
        p99_ms=p99,
        now_ms=now,
        floor_ms=3000,
        factor=3.0,
    )
    assert (reason is not None) is hung
    if hung:
        assert reason.startswith("hung: a call in flight for")


@given(
    oldest=st.integers(0, 100_000),
    progress=st.none() | st.integers(0, 100_000),
    p99=st.none() | st.floats(0, 20_000),
    now=st.integers(0, 200_000),
)
def test_never_hung_before_the_bound_nor_with_a_recent_completion(oldest, progress, p99, now):
    """No verdict of hung while the oldest call is younger than the bound or life was seen."""
    bound = hang_bound_ms(p99, floor_ms=3000, factor=3.0)
    reason = hang_reason(
        oldest_call_ms=oldest,
        last_progress_ms=progress,
        p99_ms=p99,
        now_ms=now,
        floor_ms=3000,
        factor=3.0,
    )
    if now - oldest < bound or (progress is not None and now - progress < bound):
        assert reason is None
    else:
        assert reason is not None


def test_a_healthy_backend_whose_calls_stop_completing_is_unhealthy_within_the_bound():
    """Calls stuck for 3 s with nothing completing: out of rotation, never HEALTHY meanwhile."""
    h = BackendHealth("a", now_ms=T0)
    for i in range(20):
        h.observe(True, 50.0, T0 + i)
        h.progressed(T0 + i)
    h.call_started(1, T0 + 100)
    h.call_started(2, T0 + 200)
    for now in range(T0 + 100, T0 + 3100, 500):
        assert h.tick(now) is State.HEALTHY
    assert h.tick(T0 + 3100) is State.UNHEALTHY
    assert h.reason.startswith("hung: a call in flight for 3000 ms")
    assert not h.routable(T0 + 3100)


def test_a_slow_call_among_completing_ones_is_not_a_hang():
    """One call far older than the bound while others keep completing: still healthy."""
    h = BackendHealth("a", now_ms=T0)
    h.call_started(1, T0)
    for now in range(T0, T0 + 20_000, 500):
        h.observe(True, 50.0, now)
        h.progressed(now)
        assert h.tick(now) is State.HEALTHY


def test_a_timed_out_probe_with_nothing_else_completing_is_a_hang():
    """A probe that got no answer while nothing else completed takes the backend out."""
    h = BackendHealth("a", now_ms=T0)
    h.progressed(T0)
    assert h.probe(False, 1000.0, T0 + 5000, timed_out=True) is State.UNHEALTHY
    assert "probe got no answer in 1000 ms" in h.reason


def test_a_timed_out_probe_while_traffic_completes_is_only_a_failure():
    """A probe timeout on a backend that answers other calls meanwhile is not a hang."""
    h = BackendHealth("a", now_ms=T0)
    h.progressed(T0 + 4500)
    assert h.probe(False, 1000.0, T0 + 5000, timed_out=True) is State.HEALTHY


def test_a_hung_backend_recovers_through_probation():
    """After a hang, passing probes bring it back only through probation."""
    policy = HealthPolicy(probation_after_ms=2000, probation_probes=2)
    book = HealthBook(["a", "b"], now_ms=T0, policy=policy)
    token = book.call_started("a", T0)
    assert book.tick(T0 + 3000)
    assert book.state("a") is State.UNHEALTHY
    assert [t.signal for t in book.drain_transitions()] == ["hang"]
    book.call_ended("a", token)  # the stuck call was abandoned
    book.probe("a", True, 5.0, T0 + 5000)
    assert book.state("a") is State.PROBATION
    book.probe("a", True, 5.0, T0 + 6000)
    book.probe("a", True, 5.0, T0 + 7000)
    assert book.state("a") is State.HEALTHY


def test_the_book_exposes_percentiles_only_with_enough_answers():
    """A p50 from two answers is noise: None until min_samples answers."""
    book = HealthBook(["a"], now_ms=T0)
    for i in range(4):
        book.observe("a", True, 100.0 + i, T0 + i)
    assert book.percentile("a", 50) is None
    book.observe("a", True, 104.0, T0 + 5)
    assert book.percentile("a", 50) == 102.0


def test_a_backend_may_set_its_own_hang_floor():
    """hang_after_ms raises one backend's floor (a one-slot model with long plain answers)."""
    book = HealthBook(["slow", "fast"], now_ms=T0, hang_floors_ms={"slow": 60_000})
    assert book.machines["slow"].policy.hang_floor_ms == 60_000
    assert book.machines["fast"].policy.hang_floor_ms == 3_000
    for b in ("slow", "fast"):
        book.machines[b].call_started(1, T0)
        assert book.machines[b].tick(T0 + 3_000) is (
            State.HEALTHY if b == "slow" else State.UNHEALTHY
        )
    assert book.machines["slow"].tick(T0 + 60_000) is State.UNHEALTHY


def test_with_a_raised_floor_a_probe_timing_out_behind_a_long_call_is_not_a_hang():
    """A probe queued behind a legitimately long call times out: busy, not hung, until the floor."""
    policy = HealthPolicy(hang_floor_ms=60_000)
    h = BackendHealth("slow", now_ms=T0, policy=policy)
    h.call_started(1, T0)
    assert h.probe(False, 5_000.0, T0 + 5_000, timed_out=True) is not State.UNHEALTHY
    assert h.probe(False, 5_000.0, T0 + 60_000, timed_out=True) is State.UNHEALTHY
