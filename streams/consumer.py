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

from faust.transport.drivers.aiokafka import Consumer
from faust.types import TP

CommittableFn = Callable[[TP], "int | None"]


class TrackedConsumer(Consumer):
    tracked_topics: frozenset[str] = frozenset()
    committable: CommittableFn | None = None

    def _new_offset(self, tp: TP) -> int | None:
        if tp.topic not in self.tracked_topics or self.committable is None:
            return super()._new_offset(tp)
        # Keep faust's own bookkeeping from growing: it plays no part here.
        self._acked[tp].clear()
        self._acked_index[tp].clear()
        return self.committable(tp)


def install(app: object, topics: frozenset[str], committable: CommittableFn) -> None:
    """Make ``app`` create a TrackedConsumer; call before the app starts."""
    transport = app.transport  # type: ignore[attr-defined]
    consumer_cls = type(
        "TurnoutConsumer",
        (TrackedConsumer,),
        {"tracked_topics": topics, "committable": staticmethod(committable)},
    )
    transport.Consumer = consumer_cls
