"""Retry budgets: retries may add only a fraction to a route's load. Pure.

Each request served on a route deposits ``ratio`` of a retry; each retry of a
call that reached a backend (a timeout, a 5xx) withdraws one. A small reserve
lets a quiet route retry at all. When a backend is overloaded, this caps the
extra load retries add at ``ratio`` instead of multiplying it by max_attempts.
(Refused connections never reached a backend and are not charged.)

    >>> b = RetryBudget(ratio=0.5, reserve=1)
    >>> b.withdraw(), b.withdraw()
    (True, False)
    >>> b.deposit(); b.deposit(); b.withdraw()
    True
"""

from __future__ import annotations


class RetryBudget:
    __slots__ = ("_balance", "_cap", "ratio")

    def __init__(self, *, ratio: float = 0.2, reserve: float = 10.0) -> None:
        self.ratio = ratio
        self._balance = reserve
        self._cap = max(reserve, 1.0) + 100 * ratio

    def deposit(self) -> None:
        """A request was served on the route (first attempt)."""
        self._balance = min(self._cap, self._balance + self.ratio)

    def available(self) -> bool:
        """Whether ``withdraw`` would succeed now (nothing is spent by asking)."""
        return self._balance >= 1.0

    def withdraw(self) -> bool:
        """Spend one retry if the budget allows it."""
        if self._balance >= 1.0:
            self._balance -= 1.0
            return True
        return False

    def __repr__(self) -> str:
        return f"<RetryBudget ratio={self.ratio} balance={self._balance:.1f}>"
