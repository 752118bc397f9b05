"""The backend health machine: its table, its clocks, its wire record, and how it behaves
under simulated traffic. No event loop, no clock: every call is given now_ms."""

import random
import statistics

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.health import (
    TRAFFIC_SHARE,
    TRANSITIONS,
    BackendHealth,
    CooldownRequested,
    HangDetected,
    HealthPolicy,
    HealthRecord,
    InvalidHealthRecord,
    LocalHealthError,
    ProbeFailed,
    ProbePassed,
    State,
    Tick,
    Verdict,
    When,
    wilson_interval,
)

HEALTHY, DEGRADED, UNHEALTHY, PROBATION = State
T0 = 1_700_000_000_000
POLICY = HealthPolicy()
DUE = T0 + POLICY.probation_after_ms


def health_in(state: State) -> BackendHealth:
    """A backend driven into ``state`` through the table, ending at time DUE."""
    h = BackendHealth("local", now_ms=T0)
    if state is DEGRADED:
        h.handle(Verdict.DEGRADED, T0)
    if state in (UNHEALTHY, PROBATION):
        h.handle(Verdict.FAILING, T0)
    if state is PROBATION:
        h.handle(ProbePassed(), DUE)
    assert h.state is state
    return h


# ---------------------------------------------------------------- the table

EVERY_PAIR = [
    # (state, event, state after); guarded rows name the guard's outcome.
    (HEALTHY, Verdict.OK, HEALTHY),
    (HEALTHY, Verdict.DEGRADED, DEGRADED),
    (HEALTHY, Verdict.FAILING, UNHEALTHY),
    (HEALTHY, ProbePassed(), HEALTHY),
    (HEALTHY, ProbeFailed(), HEALTHY),
    (HEALTHY, CooldownRequested(DUE + 1), HEALTHY),
    (HEALTHY, Tick(), HEALTHY),
    (HEALTHY, HangDetected("hung"), UNHEALTHY),
    (DEGRADED, Verdict.OK, HEALTHY),
    (DEGRADED, Verdict.DEGRADED, DEGRADED),
    (DEGRADED, Verdict.FAILING, UNHEALTHY),
    (DEGRADED, ProbePassed(), DEGRADED),
    (DEGRADED, ProbeFailed(), DEGRADED),
    (DEGRADED, CooldownRequested(DUE + 1), DEGRADED),
    (DEGRADED, Tick(), DEGRADED),
    (DEGRADED, HangDetected("hung"), UNHEALTHY),
    (UNHEALTHY, Verdict.OK, UNHEALTHY),
    (UNHEALTHY, Verdict.DEGRADED, UNHEALTHY),
    (UNHEALTHY, Verdict.FAILING, UNHEALTHY),
    (UNHEALTHY, ProbePassed(), PROBATION),  # at DUE: probation is due
    (UNHEALTHY, ProbeFailed(), UNHEALTHY),
    (UNHEALTHY, CooldownRequested(DUE + 1), UNHEALTHY),
    (UNHEALTHY, Tick(), UNHEALTHY),
    (UNHEALTHY, HangDetected("hung"), UNHEALTHY),
    (PROBATION, Verdict.OK, PROBATION),
    (PROBATION, Verdict.DEGRADED, PROBATION),
    (PROBATION, Verdict.FAILING, UNHEALTHY),
    (PROBATION, ProbePassed(), PROBATION),  # 1 of 3: probation is not complete
    (PROBATION, ProbeFailed(), UNHEALTHY),
    (PROBATION, CooldownRequested(DUE + 1), PROBATION),
    (PROBATION, Tick(), PROBATION),
    (PROBATION, HangDetected("hung"), UNHEALTHY),
]


@pytest.mark.parametrize(("state", "event", "after"), EVERY_PAIR)
def test_every_state_and_event_pair(state, event, after):
    """Each (state, event) pair leads where the table says."""
    h = health_in(state)
    assert h.handle(event, DUE) is after
    assert h.state is after


