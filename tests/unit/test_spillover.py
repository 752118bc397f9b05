"""Cross-region spillover's pure decisions: when to leave, which region, the final reply."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.types import Reply, Request, Timings
from turnout.core.region_state import BackendSummary, RegionState, trusted, view
from turnout.core.spillover import (
    choose_region,
    final_reply,
    forward_pattern,
    forward_replies_pattern,
    forwarded_request,
    home_of,
    local_outlook,
    no_answer,
    spare,
    spillable,
)


def region(name, *, capacity=4, in_flight=0, lag=None, state="healthy", tier="local", at=0):
    return RegionState(
        region=name,
        published_at_ms=at,
        in_flight=in_flight,
        lag=lag,
        backends=(BackendSummary(id=f"{name}-b", tier=tier, state=state, capacity=capacity),),
    )


@pytest.mark.parametrize(
    ("targets", "down", "tried", "clear_ms", "remaining_ms", "expected"),
    [
        (["a"], ["a"], [], 100, 5000, "every local target is down or already tried (a)"),
        (["a", "b"], ["a"], ["b"], 100, 5000, "every local target is down or already tried"),
        (["a", "b"], ["a"], [], 100, 5000, None),  # b is only full, and drains in time
        (["a"], [], [], None, 5000, "every local target is full and none completed"),
        (["a"], [], [], 5000, 5000, "the local backlog clears in 5000 ms, after the deadline"),
        (["a"], [], [], 4999, 5000, None),
        ([], [], [], None, 5000, "the route has no local target"),
    ],
)
def test_local_outlook_says_why_local_targets_cannot_serve_in_time(
    targets, down, tried, clear_ms, remaining_ms, expected
):
    """Spill only when every target is down or tried, or the backlog outlasts the deadline."""
    why = local_outlook(
        targets=targets, down=down, tried=tried, clear_ms=clear_ms, remaining_ms=remaining_ms
    )
    if expected is None:
        assert why is None
    else:
        assert why is not None and why.startswith(expected)


FRESH = {
    "us": region("us"),
    "eu": region("eu", capacity=4, in_flight=4),  # full
    "ap": region("ap", capacity=8, in_flight=2),
}


@pytest.mark.parametrize(
    ("candidates", "known", "tiers", "expected"),
    [
        ([("ap", None)], FRESH, None, "ap"),
        ([("eu", None), ("ap", None)], FRESH, None, "ap"),  # eu is full: the next one
        ([("ap", None), ("eu", None)], {**FRESH, "eu": region("eu")}, None, "ap"),  # order
        ([("eu", None), ("ap", None)], {**FRESH, "eu": region("eu")}, None, "eu"),
        ([("ap", None)], {"us": FRESH["us"]}, None, None),  # ap unknown (stale): never
        ([("us", None)], FRESH, None, None),  # the home region is not a spill target
        ([("ap", None)], {"ap": region("ap", lag=8, in_flight=2, capacity=8)}, None, None),
        ([("ap", None)], {"ap": region("ap", lag=6, in_flight=6, capacity=8)}, None, "ap"),
        ([("ap", None)], {"ap": region("ap", state="unhealthy")}, None, None),
        ([("ap", None)], {"ap": region("ap", state="degraded")}, None, "ap"),
        ([("ap", None)], {"ap": region("ap", tier="cloud")}, frozenset({"local"}), None),
        ([("ap", None)], {"ap": region("ap", tier="cloud")}, frozenset({"cloud"}), "ap"),
        ([], FRESH, None, None),
    ],
)
def test_choose_region_takes_the_first_fresh_region_with_spare_capacity(
    candidates, known, tiers, expected
):
    """Route order is the preference; unknown, full, backlogged or wrong-tier regions are
    passed over."""
    choice = choose_region(candidates, known, home="us", tiers=tiers)
    assert (choice.region if choice else None) == expected


def test_the_choice_says_which_regions_were_passed_over_and_why():
    """The reason names the spare capacity and each skipped region."""
    choice = choose_region([("eu", None), ("sa", None), ("ap", "big")], FRESH, home="us")
    assert choice is not None and choice.model == "big" and choice.spare == 6
    assert choice.reason == (
        "ap has 6 spare call(s); eu has no spare capacity, sa unknown (stale or never heard)"
    )


names = st.sampled_from(["us", "eu", "ap", "sa", "af"])
states = st.builds(
    lambda name, cap, inflight, lag, state, age: (
        region(name, capacity=cap, in_flight=inflight, lag=lag, state=state, at=100_000 - age)
    ),
    names,
    st.integers(0, 8),
    st.integers(0, 10),
    st.none() | st.integers(0, 10),
    st.sampled_from(["healthy", "degraded", "unhealthy", "probation"]),
    st.integers(-5000, 40_000),
)


@settings(max_examples=300, deadline=None)
@given(
    latest=st.dictionaries(names, states),
    candidates=st.lists(st.tuples(names, st.none()), max_size=6),
    home=names,
)
def test_a_chosen_region_is_always_named_fresh_not_home_and_has_room(latest, candidates, home):
    """Whatever the synced state: never a stale, future, unnamed, home or full region."""
    latest = {k: v for k, v in latest.items() if v.region == k}
    stale_after_ms = 15_000
    views = view(latest, now_ms=100_000, stale_after_ms=stale_after_ms)
    choice = choose_region(candidates, trusted(views), home=home)
    if choice is None:
        fresh = trusted(views)
        assert all(
            r == home or r not in fresh or spare(fresh[r]) == 0 for r, _ in candidates
        ), "a fresh named region with room was not chosen"
        return
    assert choice.region != home
    assert choice.region in [r for r, _ in candidates]
    assert views[choice.region].status == "fresh"
    assert 100_000 - latest[choice.region].published_at_ms <= stale_after_ms
    assert spare(latest[choice.region]) == choice.spare > 0


def request(**kw):
    return Request(id="r1", client_id="c", kind="chat", model="m", body={"messages": []}, **kw)


def test_a_forwarded_request_keeps_its_id_and_deadline_and_replies_to_its_home():
    """Same id and client; absolute deadline; the home's forward-replies topic."""
    fwd = forwarded_request(request(timeout_ms=30_000), home="us", model=None, deadline_ms=123)
    assert (fwd.id, fwd.client_id, fwd.model) == ("r1", "c", "m")
    assert fwd.deadline == 123 and fwd.timeout_ms is None
    assert fwd.reply_to == "turnout.forward-replies.us" and home_of(fwd.reply_to) == "us"
    assert forwarded_request(request(), home="us", model="big", deadline_ms=1).model == "big"


