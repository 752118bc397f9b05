"""Routing state shared between regions: one compact summary per region, and its age.

Each region's worker publishes a ``RegionState`` every few seconds to the compacted
topic ``turnout.regions``, keyed by region. MirrorMaker 2 copies it into every other
region as ``<source>.turnout.regions`` (its default replication policy prefixes the
source cluster's alias), so every worker reads its own region's topic and the mirrored
ones, and keeps the newest summary of each region (``merge``).

A summary is only as good as its age. ``view`` turns the latest summaries into what a
router may use: a summary older than the staleness bound, or stamped further in the
future than the allowed clock skew, is *unknown*: its numbers are not offered at all,
so no caller can trust them by mistake. A region that stops publishing (its worker or
its link died) therefore becomes unknown by itself, without anyone announcing it.

Everything here is pure: no clock, no Kafka; callers pass ``now_ms``.

    >>> s = RegionState(region="eu", published_at_ms=10_000, router="127.0.0.1:8080")
    >>> RegionState.from_wire(s.to_wire()) == s
    True
    >>> view({"eu": s}, now_ms=14_000, stale_after_ms=15_000)["eu"].status
    'fresh'
    >>> view({"eu": s}, now_ms=30_000, stale_after_ms=15_000)["eu"].state is None
    True
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

import msgspec

from turnout.errors import TurnoutError

STATE_TOPIC = "turnout.regions"
"""The compacted topic each region publishes its own summary to."""

WIRE_VERSION = 1
REGION_NAME = r"^[a-z][a-z0-9-]{0,31}$"
_REGION_RE = re.compile(REGION_NAME)
SERVING_STATES = frozenset({"healthy", "degraded"})
"""Backend states that count towards a region's usable capacity."""

Status = Literal["fresh", "stale", "future"]


class InvalidRegionState(TurnoutError, ValueError):
    """A ``turnout.regions`` record that is not a RegionState (wrong JSON or fields)."""

    code = "invalid_region_state"


class BackendSummary(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One backend of a region, as other regions see it."""

    id: str
    tier: Literal["local", "cloud"]
    state: str
    """The region's health state of the backend: healthy, degraded, unhealthy, probation."""
    capacity: Annotated[int, msgspec.Meta(ge=0)]
    """Its ``max_concurrency``: calls it accepts at once."""
    latency_ms: float | None = None
    """Recent latency the region measured, None before any call."""

    @property
    def serving(self) -> bool:
        return self.state in SERVING_STATES


class RegionState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """A region's summary of itself, as published by its worker.

    Unknown fields are accepted (a newer publisher may add some); missing optional
    fields take their defaults, so old and new workers can share the topic.
    """

    region: Annotated[str, msgspec.Meta(pattern=REGION_NAME)]
    published_at_ms: Annotated[int, msgspec.Meta(ge=0)]
    """Wall clock of the publisher; ages are computed from it (see ``view``)."""
    router: str = ""
    """Where clients and other regions reach this region's router (gateway), host:port."""
    worker: str = ""
    """Which worker published it (several workers of a region take turns; newest wins)."""
    backends: tuple[BackendSummary, ...] = ()
    in_flight: Annotated[int, msgspec.Meta(ge=0)] = 0
    lag: int | None = None
    """Request records not yet consumed (queue depth); None when not sampled."""
    latency_ms: float | None = None
    """Recent backend latency across the region's backends (the slowest serving one)."""
    version: int = WIRE_VERSION

    @property
    def capacity(self) -> int:
        """Calls the region's serving backends accept at once."""
        return sum(b.capacity for b in self.backends if b.serving)

    @property
    def headroom(self) -> int:
        """Capacity not in use: what another region could borrow, at most."""
        return max(0, self.capacity - self.in_flight)

    @property
    def key(self) -> bytes:
        return self.region.encode()

    def to_wire(self) -> bytes:
        return _encoder.encode(self)

    @classmethod
    def from_wire(cls, raw: bytes) -> RegionState:
        try:
            return _decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise InvalidRegionState(f"region state does not match RegionState: {exc}") from None
        except msgspec.DecodeError as exc:
            raise InvalidRegionState(f"region state is not valid JSON: {exc}") from None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RegionState)


class RegionView(msgspec.Struct, frozen=True, kw_only=True):
    """What a router may know of one region: its state only while it is fresh."""

    region: str
    status: Status
    age_ms: int
    state: RegionState | None
    """The summary when ``status`` is fresh; None otherwise (unknown: never trusted)."""

    @property
    def trusted(self) -> bool:
        return self.state is not None


def check_region(name: str) -> str:
    """``name`` if it is a usable region name, else ValueError saying what is expected."""
    if not _REGION_RE.match(name):
        raise ValueError(
            f"region name {name!r} is not valid: expected lower-case letters, digits and '-', "
            "starting with a letter, at most 32 characters (e.g. us, eu-west)"
        )
    return name


