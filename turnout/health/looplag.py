"""The worker's own event-loop lag, as health judgement needs it. Pure.

Every latency a worker measures includes the time the answer waited in its own
event loop's ready queue. An overloaded worker sees every backend slow by that
much; ``Evidence`` takes this estimate off the latency EWMA before comparing it
with the backend's usual, so the worker does not blame its backends for its queue.

The runtime samples how late a short sleep wakes (``overshoot_ms``) every
``SAMPLE_S``; the estimate rises at once to a larger sample and decays by half
per sample, since a late answer was delayed by the queue as it was when the
answer arrived, which the most recent large sample best describes.

>>> lag = LoopLag()
>>> lag.add(0.3), lag.add(24.0), lag.add(2.0), lag.add(1.0)
(0.3, 24.0, 12.0, 6.0)
>>> lag.add(-0.5)  # a clock that ran early counts as no lag
3.0
"""

from __future__ import annotations

SAMPLE_S = 0.1


class LoopLag:
    def __init__(self) -> None:
        self.ms = 0.0

    def __repr__(self) -> str:
        return f"<LoopLag {self.ms:.1f} ms>"

    def add(self, overshoot_ms: float) -> float:
        """One sample of how late a timer fired; returns the estimate after it."""
        self.ms = max(max(overshoot_ms, 0.0), self.ms / 2)
        return self.ms
