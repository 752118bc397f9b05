"""One backend's health as a state machine, in the manner of h11's ``_state.py``. Pure.

No clock and no I/O: every method takes ``now_ms``. The rules are the tables below;
``BackendHealth.handle`` looks an event up and applies the few effects a table cannot
say (the probation clock, the probe count, the cooldown).

    HEALTHY ──degraded──► DEGRADED ──ok──► HEALTHY
    HEALTHY, DEGRADED ──failing──► UNHEALTHY
    HEALTHY, DEGRADED, PROBATION ──hang detected──► UNHEALTHY
    UNHEALTHY ──probe passed, once probation is due──► PROBATION
    UNHEALTHY ──probe failed──► UNHEALTHY, and the probation clock restarts
    PROBATION ──the probation_probes-th consecutive passing probe──► HEALTHY
    PROBATION ──probe failed, or a failing verdict──► UNHEALTHY

Every (state, event) pair is listed, the no-ops included, so reading the table answers
"what happens if...". An event the table does not know raises ``LocalHealthError``.

A hang (calls in flight, nothing completing; see ``turnout.health.hang``) is judged
from time, not from outcomes, so ``BackendHealth`` also keeps the start time of each
call in flight and when the backend last completed anything. ``tick`` runs the
detector; a probe that timed out while nothing else completed is a hang too.

A 429 cooldown is not a state: it is orthogonal to health (a rate-limited backend is
healthy, just busy), so it is kept as ``cooldown_until_ms`` and checked by ``routable``.

Traffic share per state (``TRAFFIC_SHARE``), the chance that a routing decision
considers the backend at all (``HealthBook.held_back`` leaves it out of the others,
unless nothing else can serve): HEALTHY 1.0; DEGRADED 0.5, so a degraded backend still
serves and keeps producing the evidence it needs to recover, while healthier peers take
more; UNHEALTHY 0.0, it is only probed; PROBATION 0.05, a trickle of real traffic beside
the probes.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Literal

import msgspec

from turnout.errors import TurnoutError
from turnout.health.hang import hang_reason
from turnout.health.stats import Evidence, HealthPolicy, Verdict, assess


class LocalHealthError(TurnoutError):
    """Our own code fed the health machine an event it has no rule for: a bug in turnout."""

    code = "health_state"
    retryable = False


class InvalidHealthRecord(TurnoutError):
    """A ``turnout.health`` record is not valid JSON or does not match ``HealthRecord``."""

    code = "invalid_health_record"
    retryable = False


class State(enum.Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    PROBATION = "probation"


@dataclasses.dataclass(frozen=True, slots=True)
class ProbePassed:
    """An active probe got a good answer."""


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeFailed:
    """An active probe failed or timed out."""


@dataclasses.dataclass(frozen=True, slots=True)
class CooldownRequested:
    """The backend answered 429: send it nothing until ``until_ms``."""

    until_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: old evidence expires, and so may a cooldown."""


@dataclasses.dataclass(frozen=True, slots=True)
class HangDetected:
    """Calls are in flight and nothing has completed for too long: the backend is hung."""

    reason: str


Event = Verdict | ProbePassed | ProbeFailed | CooldownRequested | Tick | HangDetected
EventType = (
    Verdict
    | type[ProbePassed]
    | type[ProbeFailed]
    | type[CooldownRequested]
    | type[Tick]
    | type[HangDetected]
)


@dataclasses.dataclass(frozen=True, slots=True)
class When:
    """A guarded transition: to ``then`` if ``guard`` holds, else to ``otherwise``."""

    guard: Literal["probation_due", "probation_complete"]
    then: State
    otherwise: State


HEALTHY, DEGRADED, UNHEALTHY, PROBATION = State

TRANSITIONS: dict[State, dict[EventType, State | When]] = {
    HEALTHY: {
        Verdict.OK: HEALTHY,
        Verdict.DEGRADED: DEGRADED,
        Verdict.FAILING: UNHEALTHY,
        # A probe of a backend in service is one more request: its outcome enters the
        # window, and the verdict that follows decides.
        ProbePassed: HEALTHY,
        ProbeFailed: HEALTHY,
        CooldownRequested: HEALTHY,
        Tick: HEALTHY,
        HangDetected: UNHEALTHY,
    },
    DEGRADED: {
        Verdict.OK: HEALTHY,
        Verdict.DEGRADED: DEGRADED,
        Verdict.FAILING: UNHEALTHY,
        ProbePassed: DEGRADED,
        ProbeFailed: DEGRADED,
        CooldownRequested: DEGRADED,
        Tick: DEGRADED,
        HangDetected: UNHEALTHY,
    },
    UNHEALTHY: {
        # It gets no traffic; verdicts from requests still in flight are ignored.
        Verdict.OK: UNHEALTHY,
        Verdict.DEGRADED: UNHEALTHY,
        Verdict.FAILING: UNHEALTHY,
        ProbePassed: When("probation_due", then=PROBATION, otherwise=UNHEALTHY),
        ProbeFailed: UNHEALTHY,  # and the probation clock restarts
        CooldownRequested: UNHEALTHY,
        Tick: UNHEALTHY,
        HangDetected: UNHEALTHY,  # it gets no traffic; the detector does not run here
    },
    PROBATION: {
        Verdict.OK: PROBATION,
        Verdict.DEGRADED: PROBATION,
        Verdict.FAILING: UNHEALTHY,
        ProbePassed: When("probation_complete", then=HEALTHY, otherwise=PROBATION),
        ProbeFailed: UNHEALTHY,
        CooldownRequested: PROBATION,
        Tick: PROBATION,
        HangDetected: UNHEALTHY,
    },
}