def test_forwarded_requests_and_streams_are_not_spilled():
    """One hop only, and streams stay home."""
    assert spillable(request(), "turnout.replies.c")
    assert not spillable(request(), "turnout.forward-replies.eu")
    assert not spillable(request(stream=True), "turnout.replies.c")


def test_topic_patterns_match_only_mirrored_copies_for_this_region():
    """The bridge reads <home>.turnout.forward.<me>; the relay <server>...forward-replies.<me>."""
    import re

    assert re.match(forward_pattern("eu"), "us.turnout.forward.eu")
    assert not re.match(forward_pattern("eu"), "turnout.forward.eu")
    assert not re.match(forward_pattern("eu"), "us.turnout.forward.ap")
    assert re.match(forward_replies_pattern("us"), "eu.turnout.forward-replies.us")
    assert not re.match(forward_replies_pattern("us"), "eu.turnout.forward-replies.usx")


def test_the_final_reply_is_the_remote_answer_marked_degraded_with_its_region():
    """Body and backend from the serving region; route, timings, generation from home."""
    remote = Reply(id="r1", status="ok", client_id="c", body={"x": 1}, backend="eu-b",
                   route="model:m", reason="first", attempts=1, generation="eu-gen")
    t = Timings(queue_ms=5, backend_ms=7, total_ms=90)
    final = final_reply(remote, region="eu", why="every local target is down", route="chat",
                        local_attempts=0, timings=t, generation="us-gen")
    assert final.body == {"x": 1} and final.backend == "eu-b" and final.status == "ok"
    assert final.degraded and final.served_region == "eu"
    assert final.route == "chat" and final.timings == t and final.generation == "us-gen"
    assert final.reason == "served by region eu: every local target is down; there: first"
    assert Reply.from_wire(final.to_wire()) == final


def test_no_answer_is_a_retryable_deadline_error_naming_the_region():
    """A forward whose answer never came back ends in an explicit, retryable error."""
    t = Timings(queue_ms=0, backend_ms=0, total_ms=1)
    r = no_answer("r1", "c", region="ap", route="chat", local_attempts=1, timings=t,
                  retry_after_ms=3000)
    assert r.status == "error" and r.error.code == "deadline_exceeded" and r.error.retryable
    assert "region ap" in r.error.message and r.served_region == "ap" and r.degraded
