"""Health evidence: the Wilson interval, the sliding window and the verdict it supports."""

import random
from math import comb

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.health import HealthPolicy, Verdict, Window, assess, confidence_of, wilson_interval

# ---------------------------------------------------------------- wilson_interval


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # 0/n: low = 0, high = z²/(n + z²) = 3.8416/13.8416
        (0, 10, 0.0, 0.27754),
        # n/n: low = n/(n + z²) = 10/13.8416
        (10, 10, 0.72246, 1.0),
        # 5/10: centre 0.5, half-width 1.96/1.38416 * sqrt(0.025 + 0.009604)
        (5, 10, 0.23659, 0.76341),
        # 95/100: centre 0.969208/1.038416, half-width 1.96/1.038416 * sqrt(0.000475 + 0.00009604)
        (95, 100, 0.88825, 0.97846),
    ],
)
def test_wilson_interval_matches_reference_values(successes, n, low, high):
    """The 95% Wilson interval matches values worked out by hand from the formula."""
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=1e-5)


def test_wilson_interval_of_nothing_is_everything():
    """With no requests the success rate could be anything: (0, 1)."""
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(("successes", "n"), [(-1, 5), (6, 5), (0, -1)])
def test_wilson_interval_rejects_impossible_counts(successes, n):
    """More successes than requests, or negative counts, are a caller's bug."""
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson_interval(successes, n)


@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_holds_the_point_estimate_and_mirrors(counts):
    """The interval lies in [0, 1], contains s/n, and failures mirror successes."""
    s, n = counts
    low, high = wilson_interval(s, n)
    assert 0.0 <= low <= s / n <= high <= 1.0
    mirror_low, mirror_high = wilson_interval(n - s, n)
    assert (low, high) == pytest.approx((1 - mirror_high, 1 - mirror_low), abs=1e-12)


def test_a_higher_z_widens_the_interval():
    """More confidence costs width: z = 3.5 gives a wider interval than z = 1.96."""
    narrow, wide = wilson_interval(20, 25, 1.96), wilson_interval(20, 25, 3.5)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]


def test_confidence_of_names_the_level_of_a_z_score():
    """z = 1.96 is a 95% interval and z = 3.5 a 99.95% one."""
    assert confidence_of(1.96) == pytest.approx(0.95, abs=1e-4)
    assert confidence_of(3.5) == pytest.approx(0.99953, abs=1e-5)


# ---------------------------------------------------------------- Window


def test_an_empty_window_has_no_numbers():
    """An empty window counts zero and has no percentiles and no EWMA."""
    w = Window()
    assert (w.n, w.successes, w.failures) == (0, 0, 0)
    assert w.percentile(50) is None and w.ewma_ms is None
    assert w.success_interval() == (0.0, 1.0)
    assert repr(w) == "<Window n=0 ok=0 window_ms=30000 max_samples=1000>"


def test_the_window_counts_outcomes():
    """Recording counts requests, successes and failures."""
    w = Window()
    for i, ok in enumerate([True, True, False, True]):
        w.record(ok, 10.0, now_ms=i)
    assert (w.n, w.successes, w.failures) == (4, 3, 1)
    assert repr(w) == "<Window n=4 ok=3 window_ms=30000 max_samples=1000>"


def test_outcomes_leave_the_window_exactly_window_ms_later():
    """An outcome recorded at t is counted at t + window_ms - 1 and gone at t + window_ms."""
    w = Window(window_ms=1000)
    w.record(False, 10.0, now_ms=0)
    w.record(True, 20.0, now_ms=500)
    w.prune(999)
    assert w.n == 2
    w.prune(1000)
    assert (w.n, w.successes) == (1, 1)
    w.prune(1500)
    assert w.n == 0 and w.percentile(50) is None


def test_the_window_keeps_at_most_max_samples():
    """Past max_samples the oldest outcome goes first, with its latency."""
    w = Window(max_samples=3)
    for i, (ok, latency) in enumerate([(True, 1.0), (False, 2.0), (True, 3.0), (True, 4.0)]):
        w.record(ok, latency, now_ms=i)
    assert (w.n, w.successes) == (3, 2)
    assert w.percentile(0) == 3.0


