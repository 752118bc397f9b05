"""The worker's own event-loop lag, as health judgement needs it. Pure.

Every latency a worker measures includes the time the answer waited in its own
event loop's ready queue. An overloaded worker sees every backend slow by that
much; ``Evidence`` takes this estimate off the latency EWMA before comparing it
with the backend's usual, so the worker does not blame its backends for its queue.

The runtime samples how late a short sleep wakes (``overshoot_ms``) every
``SAMPLE_S``; the estimate is their moving average over about a second, so one
late timer neither clears nor condemns a backend. It is a lower bound of the
worker's share: an answer passes through the loop more than once on its way back.

>>> lag = LoopLag()
>>> [round(lag.add(ms), 2) for ms in (20.0, 20.0, 0.0)]
[2.0, 3.8, 3.42]
>>> for _ in range(40):
...     _ = lag.add(20.0)
>>> round(lag.ms, 1)
19.8
>>> round(lag.add(-5.0), 1)  # a clock that ran early counts as no lag, not as -5
17.8
"""

from __future__ import annotations

SAMPLE_S = 0.1
ALPHA = 0.1
"""Per sample: a time constant of about one second at ``SAMPLE_S``."""


class LoopLag:
    def __init__(self) -> None:
        self.ms = 0.0

    def __repr__(self) -> str:
        return f"<LoopLag {self.ms:.1f} ms>"

    def add(self, overshoot_ms: float) -> float:
        """One sample of how late a timer fired; returns the estimate after it."""
        self.ms += ALPHA * (max(overshoot_ms, 0.0) - self.ms)
        return self.ms
