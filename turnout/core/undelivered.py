"""Noticing records that wait in Kafka and never arrive. Pure: the clock is passed in.

A partition's commit point is below the end of its log, nothing of it is in
flight here, and the worker has free slots: its next record should be on its way.
If the point then does not move for ``after_ms``, the record is not coming: the
consumer dropped it on the way (faust hands records over and drops them in
places a rebalance storm reaches; docs/faust-consumer.md). ``UndeliveredWatch``
says so, and the worker reads the partition again from its commit point. Reading
again is safe: a record that comes twice is begun once, and an answered one is
skipped by the done table.

    >>> w = UndeliveredWatch(after_ms=5000)
    >>> w.observe({3: Idle(committed=40, end=52)}, now_ms=0)
    []
    >>> w.observe({3: Idle(committed=40, end=52)}, now_ms=4999)
    []
    >>> w.observe({3: Idle(committed=40, end=52)}, now_ms=5000)
    [Reread(partition=3, offset=40, end=52, waited_ms=5000)]

Asked again only after another ``after_ms``; a point that moves starts over:

    >>> w.observe({3: Idle(committed=40, end=52)}, now_ms=9999)
    []
    >>> w.observe({3: Idle(committed=40, end=52)}, now_ms=10000)
    [Reread(partition=3, offset=40, end=52, waited_ms=10000)]
    >>> w.observe({3: Idle(committed=41, end=52)}, now_ms=10500)
    []

A partition at the end of its log, or with records in flight, or missing from a
round (busy worker, revoked partition) is not waiting for anything:

    >>> w.observe({3: Idle(committed=52, end=52)}, now_ms=20000)
    []
    >>> w.observe({}, now_ms=30000)
    []
    >>> w.watched
    0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


@dataclasses.dataclass(frozen=True, slots=True)
class Idle:
    """A partition with nothing in flight here: its commit point and its log's end."""

    committed: int
    end: int


@dataclasses.dataclass(frozen=True, slots=True)
class Reread(Generic[P]):
    """Read ``partition`` again from ``offset``: records up to ``end`` did not arrive."""

    partition: P
    offset: int
    end: int
    waited_ms: int


@dataclasses.dataclass(slots=True)
class _Wait:
    committed: int
    since_ms: int
    asked_ms: int


class UndeliveredWatch(Generic[P]):
    """Per partition: since when its commit point waits below the end of its log, idle."""

    def __init__(self, *, after_ms: int) -> None:
        self.after_ms = after_ms
        self._waits: dict[P, _Wait] = {}

    def __repr__(self) -> str:
        return f"<UndeliveredWatch after_ms={self.after_ms} watched={self.watched}>"

    @property
    def watched(self) -> int:
        return len(self._waits)

    def observe(self, idle: Mapping[P, Idle], *, now_ms: int) -> list[Reread[P]]:
        """Update from this round's idle partitions; return those to read again now."""
        out: list[Reread[P]] = []
        for p in [p for p in self._waits if p not in idle]:
            del self._waits[p]
        for p, state in idle.items():
            wait = self._waits.get(p)
            if state.committed >= state.end:
                self._waits.pop(p, None)
                continue
            if wait is None or wait.committed != state.committed:
                self._waits[p] = _Wait(state.committed, now_ms, now_ms)
                continue
            if self.after_ms > 0 and now_ms - wait.asked_ms >= self.after_ms:
                wait.asked_ms = now_ms
                out.append(Reread(p, state.committed, state.end, now_ms - wait.since_ms))
        return out
