"""Whole units of a deployment-wide cap, shared by partition ownership."""

from hypothesis import given
from hypothesis import strategies as st

from turnout.core.capshare import fraction, units


def test_the_remainder_units_go_to_the_lowest_numbered_partitions():
    """A cap of 1 over 4 partitions belongs to partition 0's owner alone."""
    assert [units(1, [p], 4) for p in range(4)] == [1, 0, 0, 0]
    assert [units(6, [p], 4) for p in range(4)] == [2, 2, 1, 1]


def test_a_cap_of_one_with_three_workers_gives_one_unit_in_all():
    """Three workers over eight partitions, cap 1: one worker may call, the others wait."""
    owners = [{0, 3, 6}, {1, 4, 7}, {2, 5}]
    assert [units(1, o, 8) for o in owners] == [1, 0, 0]


def test_a_worker_owning_every_partition_has_the_whole_cap():
    """One worker alone may use the whole cap."""
    assert units(7, range(8), 8) == 7


def test_partitions_outside_the_topic_count_for_nothing():
    """An assignment naming a partition the topic does not have adds no unit."""
    assert units(4, [9, -1], 4) == 0
    assert fraction([9, 0], 4) == 0.25


@st.composite
def assignments(draw):
    """A partition count, a cap, and the partitions split over 1..6 workers (some idle)."""
    total = draw(st.integers(1, 32))
    cap = draw(st.integers(0, 100))
    workers = draw(st.integers(1, 6))
    owner = draw(st.lists(st.integers(0, workers - 1), min_size=total, max_size=total))
    split = [{p for p in range(total) if owner[p] == w} for w in range(workers)]
    return cap, total, split


@given(assignments())
def test_the_workers_together_never_exceed_a_cap_and_use_all_of_it(case):
    """Over any assignment the shares add up to the cap: never more, and >= 1 when cap >= 1."""
    cap, total, split = case
    shares = [units(cap, owned, total) for owned in split]
    assert sum(shares) <= cap
    assert sum(shares) == cap  # so at least one unit somewhere whenever cap >= 1
    assert all(s >= 0 for s in shares)


@given(assignments())
def test_owning_more_partitions_never_lowers_a_share(case):
    """A worker that gains a partition keeps every unit it had."""
    cap, total, split = case
    owned = split[0]
    for p in range(total):
        assert units(cap, owned | {p}, total) >= units(cap, owned, total)


def test_the_module_examples_hold():
    """The docstring's examples are the specification: they must stay true."""
    import doctest

    from turnout.core import capshare

    assert doctest.testmod(capshare).failed == 0
