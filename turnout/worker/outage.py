"""Quiet broker outages: one log line per state change and a periodic summary.

While the broker is unreachable, aiokafka logs every failed attempt of every
client (metadata, fetcher, group coordinator, producer): a 15 s outage of a
lightly loaded worker wrote 4,400 lines (300 a second, 3,700 a second under
more load), nearly all ``Unable connect to node``, ``Unable to update metadata``
and ``NodeNotReadyError``. Those records say one thing: the broker is down.
``OutageFilter`` drops them from the log and tells ``BrokerOutage`` instead,
which turns them into state changes:

    up ──(a connection error)──► down ──(no connection error for quiet_s)──► up

``broker_unreachable`` is logged when the first error arrives,
``broker_still_unreachable`` every ``summary_every_s`` while it lasts (with the
number of lines it replaced), and ``broker_reachable`` once aiokafka has gone
``quiet_s`` without a connection error (its clients retry every 100 ms while the
broker is down, so silence means they got through). ``BrokerOutage`` is pure: the
caller passes the clock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# Substrings of aiokafka's messages that mean "the broker cannot be reached".
CONNECTION_ERRORS = (
    "Unable connect to node",
    "Unable to update metadata",
    "NodeNotReadyError",
    "KafkaConnectionError",
    "Connection at ",
    "GroupCoordinatorNotAvailable",
    "Marking the coordinator dead",
    "Connect call failed",
    "RequestTimedOutError",
    "KafkaTimeoutError",
    "NotLeaderForPartition",
    "retrying. Error:",  # the producer's per-batch retry while leaders are elected
    "is either not started or not valid",  # a heartbeat's coordinator is gone
    "Heartbeat session expired",
)


@dataclass(frozen=True, slots=True)
class OutageEvent:
    event: str
    """``broker_unreachable``, ``broker_still_unreachable`` or ``broker_reachable``."""
    down_s: float
    suppressed: int
    """aiokafka lines replaced by this one since the previous event."""
    first_error: str = ""


class BrokerOutage:
    """Whether the broker is reachable, from the connection errors seen; pure.

    >>> o = BrokerOutage(quiet_s=3, summary_every_s=10)
    >>> [e.event for e in o.error(100.0, "Unable connect to node with id 1")]
    ['broker_unreachable']
    >>> o.error(100.1, "Unable to update metadata"), o.tick(104.0)
    ([], [])
    >>> o.error(109.0, "x") or [e.event for e in o.tick(110.5)]
    ['broker_still_unreachable']
    >>> [(e.event, e.down_s, e.suppressed) for e in o.tick(112.5)]
    [('broker_reachable', 9.0, 0)]
    """

    def __init__(self, *, quiet_s: float = 3.0, summary_every_s: float = 10.0) -> None:
        self.quiet_s = quiet_s
        self.summary_every_s = summary_every_s
        self.down_since: float | None = None
        self.last_error = 0.0
        self.last_report = 0.0
        self.suppressed = 0
        self.outages = 0

    def __repr__(self) -> str:
        state = "up" if self.down_since is None else f"down since {self.down_since:.1f}"
        return f"<BrokerOutage {state} suppressed={self.suppressed} outages={self.outages}>"

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def error(self, now: float, message: str) -> list[OutageEvent]:
        """A connection error was seen (and not logged)."""
        self.last_error = now
        if self.down_since is None:
            self.down_since = self.last_report = now
            self.outages += 1
            self.suppressed = 0
            return [OutageEvent("broker_unreachable", 0.0, 1, message[:300])]
        self.suppressed += 1
        return []

    def tick(self, now: float) -> list[OutageEvent]:
        """Called every second or so: the recovery, or a summary, when due."""
        if self.down_since is None:
            return []
        if now - self.last_error >= self.quiet_s:
            down_s = round(self.last_error - self.down_since, 3)
            event = OutageEvent("broker_reachable", down_s, self.suppressed)
            self.down_since, self.suppressed = None, 0
            return [event]
        if now - self.last_report >= self.summary_every_s:
            self.last_report = now
            event = OutageEvent(
                "broker_still_unreachable", round(now - self.down_since, 3), self.suppressed
            )
            self.suppressed = 0
            return [event]
        return []


class OutageFilter(logging.Filter):
    """Drops aiokafka's connection-error records, feeding them to a ``BrokerOutage``.

    Records can come from faust's consumer thread as well as the event loop: the
    state is guarded by a lock. State changes are handed to ``emit`` at once.
    """

    def __init__(self, outage: BrokerOutage, emit: Callable[[OutageEvent], None]) -> None:
        super().__init__()
        self.outage = outage
        self._emit = emit
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka") or record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        if not any(s in message for s in CONNECTION_ERRORS):
            return True
        with self.lock:
            events = self.outage.error(time.monotonic(), message)
        for event in events:
            self._emit(event)
        return False


def install(
    emit: Callable[[OutageEvent], None],
    *,
    handlers: Iterable[logging.Handler] | None = None,
    quiet_s: float = 3.0,
    summary_every_s: float = 10.0,
) -> OutageFilter:
    """Put an ``OutageFilter`` on the root logger's handlers (where aiokafka's records go)."""
    f = OutageFilter(BrokerOutage(quiet_s=quiet_s, summary_every_s=summary_every_s), emit)
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        handler.addFilter(f)
    return f


def uninstall(f: OutageFilter) -> None:
    for handler in logging.getLogger().handlers:
        handler.removeFilter(f)


async def watch(f: OutageFilter, interval_s: float = 1.0) -> None:
    """Report recoveries and summaries until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        with f.lock:
            events = f.outage.tick(time.monotonic())
        for event in events:
            f._emit(event)


def log_event(log: Any) -> Callable[[OutageEvent], None]:
    """An ``emit`` that writes each event as one structured log line."""

    def emit(e: OutageEvent) -> None:
        fields: dict[str, Any] = {"down_s": e.down_s, "suppressed_lines": e.suppressed}
        if e.first_error:
            fields["error"] = e.first_error
        if e.event == "broker_reachable":
            log.info(e.event, **fields)
        else:
            log.warning(e.event, **fields)

    return emit