def test_the_table_lists_every_pair_and_the_test_lists_the_table():
    """Every state has a row for every event kind, and EVERY_PAIR covers them all."""
    kinds = {*Verdict, ProbePassed, ProbeFailed, CooldownRequested, Tick, HangDetected}
    assert all(set(row) == kinds for row in TRANSITIONS.values())
    assert set(TRANSITIONS) == set(State)
    tested = {(s, e if isinstance(e, Verdict) else type(e)) for s, e, _ in EVERY_PAIR}
    assert len(tested) == len(EVERY_PAIR) == len(State) * len(kinds)


def test_the_guarded_transitions_are_the_probation_ones():
    """Only the two probe-passed moves out of UNHEALTHY and PROBATION depend on a guard."""
    guarded = {
        (s, k): t for s, row in TRANSITIONS.items() for k, t in row.items() if isinstance(t, When)
    }
    assert guarded == {
        (UNHEALTHY, ProbePassed): When("probation_due", then=PROBATION, otherwise=UNHEALTHY),
        (PROBATION, ProbePassed): When("probation_complete", then=HEALTHY, otherwise=PROBATION),
    }


@pytest.mark.parametrize("state", list(State))
def test_an_event_outside_the_table_names_the_event_the_backend_and_the_state(state):
    """Feeding the machine something that is not an event raises LocalHealthError."""
    h = health_in(state)
    with pytest.raises(LocalHealthError) as info:
        h.handle("probe ok", DUE)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(
        f"can't handle event 'probe ok' for backend 'local' in state {state.name}"
    )
    assert "ProbePassed" in message and "Verdict.FAILING" in message
    assert info.value.code == "health_state" and not info.value.retryable
    assert h.state is state


@pytest.mark.parametrize(
    ("state", "share"), [(HEALTHY, 1.0), (DEGRADED, 0.5), (UNHEALTHY, 0.0), (PROBATION, 0.05)]
)
def test_each_state_has_a_traffic_share(state, share):
    """Healthy takes full weight, degraded half, probation a trickle, unhealthy none."""
    assert TRAFFIC_SHARE[state] == share == health_in(state).traffic_share


# ---------------------------------------------------------------- clocks and counters


def test_a_state_change_restarts_since_and_a_no_op_does_not():
    """since_ms is when the current state began."""
    h = BackendHealth("local", now_ms=T0)
    h.handle(Verdict.OK, T0 + 5)
    assert h.since_ms == T0
    h.handle(Verdict.DEGRADED, T0 + 7)
    assert h.since_ms == T0 + 7 and h.updated_ms == T0 + 7


def test_a_passing_probe_before_probation_is_due_changes_nothing():
    """An unhealthy backend sits out probation_after_ms before a probe can start probation."""
    h = health_in(UNHEALTHY)
    assert h.handle(ProbePassed(), DUE - 1) is UNHEALTHY
    assert h.handle(ProbePassed(), DUE) is PROBATION


def test_a_failing_probe_restarts_the_probation_clock():
    """After a failed probe the backend must sit out a full probation_after_ms again."""
    h = health_in(UNHEALTHY)
    h.handle(ProbeFailed(), DUE - 1)
    assert h.probation_due_ms == DUE - 1 + POLICY.probation_after_ms
    assert h.handle(ProbePassed(), DUE) is UNHEALTHY
    assert h.handle(ProbePassed(), DUE - 1 + POLICY.probation_after_ms) is PROBATION
    assert h.since_ms == DUE - 1 + POLICY.probation_after_ms


@pytest.mark.parametrize("probes", [1, 3, 5])
def test_probation_needs_exactly_probation_probes_passes(probes):
    """On probation, the probation_probes-th consecutive passing probe, not one before, heals."""
    h = BackendHealth("local", now_ms=T0, policy=HealthPolicy(probation_probes=probes))
    h.handle(Verdict.FAILING, T0)
    h.probe(True, 20.0, now_ms=DUE)  # starts probation; does not count
    assert h.state is PROBATION and h.consecutive_probe_passes == 0
    for i in range(1, probes):
        assert h.probe(True, 20.0, now_ms=DUE + i) is PROBATION
        assert h.consecutive_probe_passes == i
        assert h.reason == f"on probation: {i} of {probes} probes passed"
    assert h.probe(True, 20.0, now_ms=DUE + probes) is HEALTHY
    assert h.consecutive_probe_passes == 0


