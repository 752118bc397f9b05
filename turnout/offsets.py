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

    >>> t = OffsetTracker()
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
"""

from __future__ import annotations

import bisect


class OffsetTracker:
    """Offsets of one partition: begun in any order (mostly increasing), finished in any order."""

    __slots__ = ("_finished", "_floor", "_missing", "_pending", "_pending_done", "_top")

    def __init__(self) -> None:
        self._pending: list[int] = []
        """Begun offsets not yet folded into the floor, sorted."""
        self._pending_done: set[int] = set()
        """Those of ``_pending`` that are finished (waiting for an earlier one)."""
        self._floor: int | None = None
        """Every offset below it is finished."""
        self._missing: set[int] = set()
        """Those of ``_pending`` never delivered: skipped between two that were."""
        self._top = -1
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
        if offset > self._top:
            if self._top >= 0 and offset > self._top + 1:
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
