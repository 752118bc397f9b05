"""The routing decision: which backend serves this attempt. Pure: no I/O, no clock.

``decide(route, snapshot, request, *, tried, rng)`` returns a ``Decision``
naming the backend, the policy and why, or None when no candidate can take the
request right now (the caller waits for capacity while the deadline allows;
``unavailable`` says why each target was passed over).

A target is a candidate when its backend is not excluded by health, not
cooling down after a 429, of a tier the request's rule allows, has every
capability the route requires, and has a free concurrency slot. Retries prefer
backends not tried yet; with none left, a tried one may serve again. The
route's policy then picks among the candidates:

===================  ==============================================================
round_robin          the caller's turn counter modulo the candidates
weighted             at random in proportion to backend ``weight`` (seeded ``rng``)
least_connections    lowest in-flight share of ``max_concurrency``; ties by order
latency              lowest latency EWMA; unknown counts as best so new backends get
                     measured, and one whose average is due for a refresh is measured
                     again before the rest; ties by load
cost                 cheapest estimate for this prompt and completion; ties by load
local_first          a local backend while one has a slot and its EWMA fits the time
                     left; otherwise spill to cloud by least connections
first                first candidate in route order
===================  ==============================================================
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Mapping, Sequence

from turnout.config import Backend, Route, Target
from turnout.core.tokens import DEFAULT_COMPLETION_TOKENS


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    backend: str
    model: str
    policy: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """What the router knows about backends at one moment."""

    backends: Mapping[str, Backend]
    in_flight: Mapping[str, int]
    excluded: frozenset[str] = frozenset()
    """Backends health has taken out of rotation."""
    turn: int = 0
    """A counter the caller advances per decision, for round robin."""
    latency_ms: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """EWMA of recent latency per backend; a missing backend has no measurement yet."""
    cooldown: frozenset[str] = frozenset()
    """Backends that answered 429 recently; passed over like excluded ones."""
    latency_due: frozenset[str] = frozenset()
    """Backends whose latency average is old and idle: ``latency`` measures them again."""

    def has_capacity(self, backend_id: str) -> bool:
        return self.in_flight.get(backend_id, 0) < self.backends[backend_id].max_concurrency

    def load(self, backend_id: str) -> float:
        """In-flight calls as a share of the backend's concurrency limit."""
        return self.in_flight.get(backend_id, 0) / self.backends[backend_id].max_concurrency

    def usage(self, backend_id: str) -> str:
        return f"{self.in_flight.get(backend_id, 0)}/{self.backends[backend_id].max_concurrency}"


@dataclasses.dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the policy may know about the request being routed."""

    kind: str = "chat"
    client_id: str = ""
    priority: int = 5
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = DEFAULT_COMPLETION_TOKENS
    """Expected completion length, for the ``cost`` policy."""
    remaining_ms: float = math.inf
    """Time left before the request's deadline."""
    tiers: frozenset[str] | None = None
    """Tiers the matching rule allows; None allows every tier."""


def decide(
    route: Route,
    snapshot: Snapshot,
    request: RouteRequest,
    *,
    tried: frozenset[str] = frozenset(),
    rng: random.Random,
    prefer: str | None = None,
) -> Decision | None:
    """Pick a target of ``route`` for this attempt, or None when none can take it now.

    ``prefer`` (cache affinity) wins when that backend is an open, untried target.
    """
    open_ = [t for t in route.targets if _blocked(t, route, snapshot, request) is None]
    untried = [t for t in open_ if t.backend not in tried]
    candidates = untried or open_
    if not candidates:
        return None
    for t in untried if prefer is not None else ():
        if t.backend == prefer:
            reason = f"affinity: {prefer!r} served this cache key last and can serve"
            return Decision(t.backend, t.model, route.policy, reason)
    ctx = _Ctx(route, snapshot, request, tried, rng)
    pick, reason = _POLICIES[route.policy](candidates, ctx)
    if not untried:
        reason += "; every untried target is unavailable, so a tried one serves again"
    return Decision(pick.backend, pick.model, route.policy, f"{route.policy}: {reason}")


def unavailable(route: Route, snapshot: Snapshot, request: RouteRequest) -> dict[str, str]:
    """Why each target's backend cannot take the request now, by backend id."""
    out: dict[str, str] = {}
    for t in route.targets:
        why = _blocked(t, route, snapshot, request)
        if why is not None:
            out.setdefault(t.backend, why)
    return out


def retry_delay_s(
    attempt: int, rng: random.Random, *, base_s: float = 0.05, cap_s: float = 2.0
) -> float:
    """Backoff before retry number ``attempt`` (1-based): full jitter, exponential cap."""
    return rng.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))


def _blocked(target: Target, route: Route, snap: Snapshot, request: RouteRequest) -> str | None:
    b = snap.backends.get(target.backend)
    if b is None:
        return "not declared"
    if b.id in snap.excluded:
        return "excluded by health"
    if b.id in snap.cooldown:
        return "cooling down after a 429"
    if request.tiers is not None and b.tier not in request.tiers:
        return f"tier {b.tier} not allowed by the rule ({', '.join(sorted(request.tiers))})"
    missing = [c for c in route.require if c not in b.capabilities]
    if missing:
        return f"lacks capability {', '.join(missing)}"
    if not snap.has_capacity(b.id):
        return f"full ({snap.usage(b.id)})"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class _Ctx:
    route: Route
    snap: Snapshot
    request: RouteRequest
    tried: frozenset[str]
    rng: random.Random