TRAFFIC_SHARE: dict[State, float] = {
    HEALTHY: 1.0,
    DEGRADED: 0.5,
    UNHEALTHY: 0.0,
    PROBATION: 0.05,
}


class HealthRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One backend's health on the compacted ``turnout.health`` topic, keyed by backend id."""

    backend: str
    state: State
    since_ms: int
    reason: str
    success_low: float
    success_high: float
    n: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    ewma_ms: float | None
    cooldown_until_ms: int | None
    updated_ms: int
    probe_ok: bool | None = None
    """The prober's latest probe of this backend: every worker feeds it to its own machine."""
    probe_latency_ms: float | None = None
    probe_at_ms: int | None = None
    probe_error: str | None = None
    """The failed probe's error code; ``backend_timeout`` is evidence of a hang."""
    in_flight: int | None = None
    """Calls in flight from the publishing worker, and the age of its oldest."""
    oldest_call_ms: int | None = None

    @property
    def key(self) -> bytes:
        return self.backend.encode()

    @classmethod
    def from_wire(cls, raw: bytes) -> HealthRecord:
        try:
            return _record_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise InvalidHealthRecord(f"health record does not match HealthRecord: {exc}") from None
        except msgspec.DecodeError as exc:
            raise InvalidHealthRecord(f"health record is not valid JSON: {exc}") from None

    def to_wire(self) -> bytes:
        return _encoder.encode(self)


_record_decoder = msgspec.json.Decoder(HealthRecord)
_encoder = msgspec.json.Encoder()