def source_region(topic: str, local_region: str) -> str | None:
    """Which region's cluster a state topic came from, or None if it is not a state topic.

    >>> source_region("turnout.regions", "eu"), source_region("us.turnout.regions", "eu")
    ('eu', 'us')
    >>> source_region("us.eu.turnout.regions", "ap") is None  # mirrored twice: not ours
    True
    """
    if topic == STATE_TOPIC:
        return local_region
    prefix, dot, rest = topic.partition(".")
    if dot and rest == STATE_TOPIC and _REGION_RE.match(prefix):
        return prefix
    return None


def accept(
    latest: Mapping[str, RegionState], incoming: RegionState, *, via: str
) -> dict[str, RegionState] | None:
    """The new latest-per-region map, or None when ``incoming`` must be ignored.

    Ignored: a summary that arrived through another region's topic than its own (a
    region only speaks for itself), and one not newer than what is held (mirrored
    copies and replays arrive late and out of order).
    """
    if incoming.region != via:
        return None
    held = latest.get(incoming.region)
    if held is not None and held.published_at_ms >= incoming.published_at_ms:
        return None
    return {**latest, incoming.region: incoming}


def status_of(
    state: RegionState, *, now_ms: int, stale_after_ms: int, max_skew_ms: int = 2000
) -> Status:
    """fresh, stale (older than the bound) or future (stamped ahead of us beyond the skew).

    >>> s = RegionState(region="us", published_at_ms=100_000)
    >>> [status_of(s, now_ms=t, stale_after_ms=10_000) for t in (100_000, 110_000, 110_001)]
    ['fresh', 'fresh', 'stale']
    >>> status_of(s, now_ms=97_000, stale_after_ms=10_000)
    'future'
    """
    age = now_ms - state.published_at_ms
    if age < -max_skew_ms:
        return "future"
    if age > stale_after_ms:
        return "stale"
    return "fresh"


def view(
    latest: Mapping[str, RegionState],
    *,
    now_ms: int,
    stale_after_ms: int,
    max_skew_ms: int = 2000,
    regions: Iterable[str] = (),
) -> dict[str, RegionView]:
    """Every region's view at ``now_ms``; ``regions`` named but never heard of are unknown.

    A region with no summary yet gets status ``stale`` and age -1.
    """
    out: dict[str, RegionView] = {}
    for name in regions:
        out[name] = RegionView(region=name, status="stale", age_ms=-1, state=None)
    for name, state in latest.items():
        status = status_of(
            state, now_ms=now_ms, stale_after_ms=stale_after_ms, max_skew_ms=max_skew_ms
        )
        out[name] = RegionView(
            region=name,
            status=status,
            age_ms=now_ms - state.published_at_ms,
            state=state if status == "fresh" else None,
        )
    return dict(sorted(out.items()))


def trusted(views: Mapping[str, RegionView]) -> dict[str, RegionState]:
    """Only the regions whose state may be used for a routing decision."""
    return {name: v.state for name, v in views.items() if v.state is not None}


def summarize(
    *,
    region: str,
    now_ms: int,
    router: str,
    worker: str,
    backends: Iterable[Any],
    snapshot: Mapping[str, Any],
) -> RegionState:
    """This region's summary from its config backends and a ``Metrics.snapshot()``.

    ``backends`` are config ``Backend`` values (id, tier, max_concurrency). Lag is None
    when the worker does not sample it (the snapshot's ``lag`` is empty).
    """
    seen = snapshot.get("backends", {})
    summaries = []
    for b in backends:
        view_ = seen.get(b.id, {})
        summaries.append(
            BackendSummary(
                id=b.id,
                tier=b.tier,
                state=str(view_.get("state", "unknown")),
                capacity=b.max_concurrency,
                latency_ms=view_.get("latency_ms"),
            )
        )
    latencies = [s.latency_ms for s in summaries if s.serving and s.latency_ms is not None]
    return RegionState(
        region=region,
        published_at_ms=now_ms,
        router=router,
        worker=worker,
        backends=tuple(summaries),
        in_flight=int(snapshot.get("in_flight", 0)),
        lag=int(snapshot["lag_total"]) if snapshot.get("lag") else None,
        latency_ms=max(latencies) if latencies else None,
    )


def describe(views: Mapping[str, RegionView]) -> dict[str, dict[str, Any]]:
    """Plain JSON for ``/status.json``: every region's status and age, numbers only if fresh."""
    out: dict[str, dict[str, Any]] = {}
    for name, v in views.items():
        doc: dict[str, Any] = {"status": v.status, "age_ms": v.age_ms}
        if v.state is not None:
            s = v.state
            doc.update(
                router=s.router,
                capacity=s.capacity,
                headroom=s.headroom,
                in_flight=s.in_flight,
                lag=s.lag,
                latency_ms=s.latency_ms,
                backends={b.id: {"state": b.state, "tier": b.tier} for b in s.backends},
            )
        out[name] = doc
    return out
