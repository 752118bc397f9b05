"""A faust consumer whose request-topic commits come from turnout's offset trackers.

faust decides what to commit from the offsets it was told are acked. Two of its
behaviours lose requests when backend calls finish out of order (see
``../shared/notes/kafka-and-faust.md`` and faust-streaming issue 606): it can
commit one offset past a message still in flight, and after a rebalance it acks
buffered messages it skipped without processing. For the topics turnout tracks,
this subclass ignores faust's acked list and commits exactly what the dispatcher's
``OffsetTracker`` for that partition calls committable. Other topics (faust's own
changelogs) keep faust's logic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer
from faust.types import TP

CommittableFn = Callable[[TP], "int | None"]


class ShortWaitConsumerThread(AIOKafkaConsumerThread):
    """faust's consumer thread, with a shorter fetch wait (``TURNOUT_FETCH_WAIT_MS``).

    faust lets the broker hold a fetch that finds no new data for 1,500 ms. aiokafka
    keeps one fetch in flight per broker and leaves out of it every partition that
    still has records waiting to be read; so right after a fetch returned requests,
    the next one can hold only partitions with nothing coming (the health topic,
    table changelogs) and sit at the broker for its whole wait while the request
    partitions fill up behind it. Under load that stalled intake for 1 to 1.5 s
    every few seconds.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.consumer, "fetch_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = wait_ms  # read when the consumer starts
        return consumer


class TrackedConsumer(Consumer):
    tracked_topics: frozenset[str] = frozenset()
    committable: CommittableFn | None = None
    fetch_wait_ms: int | None = None

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return ShortWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp: TP) -> int | None:
        if tp.topic not in self.tracked_topics or self.committable is None:
            return super()._new_offset(tp)
        # Keep faust's own bookkeeping from growing: it plays no part here.
        self._acked[tp].clear()
        self._acked_index[tp].clear()
        return self.committable(tp)


def install(
    app: object,
    topics: frozenset[str],
    committable: CommittableFn,
    fetch_wait_ms: int | None = None,
) -> None:
    """Make ``app`` create a TrackedConsumer; call before the app starts."""
    transport = app.transport  # type: ignore[attr-defined]
    consumer_cls = type(
        "TurnoutConsumer",
        (TrackedConsumer,),
        {
            "tracked_topics": topics,
            "committable": staticmethod(committable),
            "fetch_wait_ms": fetch_wait_ms,
        },
    )
    transport.Consumer = consumer_cls
