"""Routing state synced between regions: the wire format, freshness, and merging."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.config import Backend
from turnout.core import region_state
from turnout.core.region_state import (
    BackendSummary,
    InvalidRegionState,
    RegionState,
    accept,
    check_region,
    describe,
    source_region,
    status_of,
    summarize,
    trusted,
    view,
)
from turnout.settings import Settings

BOUND = 15_000


def state(region: str = "us", at: int = 100_000, **kw) -> RegionState:
    return RegionState(region=region, published_at_ms=at, **kw)


def test_doctests():
    """The module's examples hold."""
    assert doctest.testmod(region_state).failed == 0


def test_wire_round_trip_keeps_every_field():
    """to_wire then from_wire gives back an equal summary, backends included."""
    s = state(
        router="127.0.0.1:63180",
        worker="w1",
        backends=(
            BackendSummary(id="a", tier="local", state="healthy", capacity=8, latency_ms=12.5),
            BackendSummary(id="b", tier="cloud", state="unhealthy", capacity=4),
        ),
        in_flight=3,
        lag=7,
        latency_ms=12.5,
    )
    assert RegionState.from_wire(s.to_wire()) == s


def test_from_wire_accepts_unknown_fields_from_a_newer_publisher():
    """A field this version does not know is ignored, so old and new workers mix."""
    raw = b'{"region":"eu","published_at_ms":5,"shiny_new_field":1}'
    assert RegionState.from_wire(raw) == state("eu", 5)


@pytest.mark.parametrize(
    "raw, says",
    [
        (b"not json", "not valid JSON"),
        (b'{"region":"eu"}', "published_at_ms"),
        (b'{"region":"EU!","published_at_ms":1}', "region"),
        (b'{"region":"eu","published_at_ms":-1}', "published_at_ms"),
        (b'{"region":"eu","published_at_ms":1,"in_flight":"many"}', "in_flight"),
    ],
)
def test_from_wire_rejects_what_is_not_a_region_state(raw, says):
    """Malformed records raise InvalidRegionState naming the problem."""
    with pytest.raises(InvalidRegionState, match=says):
        RegionState.from_wire(raw)


def test_capacity_counts_only_serving_backends():
    """Healthy and degraded backends count towards capacity; unhealthy and probation do not."""
    s = state(
        backends=(
            BackendSummary(id="a", tier="local", state="healthy", capacity=8),
            BackendSummary(id="b", tier="local", state="degraded", capacity=4),
            BackendSummary(id="c", tier="cloud", state="unhealthy", capacity=100),
            BackendSummary(id="d", tier="cloud", state="probation", capacity=100),
        ),
        in_flight=5,
    )
    assert (s.capacity, s.headroom) == (12, 7)


def test_headroom_is_never_negative():
    """A region over its capacity has no headroom, not a negative one."""
    s = state(
        backends=(BackendSummary(id="a", tier="local", state="healthy", capacity=2),),
        in_flight=9,
    )
    assert s.headroom == 0


@pytest.mark.parametrize(
    "now, expected",
    [
        (100_000, "fresh"),
        (100_000 + BOUND, "fresh"),
        (100_000 + BOUND + 1, "stale"),
        (100_000 - 2_000, "fresh"),  # within the allowed clock skew
        (100_000 - 2_001, "future"),
    ],
)
def test_status_follows_the_staleness_bound_and_skew(now, expected):
    """Older than the bound is stale; stamped further ahead than the skew is future."""
    assert status_of(state(at=100_000), now_ms=now, stale_after_ms=BOUND) == expected


def test_stale_state_is_not_offered_at_all():
    """A stale region's view carries no state, so nothing can route on it by mistake."""
    views = view(
        {"us": state("us", 100_000), "eu": state("eu", 80_000)},
        now_ms=100_000,
        stale_after_ms=BOUND,
    )
    assert views["eu"].status == "stale"
    assert views["eu"].state is None and not views["eu"].trusted
    assert views["eu"].age_ms == 20_000
    assert list(trusted(views)) == ["us"]


def test_future_state_is_not_trusted():
    """A summary stamped well in the future (a bad clock) counts as unknown."""
    views = view({"ap": state("ap", 200_000)}, now_ms=100_000, stale_after_ms=BOUND)
    assert views["ap"].status == "future" and views["ap"].state is None


def test_a_named_region_never_heard_of_is_unknown():
    """Our own region before its first summary arrives is listed, stale, with age -1."""
    views = view({}, now_ms=1, stale_after_ms=BOUND, regions=["us"])
    assert views["us"].status == "stale" and views["us"].age_ms == -1
    assert trusted(views) == {}