def test_percentiles_are_nearest_rank_over_answers():
    """With latencies 1..100 ms, p50 is 50, p95 is 95 and p99 is 99."""
    w = Window()
    for latency in range(100, 0, -1):
        w.record(True, float(latency), now_ms=0)
    assert [w.percentile(p) for p in (50, 95, 99, 100)] == [50.0, 95.0, 99.0, 100.0]


def test_failures_count_against_the_rate_but_not_the_latency():
    """A failure's latency (how fast it failed) stays out of percentiles and the EWMA."""
    w = Window()
    w.record(True, 100.0, now_ms=0)
    w.record(False, 1.0, now_ms=1)
    assert w.percentile(50) == 100.0 and w.ewma_ms == 100.0
    assert (w.n, w.successes) == (2, 1)


def test_percentile_outside_0_to_100_is_refused():
    """A percentile must lie between 0 and 100."""
    with pytest.raises(ValueError, match="between 0 and 100"):
        Window().percentile(101)


def test_the_ewma_weights_recent_latency_by_alpha():
    """With alpha 0.5 the EWMA of 100, 200, 400 ms is 100, 150, then 275 ms."""
    w = Window(ewma_alpha=0.5)
    seen = []
    for latency in (100.0, 200.0, 400.0):
        w.record(True, latency, now_ms=0)
        seen.append(w.ewma_ms)
    assert seen == [100.0, 150.0, 275.0]


def test_the_ewma_outlives_pruning_but_not_clearing():
    """Pruning forgets outcomes but keeps the EWMA; clear forgets both."""
    w = Window(window_ms=10)
    w.record(True, 80.0, now_ms=0)
    w.prune(100)
    assert w.n == 0 and w.ewma_ms == 80.0
    w.clear()
    assert w.ewma_ms is None


def test_a_time_that_goes_backwards_counts_as_the_latest_seen():
    """An out-of-order now_ms is recorded at the latest time seen, so it expires with it."""
    w = Window(window_ms=100)
    w.record(True, 1.0, now_ms=1000)
    w.record(False, 1.0, now_ms=10)
    w.prune(1099)
    assert w.n == 2
    w.prune(1100)
    assert w.n == 0


@pytest.mark.parametrize(
    "kwargs", [{"window_ms": 0}, {"max_samples": 0}, {"ewma_alpha": 0.0}, {"ewma_alpha": 1.5}]
)
def test_a_window_with_impossible_bounds_is_refused(kwargs):
    """Window size, sample cap and alpha must make sense."""
    with pytest.raises(ValueError, match="must be"):
        Window(**kwargs)


outcomes = st.lists(
    st.tuples(st.booleans(), st.floats(0, 10_000), st.integers(0, 400)), max_size=200
)


