"""The routing decision: which backend serves this attempt. Pure: no I/O, no clock.

``decide(route, snapshot, *, tried)`` returns a ``Decision`` naming the
backend, the policy and why, or None when no candidate has capacity right now
(the caller waits for capacity while the request's deadline allows).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping

from turnout.config import Backend, Route, Target


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
    turn: int = 0
    """A counter the caller advances per decision, for round robin."""

    def has_capacity(self, backend_id: str) -> bool:
        return self.in_flight.get(backend_id, 0) < self.backends[backend_id].max_concurrency


def decide(
    route: Route,
    snapshot: Snapshot,
    *,
    tried: frozenset[str] = frozenset(),
) -> Decision | None:
    open_ = [
        t
        for t in route.targets
        if t.backend not in snapshot.excluded and snapshot.has_capacity(t.backend)
    ]
    # Retries prefer a backend not tried yet; with none left, a tried one may serve again.
    open_ = [t for t in open_ if t.backend not in tried] or open_
    if not open_:
        return None
    if route.policy == "first":
        return _decision(open_[0], "first", "first target with capacity in route order")
    pick = open_[snapshot.turn % len(open_)]
    return _decision(pick, "round_robin", f"turn {snapshot.turn} of {len(open_)} with capacity")


def _decision(target: Target, policy: str, reason: str) -> Decision:
    return Decision(target.backend, target.model, policy, reason)


def retry_delay_s(
    attempt: int, rng: random.Random, *, base_s: float = 0.05, cap_s: float = 2.0
) -> float:
    """Backoff before retry number ``attempt`` (1-based): full jitter, exponential cap."""
    return rng.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))
