"""Sharing a deployment-wide concurrency cap among workers, without talking to each other.

A backend's ``max_concurrency`` is for the whole deployment, and the workers never
exchange messages. What every worker does know is which request partitions it owns,
and the group gives each partition to exactly one worker. So the cap is split over
*partitions*, in whole calls, and a worker may run the units of the partitions it
owns:

- partition ``p`` of ``total`` gets ``cap // total`` units, plus one of the
  remainder units if ``p < cap % total`` (the lowest-numbered partitions);
- a worker's share is the sum over its partitions.

Over any assignment the shares add up to exactly ``cap`` (never more, and at least
one somewhere when ``cap >= 1``, so the fleet always makes progress). A worker whose
partitions hold no unit (cap 1 with three workers: two of them) does not call that
backend: its requests for it wait for capacity (another target of the route, or a
fallback route, can still serve them) until a rebalance gives it a unit, or their
deadline passes. Borrowing would need the workers to agree on who holds what at
every moment; without a coordinator, waiting is the only way the cap holds even
while a rebalance is in progress. Give a backend a cap of at least the partition
count when every worker must be able to reach it.

>>> units(1, [0, 3], 4), units(1, [1, 2], 4)
(1, 0)
>>> units(10, [0, 1], 4), units(10, [2, 3], 4)
(6, 4)
>>> units(8, range(4), 4)
8
"""

from __future__ import annotations

from collections.abc import Iterable


def units(cap: int, partitions: Iterable[int], total: int) -> int:
    """This worker's whole share of ``cap`` when it owns ``partitions`` of ``total``."""
    if total <= 0:
        return cap
    base, extra = divmod(cap, total)
    owned = {p for p in partitions if 0 <= p < total}
    return base * len(owned) + sum(1 for p in owned if p < extra)


def fraction(partitions: Iterable[int], total: int) -> float:
    """The share of partitions owned: for caps that divide (rates), not for call counts."""
    if total <= 0:
        return 1.0
    return len({p for p in partitions if 0 <= p < total}) / total