def test_a_failing_probe_on_probation_sends_it_back_and_restarts_the_count():
    """Probe passes must be consecutive: a failure returns the backend to UNHEALTHY."""
    h = health_in(PROBATION)
    h.probe(True, 20.0, now_ms=DUE + 1)
    assert h.probe(False, 20.0, now_ms=DUE + 2) is UNHEALTHY
    assert h.reason == "a probe failed on probation"
    assert h.consecutive_probe_passes == 0
    assert h.probation_due_ms == DUE + 2 + POLICY.probation_after_ms


def test_failing_trickle_traffic_on_probation_sends_it_back():
    """Enough failed real requests on probation are a failing verdict: back to UNHEALTHY."""
    h = health_in(PROBATION)
    for i in range(POLICY.min_samples - 1):
        assert h.observe(False, 5.0, now_ms=DUE + i) is PROBATION
    assert h.observe(False, 5.0, now_ms=DUE + 10) is UNHEALTHY


def test_probation_starts_from_fresh_evidence():
    """The failures that made a backend unhealthy are forgotten when probation starts."""
    h = BackendHealth("local", now_ms=T0)
    for i in range(5):
        h.observe(False, 5.0, now_ms=T0 + i)
    assert h.state is UNHEALTHY and h.window.n == 5
    h.probe(True, 20.0, now_ms=T0 + 4 + POLICY.probation_after_ms)
    assert h.state is PROBATION and (h.window.n, h.window.successes) == (1, 1)


def test_an_unhealthy_backend_ignores_late_successes():
    """Requests still in flight when it failed cannot bring a backend back; only probes can."""
    h = health_in(UNHEALTHY)
    reason = h.reason
    for i in range(50):
        assert h.observe(True, 5.0, now_ms=T0 + i) is UNHEALTHY
    assert h.reason == reason


def test_evidence_expires_with_time():
    """A degraded backend is healthy again once too few requests remain in its window to judge."""
    h = BackendHealth("local", now_ms=T0, policy=HealthPolicy(slow_ms=100.0))
    for i in range(5):
        h.observe(True, 500.0, now_ms=T0 + i)
    assert h.state is DEGRADED
    assert h.tick(T0 + POLICY.window_ms - 1) is DEGRADED
    assert h.tick(T0 + POLICY.window_ms) is HEALTHY
    assert h.reason == "4 requests, fewer than the 5 needed to judge"


# ---------------------------------------------------------------- cooldown (429)


def test_a_cooldown_stops_routing_until_it_ends_without_changing_state():
    """A 429 makes the backend unroutable until until_ms; its health state is untouched."""
    h = BackendHealth("local", now_ms=T0)
    h.observe(True, 5.0, now_ms=T0)
    assert h.cool_down(T0 + 2_000, now_ms=T0 + 1) is HEALTHY
    assert (h.state, h.since_ms, h.cooldown_until_ms) == (HEALTHY, T0, T0 + 2_000)
    assert not h.routable(T0 + 1_999)
    assert h.routable(T0 + 2_000)


def test_the_later_cooldown_wins():
    """A shorter cooldown never cuts a longer one short."""
    h = BackendHealth("local", now_ms=T0)
    h.cool_down(T0 + 5_000, now_ms=T0)
    h.cool_down(T0 + 1_000, now_ms=T0)
    assert h.cooldown_until_ms == T0 + 5_000


def test_a_tick_past_the_cooldown_clears_it():
    """Once time passes until_ms, a tick forgets the cooldown."""
    h = BackendHealth("local", now_ms=T0)
    h.cool_down(T0 + 1_000, now_ms=T0)
    h.tick(T0 + 999)
    assert h.cooldown_until_ms == T0 + 1_000
    h.tick(T0 + 1_000)
    assert h.cooldown_until_ms is None


@pytest.mark.parametrize(
    ("state", "routable"),
    [(HEALTHY, True), (DEGRADED, True), (UNHEALTHY, False), (PROBATION, True)],
)
def test_only_unhealthy_backends_are_unroutable(state, routable):
    """Without a cooldown, every state but UNHEALTHY may take traffic."""
    assert health_in(state).routable(DUE) is routable


