"""Cross-region spillover, decided in pure code: when to leave, where to go, what to say.

A route may name other regions as targets (``targets: [{backend: us-local, ...},
{region: eu}]``). When no local target can serve the request before its deadline, the
home worker forwards it to a region that has capacity according to the synced state
(``turnout.core.region_state``), and waits for that region's answer (``turnout.worker.forwarding``
does the I/O). This module holds the three decisions, with no clock, Kafka or logging:

- ``local_outlook``: can the local targets still serve in time? None when waiting
  locally is reasonable, else why not (every target down or tried; the backlog clears
  after the deadline; nothing drains at all).
- ``choose_region``: the first named region, in the route's order (the operator lists
  the nearest first), whose *fresh* state shows spare capacity for this request's
  tiers. Stale or unknown state is never trusted: such a region is never chosen.
- ``final_reply``: the home region's final reply built from the serving region's
  reply, marked ``degraded`` with ``served_region`` (as a fallback route is degraded).

A forwarded request is a plain ``Request`` whose ``reply_to`` is
``turnout.forward-replies.<home>``: that is how the serving region knows it was
forwarded (it never forwards it again: one hop) and where its reply goes.

    >>> forward_topic("eu"), forward_replies_topic("us")
    ('turnout.forward.eu', 'turnout.forward-replies.us')
    >>> home_of("turnout.forward-replies.us"), home_of("turnout.replies.c1") is None
    ('us', True)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable, Mapping

import msgspec

from schemas.types import ErrorInfo, Reply, Request, Timings
from turnout.core.region_state import REGION_NAME, RegionState

FORWARD_PREFIX = "turnout.forward."
FORWARD_REPLIES_PREFIX = "turnout.forward-replies."
_NAME = REGION_NAME.strip("^$")


def forward_pattern(region: str) -> str:
    """Mirrored forward topics ``region``'s bridge reads: ``<home>.turnout.forward.<region>``.

    >>> import re; bool(re.match(forward_pattern("eu"), "us.turnout.forward.eu"))
    True
    """
    return "^" + _NAME + r"\." + re.escape(forward_topic(region)) + "$"


def forward_replies_pattern(home: str) -> str:
    """Mirrored reply topics ``home``'s relay reads: ``<server>.turnout.forward-replies.<home>``.

    >>> import re; bool(re.match(forward_replies_pattern("us"), "turnout.forward-replies.us"))
    False
    """
    return "^" + _NAME + r"\." + re.escape(forward_replies_topic(home)) + "$"


_HOME = re.compile("^" + re.escape(FORWARD_REPLIES_PREFIX) + "(" + _NAME + ")$")


def forward_topic(region: str) -> str:
    """Where the home region writes requests for ``region`` (its own cluster; MM2 carries it)."""
    return f"{FORWARD_PREFIX}{region}"


def forward_replies_topic(home: str) -> str:
    """Where a serving region writes replies to ``home``'s forwarded requests."""
    return f"{FORWARD_REPLIES_PREFIX}{home}"


def home_of(reply_to: str) -> str | None:
    """The home region of a forwarded request (by its reply topic), None if not forwarded."""
    m = _HOME.match(reply_to)
    return m.group(1) if m else None


def source_of(topic: str) -> str:
    """The region a mirrored topic came from: MM2 prefixes its alias (``eu.turnout...``)."""
    return topic.partition(".")[0]


class Spill(Exception):
    """Raised by the chooser: serve this request in ``region`` (the dispatcher forwards it)."""

    def __init__(self, region: str, model: str | None, why: str, reason: str) -> None:
        super().__init__(f"spill to {region}: {why}")
        self.region = region
        self.model = model
        self.why = why
        """Why the local targets cannot serve in time."""
        self.reason = reason
        """Why this region (and not the others named)."""


# -- when ------------------------------------------------------------------------------


def local_outlook(
    *,
    targets: Collection[str],
    down: Collection[str],
    tried: Collection[str],
    clear_ms: float | None,
    remaining_ms: float,
) -> str | None:
    """Why the local targets cannot serve in time, or None to keep waiting for them.

    Asked only when no local target can take the request right now. ``down`` are the
    targets health excludes (unhealthy, cooling, unroutable); ``tried`` the ones that
    already failed this request; ``clear_ms`` when the route's backlog will have
    drained (``Chooser.clear_ms``; None when nothing completed lately).

    >>> local_outlook(targets=["a"], down=["a"], tried=[], clear_ms=None, remaining_ms=5000)
    'every local target is down or already tried (a)'
    >>> local_outlook(targets=["a"], down=[], tried=[], clear_ms=900, remaining_ms=5000) is None
    True
    >>> local_outlook(targets=["a"], down=[], tried=[], clear_ms=9000, remaining_ms=5000)
    'the local backlog clears in 9000 ms, after the deadline (5000 ms left)'
    """
    if not targets:
        return "the route has no local target"
    out = set(down) | set(tried)
    if set(targets) <= out:
        return f"every local target is down or already tried ({', '.join(sorted(targets))})"
    if clear_ms is None:
        return "every local target is full and none completed a call lately"
    if clear_ms >= remaining_ms:
        return (
            f"the local backlog clears in {clear_ms:.0f} ms, after the deadline "
            f"({remaining_ms:.0f} ms left)"
        )
    return None


