"""Passive health evidence: a sliding window of outcomes and the verdict it supports. Pure.

No clock and no I/O: every call that depends on time takes ``now_ms``.

``Window`` keeps the last ``window_ms`` of outcomes (at most ``max_samples``) and
answers: how many requests, how many succeeded, the Wilson interval of the success
rate, latency percentiles and an EWMA of latency. Latency statistics cover answers
only (successful outcomes): how fast a backend fails says nothing about how fast it
answers, and failures are already counted by the success rate.

``assess(window, policy)`` turns a window into ``Evidence`` and a ``Verdict``. It judges
the confidence interval, not the point estimate, so a handful of unlucky requests
cannot condemn a good backend, yet a dead one is condemned in a handful of requests:

    FAILING   the interval's UPPER bound is below ``unhealthy_below``
    DEGRADED  the interval's UPPER bound is below ``degraded_below``,
              or p95 latency is above ``slow_ms`` (when set),
              or recent latency (EWMA) is over ``slow_factor`` times the backend's
              usual latency (a slow EWMA of every answer it gave)
    OK        otherwise: the rate is not shown to be low. This covers a lower bound
              above ``degraded_below`` and too little evidence to say anything
              (fewer than ``min_samples`` requests).
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import math
from collections import deque


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate; ``(0.0, 1.0)`` when ``n`` is 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At 0 and n the bounds are exactly 0 and 1; rounding must not move them past s/n.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def confidence_of(z: float) -> float:
    """The two-sided confidence level of a z score: 1.96 gives 0.95."""
    return math.erf(z / math.sqrt(2))


class Window:
    """Outcomes from the last ``window_ms`` milliseconds, at most ``max_samples`` of them.

    Times are expected not to go backwards; an earlier ``now_ms`` is treated as the
    latest time seen. Recording and pruning are O(log n) plus a small memmove, so
    thousands of records a second are cheap.
    """

    def __init__(
        self, *, window_ms: int = 30_000, max_samples: int = 1_000, ewma_alpha: float = 0.2
    ) -> None:
        if window_ms <= 0 or max_samples <= 0:
            raise ValueError(
                f"window_ms and max_samples must be positive, got {window_ms} and {max_samples}"
            )
        if not 0 < ewma_alpha <= 1:
            raise ValueError(f"ewma_alpha must be in (0, 1], got {ewma_alpha}")
        self.window_ms = window_ms
        self.max_samples = max_samples
        self.ewma_alpha = ewma_alpha
        self._samples: deque[tuple[int, bool, float]] = deque()
        self._successes = 0
        self._latencies: list[float] = []  # answers' latencies, kept sorted
        self._latest_ms: int | None = None
        self.ewma_ms: float | None = None
        """Exponentially weighted mean latency of answers; survives pruning."""
        self.usual_ms: float | None = None
        """A slow EWMA (alpha ``usual_alpha``) of answer latency: what is usual for it.
        Bias-corrected (it starts from 0 and is divided by the weight so far), so a slow
        first answer (a cold start) weighs 1/n, not everything; and each answer counts
        at most ``usual_clip`` times the usual, so a slow spell moves it slowly (a lasting
        10x becomes the new usual after about 60 answers)."""
        self.usual_alpha = 0.005
        self.usual_clip = 4.0
        self._usual_sum = 0.0
        self.answers = 0
        """Answers recorded since the window was created or cleared, pruned ones included."""

    def __repr__(self) -> str:
        return (
            f"<Window n={self.n} ok={self.successes} window_ms={self.window_ms} "
            f"max_samples={self.max_samples}>"
        )

    @property
    def n(self) -> int:
        return len(self._samples)

    @property
    def successes(self) -> int:
        return self._successes

    @property
    def failures(self) -> int:
        return len(self._samples) - self._successes

    def record(self, ok: bool, latency_ms: float, now_ms: int) -> None:
        """Add one outcome at ``now_ms`` and drop what fell out of the window."""
        at = now_ms if self._latest_ms is None else max(now_ms, self._latest_ms)
        self._latest_ms = at
        self._samples.append((at, ok, latency_ms))
        if ok:
            self._successes += 1
            bisect.insort(self._latencies, latency_ms)
            a = self.ewma_alpha
            self.ewma_ms = (
                latency_ms if self.ewma_ms is None else a * latency_ms + (1 - a) * self.ewma_ms
            )
            u = self.usual_alpha
            self.answers += 1
            clipped = (
                latency_ms
                if self.usual_ms is None
                else min(latency_ms, self.usual_clip * self.usual_ms)
            )
            self._usual_sum = u * clipped + (1 - u) * self._usual_sum
            self.usual_ms = self._usual_sum / (1 - (1 - u) ** self.answers)
        while len(self._samples) > self.max_samples:
            self._drop_oldest()
        self.prune(at)

    def prune(self, now_ms: int) -> None:
        """Drop outcomes recorded ``window_ms`` or more before ``now_ms``."""
        cutoff = now_ms - self.window_ms
        while self._samples and self._samples[0][0] <= cutoff:
            self._drop_oldest()

    def clear(self) -> None:
        """Forget every outcome and the EWMA: the next evidence starts from nothing."""
        self._samples.clear()
        self._latencies.clear()
        self._successes = 0
        self.ewma_ms = None
        self.usual_ms = None
        self._usual_sum = 0.0
        self.answers = 0

    def success_interval(self, z: float = 1.96) -> tuple[float, float]:
        return wilson_interval(self._successes, len(self._samples), z)

    def percentile(self, p: float) -> float | None:
        """The nearest-rank ``p``-th percentile (0-100) of answer latency; None with no answers."""
        if not 0 <= p <= 100:
            raise ValueError(f"a percentile is between 0 and 100, got {p}")
        if not self._latencies:
            return None
        rank = max(1, math.ceil(p / 100 * len(self._latencies)))
        return self._latencies[rank - 1]

    def _drop_oldest(self) -> None:
        _, ok, latency_ms = self._samples.popleft()
        if ok:
            self._successes -= 1
            del self._latencies[bisect.bisect_left(self._latencies, latency_ms)]


class Verdict(enum.Enum):
    """What the evidence says about a backend; the machine's passive-traffic event."""

    OK = "ok"
    DEGRADED = "degraded"
    FAILING = "failing"


