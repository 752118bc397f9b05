"""The nearest-region rule: a pure ranking over endpoints, failures and synced state."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.core.nearest import (
    Down,
    Endpoint,
    backoff_ms,
    choose,
    mark_down,
    mark_up,
    parse_endpoints,
    rank,
    unfit_regions,
    with_rtts,
)
from turnout.core.region_state import BackendSummary, RegionState, view

EPS = (
    Endpoint("us", "h:1", 80.0),
    Endpoint("eu", "h:2", 5.0),
    Endpoint("ap", "h:3", 150.0),
)


@pytest.mark.parametrize(
    ("down", "unfit", "now", "expected"),
    [
        ({}, (), 0, ["eu", "us", "ap"]),
        ({"eu": Down(0, 1000, 1)}, (), 500, ["us", "ap", "eu"]),
        ({"eu": Down(0, 1000, 1)}, (), 1000, ["eu", "us", "ap"]),  # retry time reached
        ({"eu": Down(0, 1000, 1), "us": Down(0, 4000, 3)}, (), 500, ["ap", "eu", "us"]),
        # all down: soonest retry first, then nearest
        (
            {"eu": Down(0, 9000, 4), "us": Down(0, 2000, 2), "ap": Down(0, 2000, 2)},
            (),
            10,
            ["us", "ap", "eu"],
        ),
        ({}, ("eu",), 0, ["us", "ap", "eu"]),
        ({"us": Down(0, 1000, 1)}, ("eu",), 0, ["ap", "us", "eu"]),  # unfit after down
    ],
)
def test_rank_table(down, unfit, now, expected):
    """Usable regions nearest first; blocked ones after, soonest retry first."""
    assert [c.region for c in rank(EPS, now_ms=now, down=down, unfit=unfit)] == expected


def test_unknown_rtt_ranks_last_and_ties_keep_the_given_order():
    """A region with no RTT comes after every measured one; equal RTTs keep config order."""
    eps = (Endpoint("a", "x", None), Endpoint("b", "x", 10.0), Endpoint("c", "x", 10.0))
    assert [c.region for c in rank(eps, now_ms=0)] == ["b", "c", "a"]


def test_choice_says_why():
    """The first choice names its RTT and the regions it skipped."""
    c = choose(EPS, now_ms=0, down={"eu": Down(0, 1000, 1)})
    assert c.region == "us"
    assert c.reason == "us: nearest usable (80 ms); skipped eu"
    last = rank(EPS, now_ms=0, down={"eu": Down(0, 1000, 1)})[-1]
    assert last.reason.startswith("eu: last resort (down since 0, 1 failure(s)")


def test_a_region_comes_back_when_its_retry_time_passes_and_a_send_succeeds():
    """Down, skipped, retried after the backoff, first again once marked up."""
    down = mark_down({}, "eu", now_ms=1_000)
    assert choose(EPS, now_ms=1_500, down=down).region == "us"
    assert choose(EPS, now_ms=2_000, down=down).region == "eu"
    down = mark_down(down, "eu", now_ms=2_000)  # the retry failed: wait doubles
    assert down["eu"] == Down(since_ms=1_000, retry_at_ms=4_000, failures=2)
    assert choose(EPS, now_ms=3_999, down=down).region == "us"
    assert choose(EPS, now_ms=4_000, down=mark_up(down, "eu")).region == "eu"


def test_backoff_doubles_up_to_the_cap():
    """1 s, 2 s, 4 s ... never more than the cap."""
    assert [backoff_ms(n, base_ms=100, max_ms=500) for n in range(1, 6)] == [
        100,
        200,
        400,
        500,
        500,
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "no region given"),
        ("us=h:1,us=h:2", "named twice"),
        ("US=h:1", "region name 'US' is not valid"),
        ("us=h:1@-3", "must be >= 0"),
        ("us=h:1@fast", "could not convert"),
        ("us=", "must be region=host:port"),
    ],
)
def test_bad_specs_are_refused_with_the_reason(spec, message):
    """Every malformed spec names what was expected."""
    with pytest.raises(ValueError, match=message):
        parse_endpoints(spec)


def test_measured_rtts_replace_configured_ones():
    """A measure wins; a region without one keeps its configured RTT."""
    eps = with_rtts(EPS, {"ap": 1.0})
    assert [c.region for c in rank(eps, now_ms=0)] == ["ap", "eu", "us"]
    assert eps[0].rtt_ms == 80.0


def test_fresh_state_without_capacity_is_unfit_but_stale_state_is_not():
    """Only a fresh summary can rule a region out; unknown is not proof of death."""
    dead = RegionState(
        region="eu",
        published_at_ms=10_000,
        backends=(BackendSummary(id="b", tier="local", state="unhealthy", capacity=4),),
    )
    alive = RegionState(
        region="us",
        published_at_ms=10_000,
        backends=(BackendSummary(id="b", tier="local", state="healthy", capacity=4),),
    )
    old = RegionState(region="ap", published_at_ms=0)
    views = view({"eu": dead, "us": alive, "ap": old}, now_ms=12_000, stale_after_ms=5_000)
    assert unfit_regions(views) == {"eu"}


regions = st.sampled_from(["us", "eu", "ap", "sa", "af"])


@given(
    st.lists(
        st.tuples(regions, st.one_of(st.none(), st.floats(0, 500))),
        min_size=1,
        max_size=5,
        unique_by=lambda t: t[0],
    ),
    st.dictionaries(regions, st.tuples(st.integers(0, 10_000), st.integers(1, 5))),
    st.integers(0, 10_000),
)
def test_rank_is_a_permutation_and_never_prefers_a_blocked_region(eps_raw, marks, now):
    """Every endpoint appears once; a usable region is never ranked after a blocked one."""
    eps = tuple(Endpoint(r, "h:1", rtt) for r, rtt in eps_raw)
    down = {r: Down(0, at, n) for r, (at, n) in marks.items()}
    ranked = [c.region for c in rank(eps, now_ms=now, down=down)]
    assert sorted(ranked) == sorted(e.region for e in eps)
    blocked = [r in down and now < down[r].retry_at_ms for r in ranked]
    assert blocked == sorted(blocked)
    assert rank(eps, now_ms=now, down=down) == rank(eps, now_ms=now, down=down)


def test_doctests():
    """The module's examples are its specification and must stay true."""
    import doctest

    from turnout.core import nearest
    from turnout.testing import delay_proxy

    assert doctest.testmod(nearest).failed == 0
    assert doctest.testmod(delay_proxy).failed == 0
