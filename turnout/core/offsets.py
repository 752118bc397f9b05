"""Which offset of a partition is safe to commit, when requests finish out of order.

Backend calls finish in any order, but a partition's committed offset may only
move past a request once its final reply is published, and past every request
before it. faust's own bookkeeping gets this wrong (faust-streaming issue 606:
it can commit one past a message in flight, and it acks messages it skipped
after a rebalance), so the worker asks this tracker instead.

faust may also deliver an offset twice within one assignment (it fetches, then
seeks back to the committed offset after table recovery). ``begin`` says so by
returning False, and the caller ignores the repeat: the first delivery is in
flight or done.

And faust can skip one: a message cancelled on its way to the stream (during a
recovery) is not delivered again unless a seek brings it back. An offset the
tracker never saw, between two it did, is *missing*: the committable offset stops
at it, so the request stays in Kafka and is read again by the partition's next
owner, instead of being committed past unanswered. (A request topic has no gaps
of its own: it is neither compacted nor written in transactions.)

Every tracker is *anchored* at the position its partition is read from when it is
assigned: the committed offset. Without an anchor a tracker could only trust the
first offset it saw, so a record handed over late (held by the agent across a
rebalance) became the start, every offset before it looked handled, and the commit
jumped past requests nobody had served. Anchored, offsets between the anchor and
the first one delivered are missing, and the commit waits for them.

    >>> t = OffsetTracker(anchor=10)
    >>> t.begin(10), t.begin(11), t.begin(12)
    (True, True, True)
    >>> t.finish(11); t.committable
    10
    >>> t.finish(10); t.committable
    12
    >>> t.begin(11)
    False
    >>> t.begin(15), t.missing, t.committable  # 13 and 14 were never delivered
    (True, 2, 12)
    >>> late = OffsetTracker(anchor=20)
    >>> late.begin(23); late.finish(23); late.committable  # 20..22 still unread
    True
    20
    >>> late.begin(19)  # below the anchor: committed before this assignment
    False
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any


class OffsetTracker:
    """Offsets of one partition: begun in any order (mostly increasing), finished in any order."""

    __slots__ = ("_finished", "_floor", "_missing", "_pending", "_pending_done", "_top")

    def __init__(self, anchor: int | None = None) -> None:
        """``anchor``: the partition's committed offset when it was assigned.

        ``None`` trusts the first offset begun as the start (for tools without a group).
        """
        self._pending: list[int] = []
        """Begun offsets not yet folded into the floor, sorted."""
        self._pending_done: set[int] = set()
        """Those of ``_pending`` that are finished (waiting for an earlier one)."""
        self._floor: int | None = anchor
        """Every offset below it is finished (or was committed before the anchor)."""
        self._missing: set[int] = set()
        """Those of ``_pending`` never delivered: skipped between two that were."""
        self._top: int | None = None if anchor is None else anchor - 1
        """The highest offset begun (or the one before the anchor)."""
        self._finished = 0

    def begin(self, offset: int) -> bool:
        """Start tracking ``offset``; False if it is already in flight or finished."""
        if self._floor is not None and offset < self._floor:
            return False
        if offset in self._missing:
            self._missing.discard(offset)  # delivered late after all: now begun
            return True
        i = bisect.bisect_left(self._pending, offset)
        if i < len(self._pending) and self._pending[i] == offset:
            return False
        if self._top is None or offset > self._top:
            if self._top is not None and offset > self._top + 1:
                skipped = range(self._top + 1, offset)
                self._pending.extend(skipped)
                self._missing.update(skipped)
            self._pending.append(offset)
            self._top = offset
        else:
            self._pending.insert(i, offset)
        return True

    def finish(self, offset: int) -> None:
        i = bisect.bisect_left(self._pending, offset)
        if (
            i == len(self._pending)
            or self._pending[i] != offset
            or offset in self._pending_done
            or offset in self._missing
        ):
            raise ValueError(f"offset {offset} was not begun or is already finished")
        self._pending_done.add(offset)
        self._finished += 1
        done = 0
        for o in self._pending:
            if o not in self._pending_done:
                break
            self._pending_done.discard(o)
            self._floor = o + 1
            done += 1
        if done:
            del self._pending[:done]

    @property
    def committable(self) -> int | None:
        """The offset to commit (the next one to read), or None if nothing began yet.

        Everything below it is finished; the offset itself is in flight or not yet read.
        """
        if self._pending:
            return self._pending[0]
        return self._floor

    @property
    def in_flight(self) -> int:
        return len(self._pending) - len(self._pending_done) - len(self._missing)

    @property
    def first_missing(self) -> int | None:
        """The lowest offset skipped by the delivery: where to read the partition again."""
        return min(self._missing) if self._missing else None

    @property
    def done_waiting(self) -> int:
        """Offsets finished above the committable one, waiting for it to finish."""
        return len(self._pending_done)

    @property
    def missing(self) -> int:
        """Offsets skipped by the delivery between two delivered ones; they hold commits."""
        return len(self._missing)

    def __repr__(self) -> str:
        return (
            f"<OffsetTracker committable={self.committable} in_flight={self.in_flight} "
            f"finished={self._finished}>"
        )


class Trackers:
    """The offset trackers of the partitions one worker owns, across rebalances.

    Pure bookkeeping; the dispatcher cancels the requests of the partitions that
    ``anchor`` and ``assigned`` return.

    - ``assigned(owned)``: the new assignment. Trackers of partitions that moved
      away are dropped (their requests must stop: they commit nothing now).
    - ``anchor(positions)``: faust sought these partitions to their committed
      offsets. A kept tracker stays (nobody else committed meanwhile, so the
      committed offset is at or below its commit point); a new one, or one
      another owner committed past, is anchored at the committed offset.
    - ``get(tp)``: the tracker new records of ``tp`` go to; None if the partition
      is not this worker's (a record read under an earlier assignment).

    >>> ts = Trackers()
    >>> ts.anchor({"p0": 5, "p1": 0})
    []
    >>> ts.get("p0").begin(5), ts.get("p0").committable
    (True, 5)
    >>> ts.assigned({"p0"}), ts.get("p1") is None
    (['p1'], True)
    >>> ts.anchor({"p0": 5}), ts.get("p0").in_flight  # kept: 5 is still in flight
    ([], 1)
    >>> ts.anchor({"p0": 9})  # another owner committed past it: a fresh tracker
    ['p0']
    """

    __slots__ = ("_trackers",)

    def __init__(self) -> None:
        self._trackers: dict[Any, OffsetTracker] = {}

    def get(self, tp: Any) -> OffsetTracker | None:
        return self._trackers.get(tp)

    def items(self) -> list[tuple[Any, OffsetTracker]]:
        return list(self._trackers.items())

    def committable(self, tp: Any) -> int | None:
        tracker = self._trackers.get(tp)
        return None if tracker is None else tracker.committable

    def anchor(self, positions: Mapping[Any, int]) -> list[Any]:
        """Track partitions from their committed offsets; returns those replaced."""
        replaced = []
        for tp, offset in positions.items():
            tracker = self._trackers.get(tp)
            if tracker is not None:
                committable = tracker.committable
                if committable is not None and offset <= committable:
                    continue
                replaced.append(tp)
            self._trackers[tp] = OffsetTracker(anchor=offset)
        return replaced

    def assigned(self, owned: Iterable[Any]) -> list[Any]:
        """Keep the trackers of ``owned`` partitions; returns the partitions dropped."""
        keep = set(owned)
        dropped = [tp for tp in self._trackers if tp not in keep]
        for tp in dropped:
            del self._trackers[tp]
        return dropped

    def __len__(self) -> int:
        return len(self._trackers)

    def __repr__(self) -> str:
        return f"<Trackers {dict(self._trackers)!r}>"