@given(outcomes)
def test_the_window_agrees_with_a_naive_model(events):
    """Counts and percentiles equal those of a plain list filtered by time and size."""
    w = Window(window_ms=1000, max_samples=50)
    model: list[tuple[int, bool, float]] = []
    now = 0
    for ok, latency, step in events:
        now += step
        w.record(ok, latency, now_ms=now)
        model = [s for s in [*model, (now, ok, latency)] if s[0] > now - 1000][-50:]
        answers = sorted(lat for _, good, lat in model if good)
        assert w.n == len(model)
        assert w.successes == len(answers)
        if answers:
            assert w.percentile(95) == answers[max(1, -(-95 * len(answers) // 100)) - 1]


# ---------------------------------------------------------------- Evidence and Verdict

DEFAULT = HealthPolicy()


def judged(outcomes: list[bool], policy: HealthPolicy = DEFAULT, latency_ms: float = 10.0):
    w = policy.new_window()
    for i, ok in enumerate(outcomes):
        w.record(ok, latency_ms, now_ms=i)
    return assess(w, policy)


def test_five_failures_out_of_five_are_failing():
    """With min_samples 5 and the default policy, 5 consecutive failures condemn a backend."""
    evidence = judged([False] * 5)
    assert evidence.high == pytest.approx(12.25 / 17.25)  # z²/(n + z²) < 0.8
    assert evidence.verdict is Verdict.FAILING
    assert evidence.reason == "success rate 0% (99.95% CI 0%\u201371%) over 5 requests, below 80%"


def test_four_requests_are_too_few_to_judge():
    """Below min_samples the verdict is OK, however bad the requests were."""
    evidence = judged([False] * 4)
    assert evidence.verdict is Verdict.OK and evidence.is_healthy
    assert evidence.reason == "4 requests, fewer than the 5 needed to judge"


@pytest.mark.parametrize(
    ("n", "fewest_failures"), [(5, 5), (10, 7), (20, 11), (30, 14), (100, 35), (1000, 245)]
)
def test_how_many_failures_the_default_policy_needs(n, fewest_failures):
    """A window of n requests is FAILING from this many failures on, and not one fewer."""
    assert judged([False] * fewest_failures + [True] * (n - fewest_failures)).is_failing
    assert not judged(
        [False] * (fewest_failures - 1) + [True] * (n - fewest_failures + 1)
    ).is_failing


def test_a_95_percent_policy_reports_a_95_percent_interval():
    """The reason names the interval's confidence, its bounds and the threshold crossed."""
    evidence = judged([True] * 3 + [False] * 22, HealthPolicy(z=1.96))
    assert evidence.reason == "success rate 12% (95% CI 4%\u201330%) over 25 requests, below 80%"


def test_a_rate_shown_below_degraded_below_is_degraded():
    """880 of 1000 is clearly under 95% but clearly over 80%: DEGRADED, not FAILING."""
    evidence = judged([True] * 880 + [False] * 120)
    assert evidence.verdict is Verdict.DEGRADED
    assert evidence.reason.endswith("over 1000 requests, below 95%")


def test_a_perfect_record_is_healthy():
    """A lower bound above degraded_below is healthy, and the reason states the rate."""
    evidence = judged([True] * 1000)
    assert evidence.low > 0.95 and evidence.verdict is Verdict.OK
    assert evidence.reason == "success rate 100% (99.95% CI 99%\u2013100%) over 1000 requests"


def test_a_slow_p95_is_degraded_when_slow_ms_is_set():
    """p95 latency above slow_ms degrades a backend that never fails."""
    slow = HealthPolicy(slow_ms=500.0)
    assert judged([True] * 10, slow, latency_ms=800.0).verdict is Verdict.DEGRADED
    assert judged([True] * 10, slow, latency_ms=800.0).reason == (
        "p95 latency 800 ms over 10 requests, above 500 ms"
    )
    assert judged([True] * 10, slow, latency_ms=400.0).verdict is Verdict.OK
    assert judged([True] * 10, DEFAULT, latency_ms=800.0).verdict is Verdict.OK


def _false_failing_probability(n: int, policy: HealthPolicy, fail_rate: float) -> float:
    """P(a window of n requests from a backend failing at fail_rate is judged FAILING)."""
    fewest = next(
        f for f in range(n + 1) if wilson_interval(n - f, n, policy.z)[1] < policy.unhealthy_below
    )
    q = fail_rate
    return sum(comb(n, f) * q**f * (1 - q) ** (n - f) for f in range(fewest, n + 1))


def test_a_5_percent_failure_rate_is_almost_never_failing_at_any_window_size():
    """For every window of 5 to 300 requests, a 5%-failing backend is judged FAILING with
    probability under 2e-6 per verdict: fewer than 0.02 expected in 10,000 verdicts."""
    worst = max(_false_failing_probability(n, DEFAULT, 0.05) for n in range(5, 301))
    assert worst < 2e-6


def test_at_z_1_96_the_same_backend_would_flap():
    """The reason the default z is 3.5: at 1.96, 5-request windows are FAILING ~1 in 860."""
    p = _false_failing_probability(5, HealthPolicy(z=1.96), 0.05)
    assert 1 / p == pytest.approx(860, rel=0.01)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"unhealthy_below": 0.96},
        {"degraded_below": 1.5},
        {"unhealthy_below": 0.0},
        {"min_samples": 0},
        {"probation_probes": 0},
        {"probation_after_ms": -1},
        {"z": 0.0},
        {"recover_factor": 5.0},
        {"recover_factor": 0.5},
    ],
)
def test_an_inconsistent_policy_is_refused(kwargs):
    """Thresholds that contradict each other fail at construction, naming the values."""
    with pytest.raises(ValueError, match="got"):
        HealthPolicy(**kwargs)


# ---------------------------------------------------------------- slower than usual


def _answers(window, latencies, start_ms=0):
    for i, latency in enumerate(latencies):
        window.record(True, latency, start_ms + i)


