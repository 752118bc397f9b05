"""UndeliveredWatch: when records waiting in Kafka are taken not to be coming."""

import doctest

from hypothesis import given
from hypothesis import strategies as st

from turnout.core import undelivered
from turnout.core.undelivered import Idle, UndeliveredWatch


def test_the_doctests():
    assert doctest.testmod(undelivered).failed == 0


def test_zero_turns_it_off():
    w: UndeliveredWatch[int] = UndeliveredWatch(after_ms=0)
    assert [w.observe({0: Idle(1, 9)}, now_ms=t) for t in (0, 10_000, 10**9)] == [[], [], []]


def test_a_partition_that_leaves_a_round_starts_over():
    """Missing from a round (busy worker, records in flight): the wait begins again."""
    w: UndeliveredWatch[int] = UndeliveredWatch(after_ms=5000)
    w.observe({0: Idle(1, 9)}, now_ms=0)
    w.observe({}, now_ms=3000)
    assert w.observe({0: Idle(1, 9)}, now_ms=5000) == []
    assert w.observe({0: Idle(1, 9)}, now_ms=10_000) == [undelivered.Reread(0, 1, 9, 5000)]


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 20), st.integers(0, 20), st.integers(0, 4000)),
        max_size=60,
    )
)
def test_a_reread_is_asked_only_after_a_whole_wait_at_one_point(rounds):
    """Never for a partition at its log's end; never before after_ms at the same point;
    never twice within after_ms."""
    after = 5000
    w: UndeliveredWatch[int] = UndeliveredWatch(after_ms=after)
    now = 0
    first_seen: dict[int, tuple[int, int]] = {}  # partition -> (point, since)
    last_ask: dict[int, int] = {}
    for p, committed, end, step in rounds:
        now += step
        for q in [q for q in first_seen if q != p]:
            del first_seen[q]  # only p is in this round
        if committed >= end:
            first_seen.pop(p, None)
        elif first_seen.get(p, (None,))[0] != committed:
            first_seen[p] = (committed, now)
            last_ask.pop(p, None)
        out = w.observe({p: Idle(committed, end)}, now_ms=now)
        for r in out:
            assert r.partition == p and r.offset == committed < end == r.end
            _, since = first_seen[p]
            assert now - since >= after and r.waited_ms == now - since
            assert now - last_ask.get(p, since) >= after
            last_ask[p] = now
