"""A replay's window: times and offsets parsed, and turned into per-partition ranges."""

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.ops.replay_core import (
    Window,
    parse_position_list,
    parse_positions,
    parse_rate,
    parse_time,
    plan_ranges,
)

NOW = 1_700_000_000_000


def test_an_iso_time_with_a_zone_is_read_exactly():
    """``Z`` and offsets are honoured."""
    assert parse_time("2023-11-14T22:13:20Z", NOW) == NOW
    assert parse_time("2023-11-14T23:13:20+01:00", NOW) == NOW


def test_an_iso_time_without_a_zone_is_local_time():
    """A naive time means the machine's local time, as a person typing it expects."""
    local = datetime.fromtimestamp(NOW / 1000).replace(microsecond=0)
    assert parse_time(local.isoformat(), NOW) == NOW


@pytest.mark.parametrize(
    ("text", "ago_ms"),
    [("-15m", 900_000), ("-2h", 7_200_000), ("-30s", 30_000), ("-1d", 86_400_000)],
)
def test_relative_times_count_back_from_now(text, ago_ms):
    """``15m``, ``-15m`` and ``15m ago`` all mean fifteen minutes before now."""
    assert parse_time(text, NOW) == NOW - ago_ms


def test_a_bad_time_names_what_was_expected():
    """The error shows both accepted forms and the text given."""
    with pytest.raises(ValueError, match=r"ISO 8601.*15m.*'yesterday'"):
        parse_time("yesterday", NOW)


def test_positions_parse_as_partition_offset_pairs():
    """``P:O`` pairs, comma-separated; a bare offset is partition 0."""
    assert parse_positions("0:10, 3:7") == {0: 10, 3: 7}
    assert parse_position_list("5,0:9,1:2") == [(0, 5), (0, 9), (1, 2)]


@pytest.mark.parametrize("text", ["a:1", "1:", "", "0:-1", "0:1,0:2"])
def test_bad_positions_are_refused(text):
    """Non-numbers, negatives, nothing, and a partition given twice are errors."""
    with pytest.raises(ValueError):
        parse_positions(text)


@pytest.mark.parametrize(("text", "rate"), [("50", 50.0), ("2.5/s", 2.5)])
def test_rates_accept_a_per_second_suffix(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["0", "-1", "fast"])
def test_rates_must_be_positive_numbers(text):
    with pytest.raises(ValueError, match="--rate"):
        parse_rate(text)


def test_time_and_offset_windows_cannot_be_mixed():
    """A window is one or the other."""
    with pytest.raises(ValueError, match="not both"):
        Window(since_ms=1, from_offsets={0: 1}).validate()


def test_since_must_come_before_until():
    with pytest.raises(ValueError, match="before"):
        Window(since_ms=5, until_ms=5).validate()


def test_offsets_must_not_run_backwards():
    with pytest.raises(ValueError, match="partition 2"):
        Window(from_offsets={2: 9}, to_offsets={2: 3}).validate()


BEGIN = {0: 0, 1: 10, 2: 0}
END = {0: 100, 1: 50, 2: 0}


def test_no_window_reads_every_partition_to_its_end_at_start():
    """Without bounds everything present when the run starts is read; empty partitions are not."""
    assert plan_ranges(Window(), BEGIN, END, {}, {}) == {0: (0, 100), 1: (10, 50)}


def test_a_time_window_uses_offsets_for_times():
    """since gives the first offset at or after it, until the first offset not included."""
    got = plan_ranges(
        Window(since_ms=1, until_ms=2), BEGIN, END, {0: 40, 1: 20, 2: None}, {0: 60, 1: None}
    )
    assert got == {0: (40, 60), 1: (20, 50)}


def test_a_since_with_nothing_after_it_reads_nothing():
    """offsets_for_times answers None when no record is that late."""
    assert plan_ranges(Window(since_ms=1), BEGIN, END, {0: None, 1: None}, {}) == {}


def test_an_offset_window_reads_only_named_partitions_inclusively():
    """--from-offset and --to-offset are both inclusive; unnamed partitions are left out."""
    w = Window(from_offsets={0: 5}, to_offsets={0: 9, 1: 12})
    assert plan_ranges(w, BEGIN, END, {}, {}) == {0: (5, 10), 1: (10, 13)}


def test_offsets_outside_the_log_are_clamped():
    """Offsets before the beginning or past the end are cut to what exists."""
    w = Window(from_offsets={1: 0}, to_offsets={1: 10_000})
    assert plan_ranges(w, BEGIN, END, {}, {}) == {1: (10, 50)}


@given(
    begin=st.integers(0, 50),
    length=st.integers(0, 50),
    since=st.none() | st.integers(0, 120),
    until=st.none() | st.integers(0, 120),
)
def test_ranges_never_leave_the_log_and_are_never_empty(begin, length, since, until):
    """Whatever offsets_for_times says, a range lies within [beginning, end) and is non-empty."""
    end = begin + length
    w = Window(since_ms=1, until_ms=2)
    got = plan_ranges(w, {0: begin}, {0: end}, {0: since}, {0: until})
    for start, stop in got.values():
        assert begin <= start < stop <= end
