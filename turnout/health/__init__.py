"""Backend health, decided in pure code: evidence in ``stats``, the state machine in ``machine``.

The prober and the agents that feed outcomes in and publish ``turnout.health`` live at
the edge; nothing here awaits, reads a clock or does I/O.
"""

from turnout.health.machine import (
    TRAFFIC_SHARE,
    TRANSITIONS,
    BackendHealth,
    CooldownRequested,
    Event,
    HangDetected,
    HealthRecord,
    InvalidHealthRecord,
    LocalHealthError,
    ProbeFailed,
    ProbePassed,
    State,
    Tick,
    When,
)
from turnout.health.stats import (
    Evidence,
    HealthPolicy,
    Verdict,
    Window,
    assess,
    confidence_of,
    wilson_interval,
)

__all__ = [
    "TRAFFIC_SHARE",
    "TRANSITIONS",
    "BackendHealth",
    "CooldownRequested",
    "Event",
    "Evidence",
    "HangDetected",
    "HealthPolicy",
    "HealthRecord",
    "InvalidHealthRecord",
    "LocalHealthError",
    "ProbeFailed",
    "ProbePassed",
    "State",
    "Tick",
    "Verdict",
    "When",
    "Window",
    "assess",
    "confidence_of",
    "wilson_interval",
]