# ---------------------------------------------------------------- simulated traffic


def simulate(fail_rate: float, gap_ms: int, requests: int, seed: int) -> tuple[int | None, int]:
    """Feed requests failing at random; return (requests until UNHEALTHY or None, transitions)."""
    rng = random.Random(seed)
    h = BackendHealth("sim", now_ms=0)
    previous, transitions = h.state, 0
    for i in range(1, requests + 1):
        state = h.observe(rng.random() >= fail_rate, 50.0, now_ms=i * gap_ms)
        transitions += state is not previous
        previous = state
        if state is UNHEALTHY:
            return i, transitions
    return None, transitions


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("gap_ms", [6_000, 1_000, 10])
def test_a_backend_failing_5_percent_is_never_unhealthy(gap_ms, seed):
    """10,000 requests failing 5% at random never make a backend UNHEALTHY, whether its
    window holds 5 requests (one every 6 s), 30 (one a second) or 1,000 (100 a second)."""
    until_unhealthy, _ = simulate(0.05, gap_ms, 10_000, seed)
    assert until_unhealthy is None


@pytest.mark.parametrize("policy", [HealthPolicy(), HealthPolicy(min_samples=10, z=1.96)])
def test_a_backend_failing_every_request_is_unhealthy_after_min_samples(policy):
    """A dead backend is UNHEALTHY at its min_samples-th request, not before."""
    h = BackendHealth("dead", now_ms=T0, policy=policy)
    for i in range(1, policy.min_samples):
        assert h.observe(False, 1.0, now_ms=T0 + i) is HEALTHY
    assert h.observe(False, 1.0, now_ms=T0 + policy.min_samples) is UNHEALTHY


def test_a_dead_backends_reason_gives_the_numbers():
    """The reason states the rate, its interval, the count and the threshold crossed."""
    h = BackendHealth("dead", now_ms=T0)
    for i in range(5):
        h.observe(False, 1.0, now_ms=T0 + i)
    assert h.reason == "success rate 0% (99.95% CI 0%\u201371%) over 5 requests, below 80%"


def test_a_backend_failing_half_its_requests_is_caught_within_a_few_dozen():
    """Over 200 seeds at one request a second, a 50%-failing backend is UNHEALTHY after a
    median of 19 requests and at most 100."""
    counts = [simulate(0.5, 1_000, 100, seed)[0] for seed in range(200)]
    assert None not in counts
    assert statistics.median(counts) <= 20  # type: ignore[type-var]


# ---------------------------------------------------------------- invariants


events = st.lists(
    st.tuples(
        st.sampled_from(["ok", "fail", "probe_ok", "probe_fail", "tick", "cooldown"]),
        st.integers(0, 15_000),
    ),
    max_size=80,
)


@given(events)
def test_every_move_is_one_the_table_allows(script):
    """Whatever the signals, each state change is an entry of TRANSITIONS."""
    h = BackendHealth("local", now_ms=0)
    now = 0
    for signal, step in script:
        now += step
        before = h.state
        if signal in ("ok", "fail"):
            h.observe(signal == "ok", 10.0, now)
        elif signal.startswith("probe"):
            h.probe(signal == "probe_ok", 10.0, now)
        elif signal == "tick":
            h.tick(now)
        else:
            h.cool_down(now + step, now_ms=now)
        allowed = {before}
        for target in TRANSITIONS[before].values():
            allowed |= {target.then, target.otherwise} if isinstance(target, When) else {target}
        for target in TRANSITIONS[h.state].values():  # a probe may chain into a verdict
            allowed |= {target.then, target.otherwise} if isinstance(target, When) else {target}
        assert h.state in allowed
        assert h.consecutive_probe_passes < POLICY.probation_probes
        assert h.routable(now) is (h.state is not UNHEALTHY and (h.cooldown_until_ms or 0) <= now)


# ---------------------------------------------------------------- repr and wire


