"""The stall watch: a commit point stuck while later records are done is reported once."""

from turnout.core.stall import Head, Resumed, Stalled, StallWatch


def head(offset=10, done=3, busy=None, partition=0, cause="publishing_reply"):
    return Head(partition, offset, done, cause, "detail", busy)


def test_a_point_that_keeps_moving_is_never_stalled():
    """Commits advancing every check are fine however long it runs."""
    w = StallWatch(stall_ms=1000)
    assert all(w.observe([head(offset=i)], now_ms=i * 5000) == [] for i in range(10))


def test_nothing_done_behind_the_point_is_not_a_stall():
    """A quiet partition (nothing finished after the point) is idle, not stuck."""
    w = StallWatch(stall_ms=1000)
    w.observe([head(done=0)], now_ms=0)
    assert w.observe([head(done=0)], now_ms=60_000) == []


def test_a_stall_is_reported_once_and_ends_when_the_point_moves():
    """One Stalled when the time is up, one Resumed when the point moves."""
    w = StallWatch(stall_ms=1000)
    w.observe([head()], now_ms=0)
    (ev,) = w.observe([head()], now_ms=1500)
    assert isinstance(ev, Stalled) and (ev.offset, ev.stalled_ms, ev.done_behind) == (10, 1500, 3)
    assert w.observe([head()], now_ms=2000) == []
    assert w.stalled_for_ms(0, 2500) == 2500
    assert w.observe([head(offset=14, done=0)], now_ms=3000) == [Resumed(0, 14, 3000)]
    assert w.stalled == {}


def test_a_record_before_its_deadline_is_busy_then_stalled_after():
    """A head still within its deadline is working; past it, the stall is reported."""
    w = StallWatch(stall_ms=1000)
    w.observe([head(busy=10_000)], now_ms=0)
    assert w.observe([head(busy=10_000)], now_ms=9_999) == []
    (ev,) = w.observe([head(busy=10_000)], now_ms=10_000)
    assert ev.stalled_ms == 10_000


def test_a_revoked_partition_ends_its_stall():
    """A stalled partition that leaves the worker is reported resumed with no offset."""
    w = StallWatch(stall_ms=1000)
    w.observe([head(), head(partition=1)], now_ms=0)
    assert len(w.observe([head(), head(partition=1)], now_ms=1000)) == 2
    assert w.observe([head(partition=1)], now_ms=1100) == [Resumed(0, None, 1100)]
    assert set(w.stalled) == {1}


def test_zero_turns_the_watch_off():
    """stall_ms=0 (TURNOUT_COMMIT_STALL_S=0) never reports."""
    w = StallWatch(stall_ms=0)
    w.observe([head()], now_ms=0)
    assert w.observe([head()], now_ms=10**9) == []
