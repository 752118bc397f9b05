"""A faust consumer whose request-topic commits come from turnout's offset trackers.

faust decides what to commit from the offsets it was told are acked. Two of its
behaviours lose requests when backend calls finish out of order (see
``docs/faust-consumer.md`` and faust-streaming issue 606): it can
commit one offset past a message still in flight, and after a rebalance it acks
buffered messages it skipped without processing. For the topics turnout tracks,
this subclass ignores faust's acked list and commits exactly what the dispatcher's
``OffsetTracker`` for that partition calls committable. Other topics (faust's own
changelogs) keep faust's logic.

It also replaces faust's fetch loop (``_drain_messages``): request records reach
the agent without a race of four tasks per record (outside rebalances), a record
whose hand-over a rebalance abandoned is not marked read, and fetches are
batched under load; and it shortens the fetch wait (``ShortWaitConsumerThread``).

It leans on faust, mode and aiokafka internals: docs/faust-consumer.md lists the
upstream code it copies, the private names it touches and the upgrade checklist,
and tests/unit/test_faust_tripwire.py fails when any of them changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, cast

from faust.transport.conductor import Conductor
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer
from faust.types import TP
from mode import Service, ServiceT

from turnout import logs
from turnout.core.batching import FetchBatching, set_fetch

log = logs.get("turnout.consumer")

CommittableFn = Callable[[TP], "int | None"]
AnchorFn = Callable[[Mapping[TP, int]], None]


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
        leave_group_on_stop(consumer)
        return consumer


def leave_group_on_stop(consumer: Any) -> None:
    """A static member leaves the group on a graceful stop, as a dynamic one does.

    aiokafka sends no LeaveGroup for a consumer with a ``group_instance_id`` (a static
    member is expected back soon). turnout uses static membership for crashes only: a
    worker that stops on purpose leaves, so another takes its partitions at once
    instead of after a whole session timeout. A kill -9 runs none of this; the
    restarted worker then rejoins under the same id and gets its partitions back.
    """
    if getattr(consumer, "_group_instance_id", None) is None:
        return
    stop = consumer.stop

    async def stop_and_leave() -> None:
        coordinator = consumer._coordinator
        if coordinator is not None and hasattr(coordinator, "_group_instance_id"):
            coordinator._group_instance_id = None  # makes close() send LeaveGroup
        await stop()

    consumer.stop = stop_and_leave


class TrackedConsumer(Consumer):
    tracked_topics: frozenset[str] = frozenset()
    committable: CommittableFn | None = None
    anchor: AnchorFn | None = None
    fetch_wait_ms: int | None = None
    fetch_batching: FetchBatching | None = None
    fast_handover: bool = True

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return ShortWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _can_deliver_now(self, tp: TP) -> bool:
        """True if handing a record of ``tp`` to its streams cannot wait or be undone.

        faust's per-partition handler (``ConductorCompiler.build``) waits only while
        flow is suspended, while its producer buffer is over its limit, while the
        conductor re-indexes its topics, or while a stream's queue is full; otherwise
        it decodes (raw bytes here) and puts without suspending. Never during a
        rebalance or table recovery: records handed over right after an assignment,
        before faust's recovery had resumed the streams, never reached the agent
        (the kill -9 test lost requests in 4 runs of 6 until this check).
        """
        if not self.fast_handover or tp.topic not in self.tracked_topics:
            return False
        app = self.app
        # Fails closed: an app without the flag is taken to be recovering.
        if app.rebalancing or getattr(app, "in_recovery", True):
            return False
        if self.suspend_flow.is_set() or not app.flow_control.is_active():
            return False
        buffer = app.producer.buffer
        if buffer.size > buffer.max_messages:
            return False
        # App.topics is typed as the abstract ConductorT; the instance is faust's
        # Conductor, whose private index and lock are read here (docs/faust-consumer.md).
        conductor = cast(Conductor, app.topics)
        if conductor._tp_to_callback_lock.locked():
            return False
        return all(not channel.queue.full() for channel in conductor._tp_index.get(tp, ()))

    def _batch_fetches(self, records: int, now_s: float) -> None:
        """Feed the intake rate to ``fetch_batching``; apply its fetch size when it changes."""
        if self.fetch_batching is None:
            return
        min_bytes = self.fetch_batching.update(records, now_s)
        if min_bytes is None:
            return
        if set_fetch(self._thread._consumer, min_bytes):
            log.info("fetch_batching", on=min_bytes > 1, min_bytes=min_bytes)

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover
        """faust's fetch loop (``Consumer._drain_messages``), with three changes.

        - A request record that can be handed over without waiting, outside
          rebalances and recovery, is handed over with a plain ``await``. faust
          races every record against ``suspend_flow`` with ``Service.wait_first``:
          four tasks and an ``asyncio.wait`` per record, so under load each record
          cost several turns of a busy event loop. Otherwise faust's race runs.
        - A record whose hand-over was abandoned (flow suspended for a rebalance) does
          not move the read offset: faust marked it read, so the same record fetched
          again after the rebalance was dropped as already seen.
        - It counts request records for ``fetch_batching`` (batched fetches under load).

        It runs as faust's Fetcher service, with faust's own stop conditions.
        """
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        read_offset = self._read_offset
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        tracked = self.tracked_topics
        can_deliver_now = self._can_deliver_now
        batch_fetches, clock = self._batch_fetches, asyncio.get_running_loop().time
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await asyncio.sleep(0)
                if self.should_stop:
                    continue
                records = 0
                async for tp, message in ait:
                    records += tp.topic in tracked
                    since_yield += 1
                    if since_yield > 100:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    r_offset = read_offset[tp]
                    if r_offset is not None and offset < r_offset:
                        continue  # read before: faust drops it as well
                    if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if can_deliver_now(tp):
                        await callback(message)
                    else:
                        delivery = callback(message)
                        waited = await self.wait_first(delivery, self.suspend_flow.wait())
                        if delivery not in waited.done:
                            continue  # abandoned: read it again after the rebalance
                    read_offset[tp] = offset
                batch_fetches(records, clock())
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    _refetching: dict[TP, asyncio.Future[None]] | None = None

    def refetch(self, tp: TP, offset: int) -> None:
        """Read ``tp`` again from ``offset``: records of it were skipped on their way.

        One seek per partition at a time; none during a rebalance, which seeks every
        partition to its committed offset anyway. faust's read offset moves back with
        the seek, so the records come again instead of being dropped as read.
        """
        if self._refetching is None:
            self._refetching = {}
        if tp in self._refetching or self.app.rebalancing or tp not in self.assignment():
            return

        async def seek() -> None:
            try:
                await self.seek_wait({tp: offset})
            except Exception as exc:  # the next rebalance or restart reads it again
                log.warning("refetch_failed", partition=tp.partition, error=repr(exc))
            finally:
                assert self._refetching is not None
                self._refetching.pop(tp, None)

        self._refetching[tp] = asyncio.ensure_future(seek())

    async def perform_seek(self) -> None:
        """faust's seek to the committed offsets, then anchor the tracked partitions there.

        faust seeks every assigned partition to its committed offset before it resumes
        the streams after each rebalance (and whenever it fetches with flow stopped), so
        from here on the next record of each partition comes from that offset. A
        partition without a committed offset is read from its earliest one (the group's
        ``auto_offset_reset``). faust records offset 0 as "no offset": same answer.
        """
        await super().perform_seek()
        if self.anchor is None:
            return
        tps = [tp for tp in self.assignment() if tp.topic in self.tracked_topics]
        if not tps:
            return
        positions: dict[TP, int] = {}
        unknown = []
        for tp in tps:
            committed = self._committed_offset.get(tp)
            if committed is None:
                unknown.append(tp)
            else:
                positions[tp] = committed
        if unknown:
            earliest = await self.earliest_offsets(*unknown)
            positions.update({tp: earliest[tp] for tp in unknown})
        self.anchor(positions)

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
    anchor: AnchorFn,
    fetch_wait_ms: int | None = None,
    fetch_batching: FetchBatching | None = None,
    fast_handover: bool = True,
) -> None:
    """Make ``app`` create a TrackedConsumer; call before the app starts."""
    transport = app.transport  # type: ignore[attr-defined]
    consumer_cls = type(
        "TurnoutConsumer",
        (TrackedConsumer,),
        {
            "tracked_topics": topics,
            "committable": staticmethod(committable),
            "anchor": staticmethod(anchor),
            "fetch_wait_ms": fetch_wait_ms,
            "fetch_batching": fetch_batching,
            "fast_handover": fast_handover,
        },
    )
    transport.Consumer = consumer_cls
