"""Which offset of a partition is safe to commit, when requests finish out of order.

Backend calls finish in any order, but a partition's committed offset may only
move past a request once its final reply is published, and past every request
before it. faust's own bookkeeping gets this wrong (faust-streaming issue 606:
it can commit past one in-flight message, and it acks messages it skipped
after a rebalance), so the worker asks this tracker instead.

    >>> t = OffsetTracker()
    >>> t.begin(10); t.begin(11); t.begin(12)
    >>> t.finish(11); t.committable
    10
    >>> t.finish(10); t.committable
    12
"""

from __future__ import annotations


class OffsetTracker:
    """Offsets of one partition, begun in increasing order and finished in any order."""

    __slots__ = ("_done", "_next", "_pending")

    def __init__(self) -> None:
        # Insertion-ordered: begun offsets not yet folded into ``_next``.
        self._pending: dict[int, bool] = {}
        self._done = 0
        self._next: int | None = None

    def begin(self, offset: int) -> None:
        if self._pending:
            last = next(reversed(self._pending))
            if offset <= last:
                raise ValueError(f"offset {offset} begun after {last}: offsets must increase")
        elif self._next is not None and offset < self._next:
            raise ValueError(f"offset {offset} begun below the committable offset {self._next}")
        self._pending[offset] = False

    def finish(self, offset: int) -> None:
        if self._pending.get(offset) is not False:
            raise ValueError(f"offset {offset} was not begun or is already finished")
        self._pending[offset] = True
        self._done += 1
        while self._pending:
            first = next(iter(self._pending))
            if not self._pending[first]:
                break
            del self._pending[first]
            self._next = first + 1

    @property
    def committable(self) -> int | None:
        """The offset to commit (the next one to read), or None if nothing finished yet.

        Everything below it is finished; the offset itself is in flight or not yet read.
        """
        if self._pending:
            return next(iter(self._pending))
        return self._next

    @property
    def in_flight(self) -> int:
        return sum(1 for done in self._pending.values() if not done)

    def __repr__(self) -> str:
        return (
            f"<OffsetTracker committable={self.committable} in_flight={self.in_flight} "
            f"finished={self._done}>"
        )