_Pick = tuple[Target, str]


def _first(c: Sequence[Target], x: _Ctx) -> _Pick:
    return c[0], "first target with capacity in route order"


def _round_robin(c: Sequence[Target], x: _Ctx) -> _Pick:
    return c[x.snap.turn % len(c)], f"turn {x.snap.turn} of {len(c)} with capacity"


def _weighted(c: Sequence[Target], x: _Ctx) -> _Pick:
    weighted = [(t, x.snap.backends[t.backend].weight) for t in c]
    weighted = [(t, w) for t, w in weighted if w > 0]
    if not weighted:
        return c[x.rng.randrange(len(c))], "no candidate has weight > 0; picked uniformly"
    total = sum(w for _, w in weighted)
    point = x.rng.random() * total
    pick, weight = weighted[-1]
    for t, w in weighted:
        if point < w:
            pick, weight = t, w
            break
        point -= w
    return pick, f"{pick.backend!r} drawn with weight {weight:g} of {total:g}"


def _least_loaded(c: Sequence[Target], snap: Snapshot) -> Target:
    return min(c, key=lambda t: snap.load(t.backend))


def _least_connections(c: Sequence[Target], x: _Ctx) -> _Pick:
    pick = _least_loaded(c, x.snap)
    return pick, f"{pick.backend!r} has {x.snap.usage(pick.backend)} in flight, least of {len(c)}"


def _latency(c: Sequence[Target], x: _Ctx) -> _Pick:
    lat = x.snap.latency_ms
    due = [t for t in c if t.backend in x.snap.latency_due and t.backend in lat]
    if due:
        # Without this a backend that was slow once (a cold start, a busy moment)
        # would never be chosen again, so its average would never improve.
        pick = due[0]
        return pick, (
            f"{pick.backend!r} has an old latency EWMA ({lat[pick.backend]:.0f} ms) "
            "and nothing in flight, so it is measured again"
        )
    pick = min(c, key=lambda t: (lat.get(t.backend, -math.inf), x.snap.load(t.backend)))
    ewma = lat.get(pick.backend)
    if ewma is None:
        return pick, f"{pick.backend!r} has no latency measured yet, so it is tried"
    return pick, f"{pick.backend!r} has latency EWMA {ewma:.0f} ms, lowest of {len(c)}"


def _estimate(b: Backend, q: RouteRequest) -> float:
    spend = b.cost.input_per_mtok * q.prompt_tokens + b.cost.output_per_mtok * q.completion_tokens
    return spend / 1e6


def _cost(c: Sequence[Target], x: _Ctx) -> _Pick:
    snap, q = x.snap, x.request
    pick = min(c, key=lambda t: (_estimate(snap.backends[t.backend], q), snap.load(t.backend)))
    price = _estimate(snap.backends[pick.backend], q)
    return pick, (
        f"{pick.backend!r} estimated {price:.6g} for {q.prompt_tokens}+{q.completion_tokens} "
        f"tokens, cheapest of {len(c)}"
    )


def _local_first(c: Sequence[Target], x: _Ctx) -> _Pick:
    snap = x.snap
    local = [t for t in c if snap.backends[t.backend].tier == "local"]
    fits = [t for t in local if snap.latency_ms.get(t.backend, 0.0) <= x.request.remaining_ms]
    if fits:
        pick = _least_loaded(fits, snap)
        return pick, f"local backend {pick.backend!r} has capacity ({snap.usage(pick.backend)})"
    cloud = [t for t in c if snap.backends[t.backend].tier == "cloud"]
    why = _why_not_local(x, slow=local)
    if cloud:
        pick = _least_loaded(cloud, snap)
        return pick, f"{why}, spilled to cloud {pick.backend!r} ({snap.usage(pick.backend)})"
    pick = _least_loaded(local, snap)
    return pick, f"{why}, but no cloud backend is open, so local {pick.backend!r} serves"


def _why_not_local(x: _Ctx, *, slow: Sequence[Target]) -> str:
    """Why each local target was passed over, for the spill reason."""
    reasons: dict[str, str] = {}
    for t in x.route.targets:
        b = x.snap.backends.get(t.backend)
        if b is None or b.tier != "local" or t.backend in reasons:
            continue
        why = _blocked(t, x.route, x.snap, x.request)
        if why is None and t in slow:
            why = (
                f"predicted too slow (latency EWMA {x.snap.latency_ms[t.backend]:.0f} ms "
                f"> {x.request.remaining_ms:.0f} ms left)"
            )
        elif why is None and t.backend in x.tried:
            why = "already tried"
        if why is not None:
            reasons[t.backend] = why
    if not reasons:
        return "the route has no local target"
    return "; ".join(f"local backend {k!r} {v}" for k, v in reasons.items())


_POLICIES: dict[str, Callable[[Sequence[Target], _Ctx], _Pick]] = {
    "first": _first,
    "round_robin": _round_robin,
    "weighted": _weighted,
    "least_connections": _least_connections,
    "latency": _latency,
    "cost": _cost,
    "local_first": _local_first,
}
