"""RegionSync's bookkeeping without Kafka: what it keeps from records and what it logs."""

from __future__ import annotations

import re

import pytest
from structlog.testing import capture_logs

from turnout.core.region_state import RegionState
from turnout.worker.region_sync import STATE_PATTERN, RegionSync


class Clock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def sync_at(clock: Clock) -> RegionSync:
    return RegionSync(
        region="eu",
        bootstrap="127.0.0.1:1",  # never contacted: start() is not called
        summarize=lambda now_ms: RegionState(region="eu", published_at_ms=now_ms),
        publish_interval_s=1.0,
        stale_after_s=6.0,
        clock=clock,
    )


def wire(region: str, at_s: float) -> bytes:
    return RegionState(region=region, published_at_ms=int(at_s * 1000)).to_wire()


@pytest.mark.parametrize(
    "topic, matches",
    [
        ("turnout.regions", True),
        ("us.turnout.regions", True),
        ("eu-west.turnout.regions", True),
        ("us.eu.turnout.regions", False),
        ("turnout.regions.old", False),
        ("turnout-regions", False),
    ],
)
def test_the_subscription_pattern_takes_local_and_mirrored_state_topics(topic, matches):
    """The pattern subscribes to our topic and MM2's one-hop copies, nothing else."""
    assert bool(re.match(STATE_PATTERN, topic)) is matches


def test_records_from_local_and_mirrored_topics_make_every_region_known():
    """Our own summary and the mirrored ones are all held, and fresh while young."""
    clock = Clock(1000.0)
    sync = sync_at(clock)
    sync.receive("eu", "turnout.regions", wire("eu", 999.0))
    sync.receive("us", "us.turnout.regions", wire("us", 998.0))
    sync.receive("ap", "ap.turnout.regions", wire("ap", 997.0))
    views = sync.view()
    assert {r: v.status for r, v in views.items()} == {"ap": "fresh", "eu": "fresh", "us": "fresh"}
    assert views["ap"].age_ms == 3000


def test_a_malformed_record_is_logged_and_ignored():
    """Bad bytes on the topic never raise out of the reader; they are logged."""
    sync = sync_at(Clock(1000.0))
    with capture_logs() as logs:
        sync.receive("us", "us.turnout.regions", b"{oops")
    assert [e["event"] for e in logs] == ["region_state_invalid"]
    assert "us" not in sync.view()


def test_a_region_speaking_for_another_is_ignored_and_logged():
    """A summary of ap arriving on us's mirrored topic is refused."""
    sync = sync_at(Clock(1000.0))
    with capture_logs() as logs:
        sync.receive("us", "us.turnout.regions", wire("ap", 999.0))
    assert [(e["event"], e["region"], e["expected"]) for e in logs] == [
        ("region_state_ignored", "ap", "us")
    ]
    assert "ap" not in sync.view()


def test_a_late_older_copy_does_not_replace_a_newer_summary():
    """MM2 redelivers after a restart: an older summary arriving later is not kept."""
    sync = sync_at(Clock(1000.0))
    sync.receive("us", "us.turnout.regions", wire("us", 999.0))
    sync.receive("us", "us.turnout.regions", wire("us", 990.0))
    assert sync.view()["us"].age_ms == 1000


def test_a_tombstone_is_ignored():
    """A null value (a retired region) is skipped; the held state ages out by itself."""
    sync = sync_at(Clock(1000.0))
    sync.receive("us", "us.turnout.regions", wire("us", 999.0))
    sync.receive("us", "us.turnout.regions", None)
    assert sync.view()["us"].trusted


def test_going_stale_and_fresh_again_is_logged_once_each():
    """One region_state_stale when a region falls silent past the bound, one fresh on return."""
    clock = Clock(1000.0)
    sync = sync_at(clock)
    sync.receive("us", "us.turnout.regions", wire("us", 1000.0))
    with capture_logs() as logs:
        sync.log_transitions()
        clock.now_s = 1003.0
        sync.log_transitions()
        clock.now_s = 1006.5
        sync.log_transitions()
        sync.log_transitions()
        sync.receive("us", "us.turnout.regions", wire("us", 1006.4))
        sync.log_transitions()
    events = [(e["event"], e["region"]) for e in logs]
    assert events == [
        ("region_state_fresh", "us"),
        ("region_state_stale", "us"),
        ("region_state_fresh", "us"),
    ]
    assert "trusted=['us']" in repr(sync)


def test_our_own_region_is_unknown_until_its_summary_comes_back():
    """Before our first summary is read back from Kafka, our region is listed, not trusted."""
    views = sync_at(Clock(1000.0)).view()
    assert list(views) == ["eu"] and not views["eu"].trusted
