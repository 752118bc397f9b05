"""A worker's view of every backend's health, as the router needs it. Pure.

Each worker keeps one ``BackendHealth`` per backend, fed by its own traffic
(passive signals, immediately) and by the deployment's single prober (active
probes, read from the ``turnout.health`` topic). Exclusion needs no
coordination: every worker that sends traffic to a dead backend sees it fail.
Recovery is verified the same way everywhere: the prober's passing probes move
an unhealthy backend through probation back to healthy.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Mapping

from turnout.health.machine import BackendHealth, HealthRecord, State
from turnout.health.stats import HealthPolicy


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    backend: str
    old: State
    new: State
    reason: str
    signal: str
    """What moved it: ``traffic``, ``probe``, ``hang`` or ``time``."""


class HealthBook:
    def __init__(
        self,
        backend_ids: Iterable[str],
        *,
        now_ms: int,
        policy: HealthPolicy | None = None,
        hang_floors_ms: Mapping[str, int] | None = None,
    ) -> None:
        """``hang_floors_ms``: backends whose hang floor differs from the policy's."""
        self.policy = policy if policy is not None else HealthPolicy()
        floors = hang_floors_ms or {}
        self.machines = {
            b: BackendHealth(
                b,
                now_ms=now_ms,
                policy=self.policy
                if b not in floors
                else dataclasses.replace(self.policy, hang_floor_ms=floors[b]),
            )
            for b in backend_ids
        }
        self.version = 0
        """Advances on every change of a state or cooldown, so waiters know to look again."""
        self._transitions: list[Transition] = []
        self._last_served: dict[str, int] = {}
        self._tokens = 0

    def __repr__(self) -> str:
        states = ", ".join(f"{b}={m.state.name}" for b, m in self.machines.items())
        return f"<HealthBook {states}>"

    def observe(self, backend_id: str, ok: bool, latency_ms: float, now_ms: int) -> bool:
        """A request's outcome on a backend. Returns True when the backend's state changed."""
        m = self.machines[backend_id]
        before = m.state
        m.observe(ok, latency_ms, now_ms)
        if ok:
            self._last_served[backend_id] = now_ms
        return self._changed(m, before, "traffic")

    def loop_lag(self, lag_ms: float) -> None:
        """The worker's own event-loop lag now: judged latency is taken net of it."""
        for m in self.machines.values():
            m.local_lag_ms = lag_ms

    def call_started(self, backend_id: str, now_ms: int) -> int:
        """A call to ``backend_id`` begins; returns the token to end it with."""
        self._tokens += 1
        self.machines[backend_id].call_started(self._tokens, now_ms)
        return self._tokens

    def call_ended(self, backend_id: str, token: int) -> None:
        self.machines[backend_id].call_ended(token)

    def progressed(self, backend_id: str, now_ms: int) -> None:
        """The backend completed something (an answer of any status, a stream chunk)."""
        m = self.machines.get(backend_id)
        if m is not None:
            m.progressed(now_ms)

    def check_hangs(self, now_ms: int) -> bool:
        """Run the hang detector on every backend. Returns True when a state changed."""
        changed = False
        for m in self.machines.values():
            before = m.state
            m.check_hang(now_ms)
            changed = self._changed(m, before, "hang") or changed
        return changed

    def percentile(self, backend_id: str, p: float) -> float | None:
        """A percentile of the backend's recent answer latency, once it has enough answers."""
        m = self.machines.get(backend_id)
        if m is None or m.window.successes < self.policy.min_samples:
            return None
        return m.window.percentile(p)

    def serving_well(self, backend_id: str, since_ms: int) -> bool:
        """Healthy and answered real traffic since ``since_ms``: a probe would add nothing."""
        m = self.machines.get(backend_id)
        return (
            m is not None
            and m.state is State.HEALTHY
            and self._last_served.get(backend_id, -1) >= since_ms
        )

    def probe(
        self, backend_id: str, ok: bool, latency_ms: float, now_ms: int, *, timed_out: bool = False
    ) -> bool:
        m = self.machines.get(backend_id)
        if m is None:  # a backend this worker's config does not know
            return False
        before = m.state
        m.probe(ok, latency_ms, now_ms, timed_out=timed_out)
        return self._changed(m, before, "probe")

    def cool_down(self, backend_id: str, until_ms: int, now_ms: int) -> None:
        self.machines[backend_id].cool_down(until_ms, now_ms=now_ms)
        self.version += 1

    def tick(self, now_ms: int) -> bool:
        """Time passed: evidence expires, cooldowns end, and hung backends are caught."""
        changed = self.check_hangs(now_ms)
        for m in self.machines.values():
            before = m.state
            m.tick(now_ms)
            changed = self._changed(m, before, "time") or changed
        return changed

    def unroutable(self, now_ms: int) -> frozenset[str]:
        """Backends no request may use now: unhealthy or cooling down after a 429."""
        return frozenset(b for b, m in self.machines.items() if not m.routable(now_ms))

    def held_back(self, rng: random.Random) -> frozenset[str]:
        """Backends this decision leaves out, each with chance ``1 - traffic_share``.

        A degraded backend is considered by half the decisions, one on probation by a
        trickle; a healthy one always (and an unhealthy one is unroutable anyway). The
        chooser decides again without them when nothing else can serve.
        """
        return frozenset(
            b
            for b, m in self.machines.items()
            if 0.0 < m.traffic_share < 1.0 and rng.random() >= m.traffic_share
        )

    def state(self, backend_id: str) -> State:
        return self.machines[backend_id].state

    def describe(self, backend_ids: Iterable[str], now_ms: int) -> str:
        """Why these backends cannot serve, for an error message a person can act on."""
        parts = []
        for b in backend_ids:
            m = self.machines[b]
            if m.cooldown_until_ms is not None and now_ms < m.cooldown_until_ms:
                parts.append(f"{b}: cooling down after 429 for {m.cooldown_until_ms - now_ms} ms")
            else:
                parts.append(f"{b}: {m.state.name.lower()} ({m.reason})")
        return "; ".join(parts)

    def records(self) -> list[HealthRecord]:
        return [m.record() for m in self.machines.values()]

    def drain_transitions(self) -> list[Transition]:
        """State changes since the last call, oldest first, for the caller to report."""
        out, self._transitions = self._transitions, []
        return out

    def _changed(self, m: BackendHealth, before: State, signal: str) -> bool:
        if before is m.state:
            return False
        self.version += 1
        self._transitions.append(Transition(m.backend_id, before, m.state, m.reason, signal))
        return True