def test_repr_shows_backend_state_since_count_and_rate():
    """The repr is enough to read a backend's health in a failing test."""
    h = BackendHealth("local", now_ms=T0)
    assert repr(h) == f"<BackendHealth local state=HEALTHY since={T0} n=0 ok=n/a>"
    for i, ok in enumerate([True] * 3 + [False] * 22):
        h.observe(ok, 5.0, now_ms=T0 + i)
    assert repr(h) == f"<BackendHealth local state=UNHEALTHY since={T0 + 9} n=25 ok=12%>"
    h.cool_down(T0 + 60_000, now_ms=T0 + 30)
    assert repr(h).endswith(f"ok=12% cooldown_until={T0 + 60_000}>")


def test_the_wire_record_has_the_documented_fields():
    """to_wire is compact JSON with every field the health topic promises."""
    h = BackendHealth("local", now_ms=T0)
    for i, latency in enumerate([10.0, 20.0, 30.0, 40.0]):
        h.observe(True, latency, now_ms=T0 + i)
    h.observe(False, 1.0, now_ms=T0 + 4)
    wire = orjson.loads(h.to_wire())
    assert wire == {
        "backend": "local",
        "state": "healthy",
        "since_ms": T0,
        "reason": "success rate 80% (99.95% CI 19%\u201399%) over 5 requests",
        "success_low": wire["success_low"],
        "success_high": wire["success_high"],
        "n": 5,
        "p50_ms": 20.0,
        "p95_ms": 40.0,
        "p99_ms": 40.0,
        "ewma_ms": 20.5,  # 10, 12, 15.6, 20.48: failures do not move it
        "cooldown_until_ms": None,
        "updated_ms": T0 + 4,
        "probe_ok": None,
        "probe_latency_ms": None,
        "probe_at_ms": None,
        "probe_error": None,
        "in_flight": 0,
        "oldest_call_ms": None,
    }
    low, high = wilson_interval(4, 5, POLICY.z)
    assert (wire["success_low"], wire["success_high"]) == (round(low, 4), round(high, 4))
    assert h.record().key == b"local"


def test_a_backend_resumes_from_its_wire_record():
    """from_wire restores state, clocks, reason and cooldown; the evidence starts empty."""
    h = health_in(UNHEALTHY)
    h.cool_down(T0 + 9_000, now_ms=T0 + 1)
    back = BackendHealth.from_wire(h.to_wire())
    assert (back.backend_id, back.state, back.since_ms, back.reason, back.cooldown_until_ms) == (
        "local",
        UNHEALTHY,
        T0,
        h.reason,
        T0 + 9_000,
    )
    assert back.updated_ms == h.updated_ms and back.window.n == 0
    assert back.handle(ProbePassed(), DUE) is PROBATION


finite = st.floats(allow_nan=False, allow_infinity=False)
records = st.builds(
    HealthRecord,
    backend=st.text(min_size=1, max_size=20),
    state=st.sampled_from(State),
    since_ms=st.integers(0, 2**53),
    reason=st.text(max_size=80),
    success_low=finite,
    success_high=finite,
    n=st.integers(0, 10_000),
    p50_ms=st.none() | finite,
    p95_ms=st.none() | finite,
    p99_ms=st.none() | finite,
    ewma_ms=st.none() | finite,
    cooldown_until_ms=st.none() | st.integers(0, 2**53),
    updated_ms=st.integers(0, 2**53),
)


@given(records)
def test_health_records_round_trip(record):
    """HealthRecord.from_wire(record.to_wire()) is the same record."""
    assert HealthRecord.from_wire(record.to_wire()) == record


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"backend": "local", "state": "asleep"}', "does not match HealthRecord"),
    ],
)
def test_a_bad_health_record_is_refused(raw, complaint):
    """A malformed record raises InvalidHealthRecord saying what was wrong."""
    with pytest.raises(InvalidHealthRecord, match=complaint):
        HealthRecord.from_wire(raw)