# -- where -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RegionChoice:
    region: str
    model: str | None
    spare: int
    reason: str


def spare(state: RegionState, tiers: Collection[str] | None = None) -> int:
    """Calls ``state``'s region could take now for a request allowed ``tiers``.

    Capacity of its serving backends (of those tiers), minus its work: its calls in
    flight, or its lag when that is larger. Lag counts every record not yet committed,
    and a request in flight is not committed yet, so lag beyond ``in_flight`` is the
    queue: a region with a backlog has nothing to lend.

    >>> from turnout.core.region_state import BackendSummary as B
    >>> s = RegionState(region="eu", published_at_ms=0, in_flight=1, lag=1, backends=(
    ...     B(id="l", tier="local", state="healthy", capacity=4),
    ...     B(id="c", tier="cloud", state="unhealthy", capacity=8)))
    >>> spare(s), spare(s, {"cloud"})
    (3, 0)
    >>> spare(msgspec.structs.replace(s, lag=3))
    1
    """
    capacity = sum(
        b.capacity for b in state.backends if b.serving and (tiers is None or b.tier in tiers)
    )
    return max(0, capacity - max(state.in_flight, state.lag or 0))


def choose_region(
    candidates: Iterable[tuple[str, str | None]],
    trusted: Mapping[str, RegionState],
    *,
    home: str,
    tiers: Collection[str] | None = None,
) -> RegionChoice | None:
    """The first candidate region (``(region, model)``, in route order) with spare capacity.

    ``trusted`` holds only fresh state (``region_state.trusted(view(...))``): a region
    missing from it is unknown and never chosen. The home region is never chosen (its
    own targets are the route's backends).
    """
    skipped = []
    for region, model in candidates:
        if region == home:
            continue
        state = trusted.get(region)
        if state is None:
            skipped.append(f"{region} unknown (stale or never heard)")
            continue
        free = spare(state, tiers)
        if free <= 0:
            skipped.append(f"{region} has no spare capacity")
            continue
        why = f"{region} has {free} spare call(s)"
        if skipped:
            why += f"; {', '.join(skipped)}"
        return RegionChoice(region=region, model=model, spare=free, reason=why)
    return None


# -- what ------------------------------------------------------------------------------


def forwarded_request(
    request: Request, *, home: str, model: str | None, deadline_ms: int
) -> Request:
    """The request as the serving region receives it: same id and client, the home's
    absolute deadline, replies to ``turnout.forward-replies.<home>``, never streamed."""
    return msgspec.structs.replace(
        request,
        model=model or request.model,
        reply_to=forward_replies_topic(home),
        deadline=deadline_ms,
        timeout_ms=None,
    )


def spillable(request: Request, reply_to: str) -> bool:
    """Whether a request may be forwarded at all.

    Not a forwarded one (one hop: two regions cannot bounce a request between them),
    and not a stream (its chunks would have to cross two mirrors in order; a stream is
    served locally or fails over to a local fallback).

    >>> r = Request(id="1", client_id="c", kind="chat", model="m", body={})
    >>> spillable(r, "turnout.replies.c"), spillable(r, "turnout.forward-replies.us")
    (True, False)
    """
    if home_of(reply_to) is not None:
        return False
    return not (request.stream and request.kind != "embeddings")


def final_reply(
    remote: Reply,
    *,
    region: str,
    why: str,
    route: str,
    local_attempts: int,
    timings: Timings,
    generation: str | None,
) -> Reply:
    """The home region's final reply from the serving region's: degraded, ``served_region``.

    >>> r = Reply(id="1", status="ok", body={}, backend="eu-local", attempts=1)
    >>> t = Timings(queue_ms=1, backend_ms=0, total_ms=9)
    >>> f = final_reply(r, region="eu", why="x", route="chat", local_attempts=1,
    ...                 timings=t, generation="g")
    >>> f.degraded, f.served_region, f.attempts, f.backend
    (True, 'eu', 2, 'eu-local')
    """
    return msgspec.structs.replace(
        remote,
        route=route,
        reason=f"served by region {region}: {why}"
        + (f"; there: {remote.reason}" if remote.reason else ""),
        attempts=local_attempts + remote.attempts,
        degraded=True,
        served_region=region,
        timings=timings,
        generation=generation,
    )


def no_answer(
    request_id: str,
    client_id: str,
    *,
    region: str,
    route: str,
    local_attempts: int,
    timings: Timings,
    retry_after_ms: int,
) -> Reply:
    """The final reply when the serving region's answer did not come back by the deadline."""
    return Reply(
        id=request_id,
        status="error",
        client_id=client_id,
        error=ErrorInfo(
            code="deadline_exceeded",
            message=(
                f"forwarded to region {region} (no local target could serve in time), and "
                "its answer did not arrive before the deadline (the link or that region may "
                "be down); send it again with the same id"
            ),
            retryable=True,
            retry_after_ms=retry_after_ms,
        ),
        route=route,
        attempts=local_attempts,
        degraded=True,
        served_region=region,
        timings=timings,
    )
