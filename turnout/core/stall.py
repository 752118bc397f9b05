"""Noticing a partition whose commit point stopped moving. Pure: the clock is passed in.

A partition commits up to its lowest unfinished offset, so one record that never
finishes holds back every record after it: they are answered, but read again on
each restart, and the group's lag never returns to 0. That must not go unseen.
``StallWatch`` is fed, every few seconds, what holds each partition's commit
point (a ``Head``) and reports a stall once the point has not moved for
``stall_ms`` while records behind it are done, unless the record holding it may
still legitimately be working (its deadline has not passed). It reports again
when the point moves, or when the partition is gone.

    >>> w = StallWatch(stall_ms=1000)
    >>> h = Head(partition=3, offset=40, done_behind=5, cause="publishing_reply",
    ...          detail="publishing the reply to turnout.replies.c", busy_until_ms=None)
    >>> w.observe([h], now_ms=0), w.observe([h], now_ms=999)
    ([], [])
    >>> [ev] = w.observe([h], now_ms=1000)
    >>> type(ev).__name__, ev.partition, ev.offset, ev.cause, ev.stalled_ms, ev.done_behind
    ('Stalled', 3, 40, 'publishing_reply', 1000, 5)
    >>> w.observe([h], now_ms=5000)  # reported once per episode
    []
    >>> w.observe([Head(3, 41, 0, "", "", None)], now_ms=5100)
    [Resumed(partition=3, offset=41, stalled_ms=5100)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True, slots=True)
class Head:
    """What holds one partition's commit point now."""

    partition: int
    offset: int
    """The committable offset: every offset below it is finished."""
    done_behind: int
    """Records above it that are finished and wait for it."""
    cause: str
    """What the record at ``offset`` is doing, a short code (a metric label)."""
    detail: str
    """The same for a person."""
    busy_until_ms: int | None
    """Until when the record may legitimately still work (its deadline); None: not working."""


@dataclasses.dataclass(frozen=True, slots=True)
class Stalled:
    partition: int
    offset: int
    cause: str
    detail: str
    stalled_ms: int
    done_behind: int


@dataclasses.dataclass(frozen=True, slots=True)
class Resumed:
    partition: int
    offset: int | None
    """Where the commit point is now; None when the partition was revoked."""
    stalled_ms: int


@dataclasses.dataclass(slots=True)
class _Point:
    offset: int
    since_ms: int
    stalled: Stalled | None = None


class StallWatch:
    """Per partition: since when the commit point sits where it is, and whether that is a stall."""

    def __init__(self, *, stall_ms: int) -> None:
        self.stall_ms = stall_ms
        self._points: dict[int, _Point] = {}

    def __repr__(self) -> str:
        return f"<StallWatch stall_ms={self.stall_ms} stalled={sorted(self.stalled)}>"

    @property
    def stalled(self) -> dict[int, Stalled]:
        """The stalls reported and not yet over, by partition."""
        return {p: pt.stalled for p, pt in self._points.items() if pt.stalled is not None}

    def observe(self, heads: Iterable[Head], *, now_ms: int) -> list[Stalled | Resumed]:
        """Update from the current heads; return the stalls begun and ended since last time."""
        events: list[Stalled | Resumed] = []
        seen: set[int] = set()
        for h in heads:
            seen.add(h.partition)
            point = self._points.get(h.partition)
            if point is None or point.offset != h.offset:
                if point is not None and point.stalled is not None:
                    events.append(Resumed(h.partition, h.offset, now_ms - point.since_ms))
                self._points[h.partition] = _Point(h.offset, now_ms)
                continue
            if point.stalled is not None or self.stall_ms <= 0:
                continue
            still_working = h.busy_until_ms is not None and now_ms < h.busy_until_ms
            waited = now_ms - point.since_ms
            if h.done_behind > 0 and not still_working and waited >= self.stall_ms:
                point.stalled = Stalled(
                    h.partition, h.offset, h.cause, h.detail, waited, h.done_behind
                )
                events.append(point.stalled)
        for p in [p for p in self._points if p not in seen]:
            point = self._points.pop(p)
            if point.stalled is not None:
                events.append(Resumed(p, None, now_ms - point.since_ms))
        return events

    def stalled_for_ms(self, partition: int, now_ms: int) -> int:
        """How long a reported stall has lasted so far (0 if none)."""
        point = self._points.get(partition)
        return 0 if point is None or point.stalled is None else now_ms - point.since_ms
