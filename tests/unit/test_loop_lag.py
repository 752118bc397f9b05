"""The worker's own event-loop lag: the estimate (pure) and the runtime's watch that feeds
it to health judgement and the metrics."""

import asyncio
import doctest
import time

from hypothesis import given
from hypothesis import strategies as st

from streams.runtime import Runtime
from turnout.health import looplag
from turnout.health.book import HealthBook
from turnout.health.looplag import LoopLag
from turnout.worker.metrics import Metrics


def test_the_doctests():
    assert doctest.testmod(looplag).failed == 0


@given(st.lists(st.floats(-5.0, 500.0), min_size=1, max_size=50))
def test_the_estimate_stays_within_the_samples_and_is_never_negative(samples):
    """A moving average: between 0 and the largest sample so far, never below zero."""
    lag = LoopLag()
    for i, sample in enumerate(samples):
        got = lag.add(sample)
        assert 0.0 <= got <= max(max(samples[: i + 1]), 0.0) + 1e-9


async def test_a_blocked_loop_reaches_health_and_the_metrics():
    """The loop held for 200 ms by a blocking call: the timer due meanwhile fires late, and every
    backend's machine and the gauge get it."""

    class Bare:  # the two attributes the watch uses
        health = HealthBook(["a", "b"], now_ms=0)
        metrics = Metrics(backends=["a", "b"], prices={}, request_topic="t")

    bare = Bare()
    watch = asyncio.create_task(Runtime._watch_loop_lag(bare))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    time.sleep(0.2)  # noqa: ASYNC251 - the point: a loop too busy to run its timers
    await asyncio.sleep(0.15)
    watch.cancel()
    seen = {m.local_lag_ms for m in bare.health.machines.values()}
    assert len(seen) == 1 and seen.pop() >= 5.0  # 10% of a ~100 ms late timer at least
    assert bare.metrics.loop_lag_gauge._value.get() >= 0.005