class BackendHealth:
    """The health of one backend, driven by its traffic, its probes and time."""

    def __init__(self, backend_id: str, *, now_ms: int, policy: HealthPolicy | None = None) -> None:
        self.backend_id = backend_id
        self.policy = policy if policy is not None else HealthPolicy()
        self.state = HEALTHY
        self.since_ms = now_ms
        self.updated_ms = now_ms
        self.reason = "no requests yet"
        self.consecutive_probe_passes = 0
        self.cooldown_until_ms: int | None = None
        self.probation_due_ms: int | None = None
        """While UNHEALTHY: when a passing probe may start probation."""
        self.window = self.policy.new_window()
        self.calls: dict[int, int] = {}
        """Start time of each call in flight, by the caller's token, oldest first."""
        self.last_progress_ms: int | None = None
        """When the backend last completed anything: an answer, a chunk, a passing probe."""
        self.local_lag_ms = 0.0
        """The worker's own event-loop lag, set by ``HealthBook.loop_lag``."""
        self._judged: tuple[Evidence, str] | None = None
        """The evidence of the verdict being applied, and what to add to its reason."""
        self.slow_since_ms: int | None = None
        """Since when recent latency has been above the slow bar, while healthy throughout."""

    def __repr__(self) -> str:
        ok = f"{self.window.successes / self.window.n:.0%}" if self.window.n else "n/a"
        cooldown = (
            f" cooldown_until={self.cooldown_until_ms}"
            if self.cooldown_until_ms is not None
            else ""
        )
        return (
            f"<BackendHealth {self.backend_id} state={self.state.name} since={self.since_ms} "
            f"n={self.window.n} ok={ok}{cooldown}>"
        )

    @property
    def traffic_share(self) -> float:
        return TRAFFIC_SHARE[self.state]

    def routable(self, now_ms: int) -> bool:
        """Whether traffic may go here now: not UNHEALTHY and not cooling down."""
        cooling = self.cooldown_until_ms is not None and now_ms < self.cooldown_until_ms
        return self.state is not UNHEALTHY and not cooling

    # Signals. Each feeds events through ``handle``.

    def observe(self, ok: bool, latency_ms: float, now_ms: int) -> State:
        """A request this backend served (or failed): record it and judge the window again."""
        self.window.record(ok, latency_ms, now_ms)
        return self._judge(now_ms)

    def probe(self, ok: bool, latency_ms: float, now_ms: int, *, timed_out: bool = False) -> State:
        """An active probe's outcome: the probe event first, then it counts as evidence.

        A probe that timed out while the backend completed nothing else during its wait
        is a hang: the backend did not answer even a one-token request. On a backend
        with a raised hang floor (``hang_after_ms``: its calls may legitimately run that
        long), only once nothing has completed for the floor: a probe queued behind a
        long call times out while the backend is busy, not hung.
        """
        if ok:
            self.progressed(now_ms)
        self.handle(ProbePassed() if ok else ProbeFailed(), now_ms)
        self.window.record(ok, latency_ms, now_ms)
        waited_from = now_ms - int(latency_ms)
        quiet = self.last_progress_ms is None or self.last_progress_ms <= waited_from
        if self.policy.hang_floor_ms > HealthPolicy().hang_floor_ms:
            silent_since = self.last_progress_ms
            if silent_since is None:  # never answered: silent since its oldest call
                silent_since = min(self.calls.values(), default=now_ms)
            quiet = now_ms - silent_since >= self.policy.hang_floor_ms
        if timed_out and quiet and self.state is not UNHEALTHY:
            return self.handle(
                HangDetected(
                    f"hung: a probe got no answer in {latency_ms:.0f} ms and nothing else "
                    "completed meanwhile"
                ),
                now_ms,
            )
        return self._judge(now_ms)

    def call_started(self, token: int, now_ms: int) -> None:
        """A call (``token``, unique per backend) is in flight from ``now_ms``."""
        self.calls[token] = now_ms

    def call_ended(self, token: int) -> None:
        self.calls.pop(token, None)

    def progressed(self, now_ms: int) -> None:
        """The backend completed something: it is alive, whatever the outcome."""
        if self.last_progress_ms is None or now_ms > self.last_progress_ms:
            self.last_progress_ms = now_ms

    def oldest_call_ms(self) -> int | None:
        """When the oldest call still in flight started; None when none is."""
        return min(self.calls.values()) if self.calls else None

    def check_hang(self, now_ms: int) -> State:
        """Run the hang detector at ``now_ms``; a hang takes the backend out of rotation."""
        if self.state is UNHEALTHY:
            return self.state
        reason = hang_reason(
            oldest_call_ms=self.oldest_call_ms(),
            last_progress_ms=self.last_progress_ms,
            p99_ms=self.window.percentile(99),
            now_ms=now_ms,
            floor_ms=self.policy.hang_floor_ms,
            factor=self.policy.hang_factor,
        )
        return self.state if reason is None else self.handle(HangDetected(reason), now_ms)

    def cool_down(self, until_ms: int, *, now_ms: int) -> State:
        return self.handle(CooldownRequested(until_ms), now_ms)

    def tick(self, now_ms: int) -> State:
        self.handle(Tick(), now_ms)
        self._judge(now_ms)
        return self.check_hang(now_ms)

    def _judge(self, now_ms: int) -> State:
        """Judge the window and apply the verdict, giving its reason from the same evidence.

        Slowness alone must last ``slow_for_ms`` before it degrades a backend: at a
        thousand answers a second the EWMA spans milliseconds, and a burst crossed the
        bar and fell back within one answer.
        """
        evidence = self.evidence()
        verdict, more = evidence.verdict, ""
        if not evidence.is_slower_than_usual or self.state is not HEALTHY:
            self.slow_since_ms = None  # a spell counts only while healthy throughout
        else:
            since = self.slow_since_ms = (
                now_ms if self.slow_since_ms is None else self.slow_since_ms
            )
            if evidence.slow_only and now_ms - since < self.policy.slow_for_ms:
                verdict = Verdict.OK
                more = f", for {now_ms - since} ms of the {self.policy.slow_for_ms} needed"
        self._judged = (evidence, more)
        try:
            return self.handle(verdict, now_ms)
        finally:
            self._judged = None

    def evidence(self) -> Evidence:
        return assess(
            self.window,
            self.policy,
            local_lag_ms=self.local_lag_ms,
            recovering=self.state is DEGRADED,
        )

    # The machine.

    def handle(self, event: Event, now_ms: int) -> State:
        """Apply one event at ``now_ms`` by the tables; return the state after it."""
        target = TRANSITIONS[self.state].get(_kind(event))
        if target is None:
            raise LocalHealthError(
                f"can't handle event {event!r} for backend {self.backend_id!r} in state "
                f"{self.state.name}: the health table has no entry for it; expected one of "
                f"{', '.join(_name(k) for k in TRANSITIONS[self.state])}"
            )
        self.updated_ms = max(self.updated_ms, now_ms)
        if isinstance(event, CooldownRequested):
            current = self.cooldown_until_ms
            self.cooldown_until_ms = (
                event.until_ms if current is None else max(current, event.until_ms)
            )
        elif isinstance(event, Tick):
            self.window.prune(now_ms)
            if self.cooldown_until_ms is not None and now_ms >= self.cooldown_until_ms:
                self.cooldown_until_ms = None
        elif isinstance(event, ProbeFailed) and self.state is UNHEALTHY:
            self.probation_due_ms = now_ms + self.policy.probation_after_ms
        elif isinstance(event, ProbePassed) and self.state is PROBATION:
            self.consecutive_probe_passes += 1
        new = self._resolve(target, now_ms)
        self._enter(new, event, now_ms)
        return new

    def _resolve(self, target: State | When, now_ms: int) -> State:
        if isinstance(target, State):
            return target
        if target.guard == "probation_due":
            holds = self.probation_due_ms is not None and now_ms >= self.probation_due_ms
        else:
            holds = self.consecutive_probe_passes >= self.policy.probation_probes
        return target.then if holds else target.otherwise

    def _enter(self, new: State, event: Event, now_ms: int) -> None:
        old, self.state = self.state, new
        if new is not old:
            self.since_ms = now_ms
        if new is UNHEALTHY and old is not UNHEALTHY:
            self.probation_due_ms = now_ms + self.policy.probation_after_ms
            self.consecutive_probe_passes = 0
        elif new is PROBATION and old is not PROBATION:
            self.window.clear()  # judge the recovered backend on fresh evidence only
            self.consecutive_probe_passes = 0
        elif new is HEALTHY and old is PROBATION:
            self.consecutive_probe_passes = 0
        self.reason = self._reason(old, new, event)

    def _reason(self, old: State, new: State, event: Event) -> str:
        probes = self.policy.probation_probes
        if isinstance(event, HangDetected):
            return event.reason if new is not old else self.reason
        if isinstance(event, Verdict):
            judged = new in (HEALTHY, DEGRADED) or (new is UNHEALTHY and old is not UNHEALTHY)
            if not judged:
                return self.reason
            if self._judged is None:
                return self.evidence().reason
            evidence, more = self._judged  # the reason is formatted only when kept
            return evidence.reason + more
        if isinstance(event, ProbePassed) and new is PROBATION:
            return f"on probation: {self.consecutive_probe_passes} of {probes} probes passed"
        if isinstance(event, ProbePassed) and old is PROBATION:
            return f"recovered: {probes} of {probes} probes passed on probation"
        if isinstance(event, ProbeFailed) and old is PROBATION:
            return "a probe failed on probation"
        return self.reason

    # The wire.

    def record(self) -> HealthRecord:
        """This backend's health as of ``updated_ms``, for ``turnout.health``."""
        low, high = self.window.success_interval(self.policy.z)
        return HealthRecord(
            backend=self.backend_id,
            state=self.state,
            since_ms=self.since_ms,
            reason=self.reason,
            success_low=round(low, 4),
            success_high=round(high, 4),
            n=self.window.n,
            p50_ms=_ms(self.window.percentile(50)),
            p95_ms=_ms(self.window.percentile(95)),
            p99_ms=_ms(self.window.percentile(99)),
            ewma_ms=_ms(self.window.ewma_ms),
            cooldown_until_ms=self.cooldown_until_ms,
            updated_ms=self.updated_ms,
            in_flight=len(self.calls),
            oldest_call_ms=self.oldest_call_ms(),
        )

    def to_wire(self) -> bytes:
        return self.record().to_wire()

    @classmethod
    def from_record(
        cls, record: HealthRecord, *, policy: HealthPolicy | None = None
    ) -> BackendHealth:
        """Resume from a published record: state, clocks and reason; the window starts empty."""
        health = cls(record.backend, now_ms=record.updated_ms, policy=policy)
        health.state = record.state
        health.since_ms = record.since_ms
        health.reason = record.reason
        health.cooldown_until_ms = record.cooldown_until_ms
        if record.state is UNHEALTHY:
            health.probation_due_ms = record.since_ms + health.policy.probation_after_ms
        return health

    @classmethod
    def from_wire(cls, raw: bytes, *, policy: HealthPolicy | None = None) -> BackendHealth:
        return cls.from_record(HealthRecord.from_wire(raw), policy=policy)


def _kind(event: Event) -> EventType:
    return event if isinstance(event, Verdict) else type(event)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _name(kind: object) -> str:
    return f"Verdict.{kind.name}" if isinstance(kind, Verdict) else getattr(kind, "__name__", "?")