@given(
    published=st.integers(min_value=0, max_value=10**12),
    now=st.integers(min_value=0, max_value=10**12),
    bound=st.integers(min_value=0, max_value=10**7),
)
def test_trusted_state_is_never_older_than_the_bound(published, now, bound):
    """Whatever the clocks, a state is offered only when its age is within the bound."""
    v = view({"us": state("us", published)}, now_ms=now, stale_after_ms=bound)["us"]
    if v.trusted:
        assert -2000 <= now - published <= bound
    else:
        assert now - published > bound or now - published < -2000


def test_accept_keeps_the_newest_summary_per_region():
    """A newer summary replaces the held one; an older or equal one is ignored."""
    latest = accept({}, state("eu", 10), via="eu")
    assert latest == {"eu": state("eu", 10)}
    assert accept(latest, state("eu", 9), via="eu") is None
    assert accept(latest, state("eu", 10), via="eu") is None
    assert accept(latest, state("eu", 11), via="eu") == {"eu": state("eu", 11)}


def test_accept_ignores_a_region_speaking_for_another():
    """A summary for eu read from us's topic is refused: a region only speaks for itself."""
    assert accept({}, state("eu", 10), via="us") is None


@pytest.mark.parametrize(
    "topic, expected",
    [
        ("turnout.regions", "eu"),
        ("us.turnout.regions", "us"),
        ("ap.turnout.regions", "ap"),
        ("us.eu.turnout.regions", None),
        ("turnout.requests", None),
        ("US.turnout.regions", None),
    ],
)
def test_source_region_of_local_and_mirrored_topics(topic, expected):
    """The local topic is our region; MirrorMaker 2's prefix names the source region."""
    assert source_region(topic, "eu") == expected


@pytest.mark.parametrize("name", ["us", "eu-west", "ap2"])
def test_check_region_accepts_plain_names(name):
    """Short lower-case names are valid regions."""
    assert check_region(name) == name


@pytest.mark.parametrize("name", ["", "US", "eu.west", "1us", "x" * 33])
def test_check_region_rejects_names_that_break_topic_prefixes(name):
    """A dot or upper case would make mirrored topic names ambiguous: refused."""
    with pytest.raises(ValueError, match="region name"):
        check_region(name)


def test_summarize_reads_backends_and_the_metrics_snapshot():
    """The summary takes tier and capacity from config, state and latency from metrics."""
    backends = [
        Backend(id="gpu", protocol="openai", base_url="http://x", models=["m"], max_concurrency=8),
        Backend(
            id="cloud", protocol="openai", base_url="http://y", models=["m"], tier="cloud",
            max_concurrency=50,
        ),
    ]  # fmt: skip
    snapshot = {
        "in_flight": 3,
        "lag": {"0": 2, "1": 5},
        "lag_total": 7,
        "backends": {
            "gpu": {"state": "healthy", "latency_ms": 40.0},
            "cloud": {"state": "unhealthy", "latency_ms": 900.0},
        },
    }
    s = summarize(
        region="us", now_ms=42, router="r:1", worker="w", backends=backends, snapshot=snapshot
    )
    assert s.published_at_ms == 42 and s.router == "r:1"
    assert [(b.id, b.tier, b.state, b.capacity) for b in s.backends] == [
        ("gpu", "local", "healthy", 8),
        ("cloud", "cloud", "unhealthy", 50),
    ]
    assert (s.in_flight, s.lag, s.capacity) == (3, 7, 8)
    assert s.latency_ms == 40.0  # the unhealthy backend's latency does not count


def test_summarize_reports_unsampled_lag_as_none():
    """With no lag sampler the queue depth is unknown (None), not zero."""
    s = summarize(region="us", now_ms=1, router="", worker="", backends=[], snapshot={"lag": {}})
    assert s.lag is None


def test_describe_shows_numbers_only_for_fresh_regions():
    """The status document lists every region, with numbers only where they are trusted."""
    views = view(
        {"us": state("us", 100_000, in_flight=2), "eu": state("eu", 1)},
        now_ms=100_000,
        stale_after_ms=BOUND,
    )
    doc = describe(views)
    assert doc["eu"] == {"status": "stale", "age_ms": 99_999}
    assert doc["us"]["status"] == "fresh" and doc["us"]["in_flight"] == 2


def test_settings_refuse_a_publish_interval_beyond_the_staleness_bound():
    """A region publishing less often than the bound would flap stale: refused at start."""
    with pytest.raises(ValueError, match="TURNOUT_REGION_PUBLISH_INTERVAL_S"):
        Settings.from_env(
            {}, region="us", region_publish_interval_s=20.0, region_stale_after_s=15.0
        )


def test_settings_refuse_a_bad_region_name():
    """TURNOUT_REGION must be usable as a topic prefix."""
    with pytest.raises(ValueError, match="region name"):
        Settings.from_env({"TURNOUT_REGION": "Eu.West"})


def test_settings_single_region_by_default():
    """With TURNOUT_REGION unset the worker is single-region."""
    assert Settings.from_env({}).region == ""