@dataclasses.dataclass(frozen=True, slots=True)
class HealthPolicy:
    """The thresholds health is judged by.

    Defaults keep a backend failing 5% at random out of UNHEALTHY: ``z`` is 3.5 (a
    99.95% interval), not 1.96, because a verdict follows every request. At 1.96 a
    5%-failing backend with 5 requests in its window is condemned about once per 860
    verdicts; at 3.5 at most about once per 550,000. Five failures out of five still
    condemn a backend (upper bound 0.71 < 0.8).
    """

    window_ms: int = 30_000
    max_samples: int = 1_000
    min_samples: int = 5
    """Fewer requests in the window than this and the verdict is OK: too little to judge."""
    unhealthy_below: float = 0.8
    degraded_below: float = 0.95
    z: float = 3.5
    probation_after_ms: int = 10_000
    """How long an unhealthy backend sits out (one probe interval) before probation."""
    probation_probes: int = 3
    """Consecutive passing probes on probation that make a backend healthy again."""
    ewma_alpha: float = 0.2
    slow_ms: float | None = None
    """p95 latency above this marks a backend degraded; None judges success rate only."""
    slow_factor: float | None = 4.0
    """Recent latency above this many times the backend's usual marks it degraded, once
    it has given ``slow_after_answers`` answers; None turns the check off. The usual
    adapts slowly (a lasting 10x jump is the new usual after about 60 answers)."""
    slow_after_answers: int = 20
    slow_for_ms: int = 250
    """How long recent latency must stay above the slow bar before slowness alone
    degrades a backend (``BackendHealth._judge``). The EWMA spans a few answers, so at
    a thousand answers a second a burst crossed the bar and fell back within 10 ms."""
    recover_factor: float | None = 2.0
    """A backend degraded for latency is judged recovered only once its recent latency
    is back under this many times its usual (hysteresis: at one bar, an EWMA hovering
    near it flipped the state every few answers). None recovers at ``slow_factor``."""
    hang_floor_ms: int = 3_000
    hang_factor: float = 3.0
    """A backend is hung when a call has been in flight, and nothing has completed, for
    ``max(hang_floor_ms, hang_factor x p99)``; see ``turnout.health.hang``."""

    def __post_init__(self) -> None:
        if not 0 < self.unhealthy_below <= self.degraded_below <= 1:
            raise ValueError(
                "need 0 < unhealthy_below <= degraded_below <= 1, got "
                f"unhealthy_below={self.unhealthy_below}, degraded_below={self.degraded_below}"
            )
        if self.min_samples < 1 or self.probation_probes < 1 or self.probation_after_ms < 0:
            raise ValueError(
                "min_samples and probation_probes must be at least 1 and probation_after_ms "
                f"at least 0, got {self.min_samples}, {self.probation_probes}, "
                f"{self.probation_after_ms}"
            )
        if self.z <= 0:
            raise ValueError(f"z must be positive, got {self.z}")
        if (
            self.recover_factor is not None
            and self.slow_factor is not None
            and not 1 <= self.recover_factor <= self.slow_factor
        ):
            raise ValueError(
                "need 1 <= recover_factor <= slow_factor, got "
                f"recover_factor={self.recover_factor}, slow_factor={self.slow_factor}"
            )

    def new_window(self) -> Window:
        return Window(
            window_ms=self.window_ms, max_samples=self.max_samples, ewma_alpha=self.ewma_alpha
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Evidence:
    """A window judged against a policy's thresholds. Build it with ``assess``."""

    n: int
    successes: int
    low: float
    """Lower bound of the success rate's Wilson interval."""
    high: float
    """Upper bound of the success rate's Wilson interval."""
    p95_ms: float | None
    policy: HealthPolicy
    ewma_ms: float | None = None
    usual_ms: float | None = None
    answers: int = 0
    local_lag_ms: float = 0.0
    """The judging worker's own event-loop lag: part of every latency it measures, so
    it is taken off the EWMA before comparing with the usual (an overloaded worker
    must not blame its backends for its own queue)."""
    recovering: bool = False
    """Judged for a backend already degraded: latency must be under ``recover_factor``."""

    @property
    def enough(self) -> bool:
        return self.n >= self.policy.min_samples

    @property
    def is_failing(self) -> bool:
        return self.enough and self.high < self.policy.unhealthy_below

    @property
    def is_slow(self) -> bool:
        slow_ms, p95_ms = self.policy.slow_ms, self.p95_ms
        return self.enough and (
            (slow_ms is not None and p95_ms is not None and p95_ms > slow_ms)
            or self.is_slower_than_usual
        )

    @property
    def slow_only(self) -> bool:
        """Degraded for being slower than usual, and for nothing else."""
        slow_ms, p95_ms = self.policy.slow_ms, self.p95_ms
        return (
            self.is_slower_than_usual
            and self.high >= self.policy.degraded_below
            and not (slow_ms is not None and p95_ms is not None and p95_ms > slow_ms)
        )

    @property
    def slow_bar(self) -> float | None:
        """How many times its usual latency counts as slow now (lower while recovering)."""
        policy = self.policy
        if self.recovering and policy.recover_factor is not None:
            return policy.recover_factor
        return policy.slow_factor

    @property
    def own_ewma_ms(self) -> float | None:
        """The latency EWMA less the worker's own loop lag: the backend's share of it."""
        return None if self.ewma_ms is None else max(self.ewma_ms - self.local_lag_ms, 0.0)

    @property
    def is_slower_than_usual(self) -> bool:
        factor, ewma, usual = self.slow_bar, self.own_ewma_ms, self.usual_ms
        return (
            self.policy.slow_factor is not None
            and factor is not None
            and ewma is not None
            and usual is not None
            and self.answers >= self.policy.slow_after_answers
            and ewma > factor * usual
        )

    @property
    def is_degraded(self) -> bool:
        return self.enough and (self.high < self.policy.degraded_below or self.is_slow)

    @property
    def is_healthy(self) -> bool:
        """The rate is not shown to be low: a lower bound above the bar, or too little data."""
        return not self.is_degraded

    @property
    def verdict(self) -> Verdict:
        if self.is_failing:
            return Verdict.FAILING
        if self.is_degraded:
            return Verdict.DEGRADED
        return Verdict.OK

    @property
    def reason(self) -> str:
        """One human sentence: the numbers behind the verdict."""
        policy = self.policy
        if not self.enough:
            return f"{self.n} requests, fewer than the {policy.min_samples} needed to judge"
        rate = (
            f"success rate {self.successes / self.n:.0%} "
            f"({confidence_of(policy.z) * 100:.4g}% CI "
            f"{self.low:.0%}\N{EN DASH}{self.high:.0%}) over {self.n} requests"
        )
        if self.is_failing:
            return f"{rate}, below {policy.unhealthy_below:.0%}"
        if self.high < policy.degraded_below:
            return f"{rate}, below {policy.degraded_below:.0%}"
        if self.is_slower_than_usual and self.own_ewma_ms and self.usual_ms:
            ewma, lag = self.own_ewma_ms, self.local_lag_ms
            own = f" after the worker's own loop lag of {lag:.0f} ms" if lag >= 0.5 else ""
            bar = (
                f"not yet back under {self.slow_bar:g}x"
                if self.recovering
                else f"above {self.slow_bar:g}x"
            )
            return (
                f"latency {ewma:.0f} ms (EWMA{own}) is {ewma / self.usual_ms:.1f}x "
                f"its usual {self.usual_ms:.0f} ms, {bar}"
            )
        if self.is_slow:
            return (
                f"p95 latency {self.p95_ms:.0f} ms over {self.n} requests, "
                f"above {policy.slow_ms:.0f} ms"
            )
        return rate


def assess(
    window: Window, policy: HealthPolicy, *, local_lag_ms: float = 0.0, recovering: bool = False
) -> Evidence:
    """Judge what ``window`` holds now (prune it first to judge at a later time).

    ``local_lag_ms``: the judging worker's event-loop lag; ``recovering``: the backend
    is degraded already, so latency must fall under the lower ``recover_factor`` bar.
    """
    low, high = window.success_interval(policy.z)
    return Evidence(
        n=window.n,
        successes=window.successes,
        low=low,
        high=high,
        p95_ms=window.percentile(95) if policy.slow_ms is not None else None,
        policy=policy,
        ewma_ms=window.ewma_ms,
        usual_ms=window.usual_ms,
        answers=window.answers,
        local_lag_ms=local_lag_ms,
        recovering=recovering,
    )
