"""The offset tracker commits only past requests that are finished, and all before them."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.core.offsets import OffsetTracker


def test_nothing_begun_has_nothing_to_commit():
    """A fresh tracker has no committable offset."""
    assert OffsetTracker().committable is None


def test_committable_stops_at_the_first_unfinished_offset():
    """A finished request after an unfinished one does not move the commit point."""
    t = OffsetTracker()
    for o in (10, 11, 12):
        t.begin(o)
    t.finish(11)
    t.finish(12)
    assert t.committable == 10


def test_finishing_the_gap_moves_past_everything_finished():
    """Finishing the oldest request commits past every finished one after it."""
    t = OffsetTracker()
    for o in (10, 11, 12):
        t.begin(o)
    t.finish(12)
    t.finish(11)
    t.finish(10)
    assert t.committable == 13
    assert t.in_flight == 0


def test_a_gap_in_offsets_holds_the_commit():
    """An offset between two delivered ones was skipped, not absent: never commit past it.

    (A request topic has no gaps of its own. The price of this rule: a topic written
    in transactions, whose markers take offsets, would stop committing at a marker.)
    """
    t = OffsetTracker()
    t.begin(5)
    t.begin(9)
    t.finish(5)
    t.finish(9)
    assert t.committable == 6 and t.missing == 3


def test_a_repeated_offset_is_reported_not_tracked_twice():
    """faust may deliver an offset again; begin says so while it is in flight or done."""
    t = OffsetTracker()
    assert t.begin(7) and t.begin(8)
    assert t.begin(7) is False  # in flight
    t.finish(7)
    assert t.begin(7) is False  # finished, below the commit point
    assert t.committable == 8


def test_an_offset_may_begin_below_the_newest_one():
    """An offset arriving late but above the commit point still holds the commit back."""
    t = OffsetTracker()
    t.begin(10)
    t.begin(14)
    t.begin(12)
    t.begin(11)
    t.begin(13)
    t.finish(10)
    t.finish(14)
    t.finish(11)
    assert t.committable == 12
    t.finish(12)
    t.finish(13)
    assert t.committable == 15


def test_finishing_twice_is_refused():
    """Each begun offset finishes once."""
    t = OffsetTracker()
    t.begin(1)
    t.finish(1)
    with pytest.raises(ValueError, match="already finished"):
        t.finish(1)


def test_repr_shows_state():
    """The repr names the commit point and how much is in flight."""
    t = OffsetTracker()
    t.begin(3)
    t.begin(4)
    t.finish(4)
    assert repr(t) == "<OffsetTracker committable=3 in_flight=1 finished=1>"


@given(st.permutations(list(range(40))), st.integers(0, 40))
def test_committable_is_never_past_an_unfinished_offset(order, n_finished):
    """Whatever order requests finish in, everything below the commit point is finished."""
    t = OffsetTracker()
    for o in range(40):
        assert t.begin(100 + o)
    finished = set()
    for o in order[:n_finished]:
        t.finish(100 + o)
        finished.add(100 + o)
        c = t.committable
        assert all(x in finished for x in range(100, c))
        assert c not in finished


def test_an_offset_the_consumer_skipped_holds_the_commit():
    """Never commit past a request that was not delivered: it would be lost."""
    t = OffsetTracker()
    for o in (440, 441, 442, 444, 445):  # 443 never delivered
        assert t.begin(o)
    for o in (440, 441, 442, 444, 445):
        t.finish(o)
    assert t.missing == 1 and t.committable == 443 and t.in_flight == 0


def test_a_skipped_offset_delivered_late_is_served_and_releases_the_commit():
    t = OffsetTracker()
    for o in (10, 12):
        t.begin(o)
        t.finish(o)
    assert t.committable == 11
    assert t.begin(11) is True  # late, not a repeat
    assert t.begin(11) is False  # now a repeat
    t.finish(11)
    assert t.missing == 0 and t.committable == 13


def test_a_skipped_offset_cannot_be_finished_before_it_is_begun():
    t = OffsetTracker()
    t.begin(1)
    t.begin(3)
    with pytest.raises(ValueError):
        t.finish(2)