def _bursty(policy, seed):
    """A settled usual of 10 ms, then bursts: 5 answers at 40-80 ms, 5 at 10-30 ms, ...
    (what a saturated worker's own queue does to the latency it measures). Returns the
    answers at which the state changed."""
    rng = random.Random(seed)
    h = BackendHealth("local", now_ms=T0, policy=policy)
    t = T0
    for _ in range(1000):
        t += 10
        h.observe(True, 10.0, t)
    changes = []
    for i in range(300):
        t += 10
        before = h.state
        h.observe(True, rng.uniform(40.0, 80.0) if (i // 5) % 2 == 0 else rng.uniform(10, 30), t)
        if h.state is not before:
            changes.append((i, h.state))
    return changes


@pytest.mark.parametrize("seed", range(4))
def test_bursty_latency_does_not_flip_the_state_back_and_forth(seed):
    """With one bar and no time the slow verdict must last, the bursts flipped HEALTHY ->
    DEGRADED -> HEALTHY within an answer or two, again and again. By default a burst
    shorter than slow_for_ms (1 s) changes nothing."""
    flips = _bursty(HealthPolicy(recover_factor=None, slow_for_ms=0), seed)
    assert len(flips) >= 4 and flips[1][0] - flips[0][0] <= 2
    assert _bursty(HealthPolicy(), seed) == []


def _steady(h, latency_ms, t, n):
    for _ in range(n):
        t += 10
        h.observe(True, latency_ms, t)
    return t


def test_lasting_slowness_degrades_after_slow_for_ms_and_recovers_under_the_lower_bar():
    """10 ms as usual, then 100 ms answers every 10 ms: HEALTHY (saying how long it has
    been slow) until slow_for_ms (250 ms) has passed, then DEGRADED, naming the bar it
    crossed. It stays DEGRADED at 3x its usual (above the 2x recovery bar) and recovers
    at its usual."""
    h = BackendHealth("local", now_ms=T0)
    t = _steady(h, 10.0, T0, 1000)
    t = _steady(h, 100.0, t, 20)
    assert h.state is State.HEALTHY
    assert "ms of the 250 needed" in h.reason and "above 4x" in h.reason
    slow = 20
    while h.state is State.HEALTHY:
        t = _steady(h, 100.0, t, 1)
        slow += 1
    assert h.state is State.DEGRADED and 25 <= slow <= 30
    assert "above 4x" in h.reason and "needed" not in h.reason
    t = _steady(h, 3 * h.window.usual_ms, t, 20)
    assert h.state is State.DEGRADED
    assert "not yet back under 2x" in h.reason
    _steady(h, h.window.usual_ms, t, 20)
    assert h.state is State.HEALTHY


def test_failures_degrade_at_once_whatever_slow_for_ms():
    """slow_for_ms delays only a verdict of slowness alone: failures are not held back."""
    h = BackendHealth("local", now_ms=T0, policy=HealthPolicy(slow_for_ms=60_000))
    t = _steady(h, 10.0, T0, 100)
    for _ in range(20):
        t += 10
        h.observe(False, 10.0, t)
    assert h.state is not State.HEALTHY


def test_loop_lag_set_on_the_book_reaches_every_machine():
    from turnout.health.book import HealthBook

    book = HealthBook(["a", "b"], now_ms=T0)
    book.loop_lag(12.5)
    assert {m.local_lag_ms for m in book.machines.values()} == {12.5}


def test_a_slow_spell_counts_only_while_healthy_throughout():
    """Slow answers while on probation do not start the spell: back to HEALTHY, the
    first slow answer does not degrade at once, it has its own 250 ms to last."""
    h = BackendHealth("local", now_ms=T0)
    t = _steady(h, 10.0, T0, 1000)
    h.handle(HangDetected("a call in flight for 3 s, nothing completed"), t)
    assert h.state is State.UNHEALTHY
    t += h.policy.probation_after_ms
    h.probe(True, 10.0, t)
    assert h.state is State.PROBATION
    t = _steady(h, 10.0, t, 200)  # fresh evidence: a usual of 10 ms
    t = _steady(h, 200.0, t, 40)  # slow on probation, longer than slow_for_ms
    for _ in range(h.policy.probation_probes):
        t += 10
        h.probe(True, 200.0, t)
    assert h.state is State.HEALTHY
    t = _steady(h, 200.0, t, 1)
    assert h.state is State.HEALTHY and "of the 250 needed" in h.reason
