"""Retry decisions and retry guidance, as pure functions of plain values. No clock, no I/O.

``next_step`` decides what follows a failed attempt: another attempt or the final
reply. The rules, in order:

    a stream that already sent chunks     stop: another backend cannot continue it
    the deadline has passed               stop
    the error is not retryable (a 4xx)    stop
    ``max_attempts`` calls reached a backend  stop
    the call never reached the backend    retry, free (it cannot have done the work)
    the route's retry budget allows it    retry, charged to the budget
    a healthy target sits idle            retry, free: the budget guards against retry
                                          storms on a loaded fleet, and an idle healthy
                                          target is proof there is none
    otherwise                             stop: the budget is spent

``blames_backend`` says whether a failure moves the backend's health: a timeout the
request's own deadline imposed, shorter than what the backend usually needs, is the
router's queueing (or the client's impatience), not the backend's fault.

``backlog_clear_ms`` and ``retry_after_ms`` give honest retry guidance: when the
requests ahead will have been served, at the rate the backends are measured to drain
them, or what the backend itself said in ``Retry-After``.

    >>> next_step(retryable=True, reached=False, relayed=0, attempts_reached=1,
    ...           max_attempts=2, remaining_ms=5000, budget_available=False, idle_target=None)
    Step(retry=True, charge_budget=False, why='the call never reached the backend')
    >>> backlog_clear_ms(in_flight=2, waiting_remaining_ms=[10_000] * 8, drain_per_s=10.0)
    1000.0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

BUDGET_SPENT = "the route's retry budget is spent"


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    retry: bool
    charge_budget: bool
    why: str


def next_step(
    *,
    retryable: bool,
    reached: bool,
    relayed: int,
    attempts_reached: int,
    max_attempts: int,
    remaining_ms: float,
    budget_available: bool,
    idle_target: str | None,
) -> Step:
    """What follows a failed attempt; see the module docstring for the rules.

    ``reached`` says whether the call reached the backend (a refused connection did
    not); ``attempts_reached`` counts the calls that did, this one included.
    """
    if relayed:
        return Step(False, False, f"the stream broke after {relayed} chunk(s)")
    if remaining_ms <= 0:
        return Step(False, False, "the deadline passed")
    if not retryable:
        return Step(False, False, "the error is not retryable")
    if attempts_reached >= max_attempts:
        return Step(False, False, f"{attempts_reached} of {max_attempts} attempts used")
    if not reached:
        return Step(True, False, "the call never reached the backend")
    if budget_available:
        return Step(True, True, "within the route's retry budget")
    if idle_target is not None:
        return Step(
            True, False, f"the retry budget is spent, but {idle_target!r} is healthy and idle"
        )
    return Step(False, False, BUDGET_SPENT)


def blames_backend(
    *, timed_out: bool, deadline_capped: bool, timeout_ms: float, p99_ms: float | None
) -> bool:
    """Whether a failed call counts against the backend's health.

    A timeout counts unless the request's deadline set it and it was shorter than
    the backend's recent p99: the backend was never given the time it needs.

    >>> blames_backend(timed_out=True, deadline_capped=True, timeout_ms=3, p99_ms=200.0)
    False
    >>> blames_backend(timed_out=True, deadline_capped=False, timeout_ms=3, p99_ms=200.0)
    True
    """
    if not timed_out or not deadline_capped:
        return True
    return p99_ms is not None and timeout_ms >= p99_ms


def backlog_clear_ms(
    *, in_flight: int, waiting_remaining_ms: Iterable[float], drain_per_s: float
) -> float | None:
    """How long until the requests in flight and the waiting ones that can still be
    served are all answered, at ``drain_per_s`` completions a second.

    ``waiting_remaining_ms`` lists each waiting request's time to its deadline, in the
    order they will be served. A waiting request whose turn would come after its
    deadline will be answered ``deadline_exceeded`` instead: it takes no capacity,
    so it does not delay the ones behind it. None when nothing is draining.
    """
    if drain_per_s <= 0:
        return None
    per_ms = 1000.0 / drain_per_s
    served = 0
    for remaining in waiting_remaining_ms:
        if (served + 1) * per_ms <= remaining:  # its slot frees before its deadline
            served += 1
    return (in_flight + served) * per_ms


def retry_after_ms(
    *,
    backend_says_ms: int | None = None,
    clear_ms: float | None = None,
    recovery_ms: int | None = None,
    floor_ms: int = 100,
    unknown_ms: int = 1000,
) -> int:
    """The ``retry_after_ms`` a reply advises.

    The backend's own ``Retry-After`` wins; otherwise the later of when the backlog
    ahead clears and when a down backend can be back; ``unknown_ms`` when nothing is
    known. Never below ``floor_ms``.

    >>> retry_after_ms(backend_says_ms=2000, clear_ms=50_000)
    2000
    >>> retry_after_ms(clear_ms=17_250.4)
    17251
    >>> retry_after_ms(clear_ms=3000, recovery_ms=25_000)
    25000
    >>> retry_after_ms()
    1000
    """
    if backend_says_ms is not None:
        return max(floor_ms, backend_says_ms)
    known = [v for v in (clear_ms, recovery_ms) if v is not None]
    if not known:
        return unknown_ms
    return max(floor_ms, math.ceil(max(known)))