def test_a_backend_at_ten_times_its_usual_latency_is_degraded():
    """20 ms as usual, then 200 ms: DEGRADED within a few answers, and the reason says why."""
    policy = HealthPolicy()
    w = policy.new_window()
    _answers(w, [20.0] * 30)
    assert assess(w, policy).verdict is Verdict.OK
    _answers(w, [200.0] * 4, start_ms=100)
    evidence = assess(w, policy)
    assert evidence.verdict is Verdict.DEGRADED
    assert "its usual 2" in evidence.reason and "above 4x" in evidence.reason


def test_a_new_usual_latency_is_adopted_in_time():
    """A backend that stays at its new latency is judged against it after a few dozen answers."""
    policy = HealthPolicy()
    w = policy.new_window()
    _answers(w, [20.0] * 30)
    _answers(w, [200.0] * 60, start_ms=100)
    assert assess(w, policy).verdict is Verdict.OK


def test_too_few_answers_say_nothing_about_the_usual():
    """Before slow_after_answers answers, slowness relative to the usual is not judged."""
    policy = HealthPolicy()
    w = policy.new_window()
    _answers(w, [20.0] * 10 + [400.0] * 5)
    assert assess(w, policy).verdict is Verdict.OK


@given(st.integers(0, 10_000))
def test_jitter_within_a_few_times_is_never_slow(seed):
    """Latency varying uniformly between 10 and 30 ms never reads as slower than usual."""
    rng = random.Random(seed)
    policy = HealthPolicy()
    w = policy.new_window()
    for i in range(300):
        w.record(True, rng.uniform(10.0, 30.0), i)
        assert not assess(w, policy).is_slower_than_usual


def test_slowness_relative_to_the_usual_can_be_turned_off():
    """slow_factor=None judges success rate (and slow_ms) only."""
    policy = HealthPolicy(slow_factor=None)
    w = policy.new_window()
    _answers(w, [20.0] * 30 + [2000.0] * 10)
    assert assess(w, policy).verdict is Verdict.OK


def test_a_slow_first_answer_does_not_set_the_usual():
    """A cold start's 300 ms among 200 answers of 25 ms: the usual is about 25 ms."""
    policy = HealthPolicy()
    w = policy.new_window()
    _answers(w, [300.0] + [25.0] * 200)
    assert 25.0 <= w.usual_ms < 27.0
    _answers(w, [210.0] * 3, start_ms=1000)
    assert assess(w, policy).verdict is Verdict.DEGRADED


def test_the_workers_own_loop_lag_is_not_blamed_on_the_backend():
    """4 ms as usual, then 27 ms answers of which 24 ms were the worker's own queue: an
    overloaded worker, not a slow backend. Net of the lag it is OK; the same latency with
    no lag is slow, and a reason given net of lag says how much lag it took off."""
    policy = HealthPolicy()
    w = policy.new_window()
    _answers(w, [4.0] * 1000)  # a settled usual
    _answers(w, [27.0] * 10, start_ms=2000)
    assert assess(w, policy).verdict is Verdict.DEGRADED
    assert assess(w, policy, local_lag_ms=24.0).verdict is Verdict.OK
    slow = assess(w, policy, local_lag_ms=5.0)
    assert slow.verdict is Verdict.DEGRADED
    assert "loop lag of 5 ms" in slow.reason and "above 4x" in slow.reason


def test_a_latency_degraded_backend_recovers_only_under_the_lower_bar():
    """Hysteresis: at 3x its usual a backend is not degraded, but one already degraded
    stays so until it is back under recover_factor (2x)."""
    policy = HealthPolicy()
    w = policy.new_window()
    _answers(w, [10.0] * 1000)  # a settled usual
    _answers(w, [30.0] * 20, start_ms=2000)
    assert assess(w, policy).verdict is Verdict.OK
    still = assess(w, policy, recovering=True)
    assert still.verdict is Verdict.DEGRADED
    assert "not yet back under 2x" in still.reason
    _answers(w, [12.0] * 20, start_ms=3000)
    assert assess(w, policy, recovering=True).verdict is Verdict.OK
    off = HealthPolicy(recover_factor=None)
    assert assess(w, off, recovering=True).verdict is Verdict.OK

