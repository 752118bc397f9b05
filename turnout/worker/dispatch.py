"""Serving admitted requests: many backend calls in flight, offsets committed in order.

The agent hands every record to ``Dispatcher.submit``. ``submit`` waits for one
of ``TURNOUT_MAX_IN_FLIGHT`` slots (waiting is the backpressure: the agent stops
reading and faust pauses fetching), registers the offset with its partition's
``OffsetTracker``, and runs the request in its own task. The task finishes the
offset only after the final reply (or dead letter) is on the broker, so a crash
at any point leaves the request in Kafka, to be read again.

Rebalances. Each partition's tracker is anchored at its committed offset when the
partition is (re)assigned (``anchor``, called once faust has sought to the committed
offsets), so no commit can pass a request this assignment has not finished. Kafka's
rebalance revokes every partition, then assigns; faust's assignor is sticky, so most
come back. Requests of a partition that comes back keep running, with their tracker:
only requests of partitions that moved to another worker are cancelled (``assigned``),
and their new owner serves them again (a repeat carries the same id). A record that
reaches ``submit`` for a partition this worker no longer tracks is dropped unserved:
it was read under an earlier assignment, and its partition's owner reads it again.

No record may hold its partition forever. Transient broker failures are retried
by the publisher with backoff; anything else that fails in a record's path ends
in a dead letter (``internal_error``, ``reply_unpublishable``) and the offset is
finished. A dead letter too large for Kafka references its original instead
(``turnout.core.deadletter``). What holds each partition's commit point is watched
(``check_commits``, ``turnout.core.stall``): a point stuck while later records are
done logs ``commit_stalled`` with the partition, offset and cause.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import itertools
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING

from faust.types import TP

from schemas.types import DeadLetter, ErrorInfo, Reply, ReplyChunk, Timings
from turnout import logs, tracing
from turnout.backends import BackendClient
from turnout.backends.streaming import accumulate
from turnout.config import Config
from turnout.core.admission import Admitted, Record, Rejected, admit, charge, refuse
from turnout.core.affinity import affinity_key, table_key
from turnout.core.deadletter import dead_letter_for
from turnout.core.offsets import OffsetTracker, Trackers
from turnout.core.retention import done_value
from turnout.core.retry import BUDGET_SPENT, blames_backend, next_step
from turnout.core.routing import Decision, retry_delay_s
from turnout.core.spillover import Spill, spillable
from turnout.core.stall import Head, Resumed, Stalled, StallWatch
from turnout.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    DeadlineExceeded,
    InternalError,
    ReplyUnpublishable,
    TurnoutError,
)
from turnout.health.book import HealthBook
from turnout.health.timeouts import CallTimeouts
from turnout.settings import Settings
from turnout.worker.chooser import Chooser
from turnout.worker.metrics import Metrics
from turnout.worker.publisher import Publisher, PublishFailed
from turnout.worker.slots import SlotLease, SlotPool
from turnout.worker.state import MemoryTable, StateTable, done_key

if TYPE_CHECKING:
    from turnout.worker.forwarding import Forwarding

log = logs.get("turnout.request")


@dataclasses.dataclass(slots=True)
class Stage:
    """What a record's task is doing now: why its offset is not finished yet."""

    cause: str
    detail: str
    deadline_ms: int | None = None


_stage: contextvars.ContextVar[Stage | None] = contextvars.ContextVar("stage", default=None)
_replied: contextvars.ContextVar[bool] = contextvars.ContextVar("replied", default=False)
"""Each request runs in its own task, hence its own copy of these."""


def _set_stage(cause: str, detail: str) -> None:
    stage = _stage.get()
    if stage is not None:
        stage.cause, stage.detail = cause, detail


def _now_ms() -> int:
    return int(time.time() * 1000)


class Dispatcher:
    def __init__(
        self,
        *,
        settings: Settings,
        config: Config,
        client: BackendClient,
        publisher: Publisher,
        done: StateTable | None = None,
        buckets: StateTable | None = None,
        affinity: StateTable | None = None,
        health: HealthBook | None = None,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        refetch: Callable[[TP, int], None] | None = None,
    ) -> None:
        """``refetch(tp, offset)`` reads ``tp`` again from ``offset`` (a consumer seek)."""
        self._settings = settings
        self._refetch = refetch
        self._reread: dict[TP, int] = {}
        """Partitions whose read records were dropped with a replaced tracker, and the
        offset to read them again from (see ``anchor``)."""
        self._unanchored: dict[TP, int] = {}
        """Per partition, the lowest offset dropped because it came before the partition
        was anchored (see ``anchor``)."""
        self._config = config
        self._client = client
        self._publisher = publisher
        self._done: StateTable = MemoryTable() if done is None else done
        self._buckets: StateTable = MemoryTable() if buckets is None else buckets
        self._affinity: StateTable = MemoryTable() if affinity is None else affinity
        self._pool = SlotPool(settings.max_in_flight, settings.max_waiting)
        self._slots = self._pool.slots
        self._trackers = Trackers()
        self._tasks: dict[TP, set[asyncio.Task[None]]] = defaultdict(set)
        self._running = 0
        self.metrics = metrics or Metrics.from_config(config, settings.request_topic)
        self.metrics.count_in_flight(lambda: self._running)
        self.chooser = Chooser(
            settings=settings, config=config, health=health, metrics=self.metrics, rng=rng
        )
        self._rng = rng or random.Random()
        self._stages: dict[TP, dict[int, Stage]] = defaultdict(dict)
        self._watched: set[TP] = set()
        """Partitions whose records ran here: the stall watch looks at their trackers."""
        self._stalls = StallWatch(stall_ms=int(settings.commit_stall_s * 1000))
        self.skipped = 0
        self.redelivered = 0
        self.stale = 0
        """Records dropped because their partition was not tracked (moved, or not anchored)."""
        # Every serve of a request gets its own generation (this process's random tag
        # and a counter): a worker that serves the request again after a crash or a
        # rebalance starts at attempt 1, seq 0 too, and readers must tell them apart.
        self._generation_tag = uuid.uuid4().hex[:12]
        self._generations = itertools.count(1)
        self.forwarding: Forwarding | None = None
        """Cross-region spillover (set by the runtime when the worker has a region)."""

    # -- offsets ---------------------------------------------------------------

    def wake(self) -> None:
        """Health or capacity changed: abandon calls stuck on unhealthy backends, wake waiters."""
        self.chooser.health_changed()

    def share_capacity(self, partitions: Collection[int], total: int) -> None:
        self.chooser.share_capacity(partitions, total)

    def committable(self, tp: TP) -> int | None:
        """The offset to commit for ``tp`` (faust asks before every commit).

        While offsets the delivery skipped hold the commit, each ask also asks the
        consumer to read them again (it ignores the ask during a rebalance or while a
        read-again of the partition is under way).
        """
        tracker = self._trackers.get(tp)
        if tracker is None:
            return None
        first = tracker.first_missing
        if first is None:
            first = self._reread.get(tp)
        if first is not None and self._refetch is not None:
            self._refetch(tp, first)
        return tracker.committable

    def ask_rereads(self) -> None:
        """Ask again to read each partition waiting for a read-again (see ``anchor``).

        ``committable`` asks on every commit, but faust commits only partitions that
        acked a record since their assignment: one whose only records were dropped
        before its anchor never has. The runtime calls this every second.
        """
        if self._refetch is None:
            return
        for tp, offset in list(self._reread.items()):
            if self._trackers.get(tp) is not None:
                self._refetch(tp, offset)

    def idle(self) -> dict[TP, int] | None:
        """The commit points of owned partitions with nothing in flight here.

        None while every slot is taken: records may then be waiting for one, and a
        partition with nothing in flight is not a sign of anything.
        """
        if self._slots.locked():
            return None
        return {
            tp: tracker.committable
            for tp, tracker in self._trackers.items()
            if tracker.in_flight == 0 and tracker.committable is not None
        }

    def pin(self, tp: TP, offset: int) -> None:
        """Hold ``offset`` unfinished: its partition commits no further until reassigned."""
        tracker = self._trackers.get(tp)
        if tracker is not None:
            tracker.begin(offset)

    def anchor(self, positions: Mapping[TP, int]) -> None:
        """Partitions will be read from these (committed) offsets: track each from there.

        A tracker replaced here was anchored elsewhere: another owner committed past
        it, or it was anchored before the committed offset was known. Its requests
        are cancelled, and the partition is read again from the new anchor until a
        record of it arrives: the consumer may already have handed over every record
        there is, and without a read-again nothing would ever come to finish them (a
        stall the rebalance-storm drill found).

        Records of a partition handed over after its assignment and before this anchor
        (faust resumes the partitions, then seeks) were dropped as not owned; they are
        read again from the anchor the same way. Without that, a request sent right
        after a worker restart sat unserved in Kafka until the next rebalance (the
        cache-affinity test, after the broker-outage drill).
        """
        for tp in self._trackers.anchor(positions):
            log.warning("tracker_replaced", partition=tp.partition, committed=positions[tp])
            if self._cancel(tp):
                self._reread[tp] = positions[tp]
        for tp, position in positions.items():
            dropped = self._unanchored.pop(tp, None)
            if dropped is not None and dropped >= position:
                log.warning(
                    "records_before_anchor", partition=tp.partition, offset=dropped,
                    refetch_from=position,
                )  # fmt: skip
                self._reread[tp] = position

    def assigned(self, tps: Iterable[TP]) -> int:
        """This worker now owns ``tps``: cancel requests of partitions that moved away.

        Returns how many requests were cancelled; their partitions' new owners serve
        them again.
        """
        tps = set(tps)
        self._reread = {tp: o for tp, o in self._reread.items() if tp in tps}
        self._unanchored = {tp: o for tp, o in self._unanchored.items() if tp in tps}
        return sum(self._cancel(tp) for tp in self._trackers.assigned(tps))

    def _cancel(self, tp: TP) -> int:
        tasks = self._tasks.pop(tp, set())
        for task in tasks:
            task.cancel()
        return len(tasks)

    def commit_heads(self) -> list[Head]:
        """What holds each tracked partition's commit point, for the stall watch."""
        heads = []
        for tp in list(self._watched):
            tracker = self._trackers.get(tp)
            if tracker is None:  # not this worker's partition any more
                self._watched.discard(tp)
                continue
            offset = tracker.committable
            if offset is None:
                continue
            stage = self._stages.get(tp, {}).get(offset)
            if stage is not None:
                cause, detail, busy = stage.cause, stage.detail, stage.deadline_ms
            elif tracker.done_waiting:
                cause, busy = "not_delivered", None
                detail = (
                    "the record was never handed to the worker (skipped by the consumer, or "
                    "unreadable): the partition is read again from it"
                )
            else:  # nothing waits for it: it is just the next record to read
                cause, detail, busy = "none", "", None
            heads.append(Head(tp.partition, offset, tracker.done_waiting, cause, detail, busy))
        return heads

    def check_commits(self, now_ms: int) -> list[Stalled | Resumed]:
        """Report commit points that stopped moving (log and metric); return what changed."""
        events = self._stalls.observe(self.commit_heads(), now_ms=now_ms)
        for ev in events:
            if isinstance(ev, Stalled):
                log.error(
                    "commit_stalled",
                    partition=ev.partition,
                    offset=ev.offset,
                    cause=ev.cause,
                    detail=ev.detail,
                    stalled_s=round(ev.stalled_ms / 1000, 1),
                    done_behind=ev.done_behind,
                )
            else:
                self.metrics.commit_resumed(ev.partition)
                log.info(
                    "commit_resumed",
                    partition=ev.partition,
                    offset=ev.offset,
                    stalled_s=round(ev.stalled_ms / 1000, 1),
                )
        for partition, st in self._stalls.stalled.items():
            seconds = self._stalls.stalled_for_ms(partition, now_ms) / 1000
            self.metrics.commit_stalled(partition, st.offset, st.cause, seconds)
        return events

    async def stop(self, grace_s: float = 5.0) -> None:
        """Let in-flight requests finish for ``grace_s``, then cancel the rest."""
        tasks = [t for ts in self._tasks.values() for t in ts]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    @property
    def in_flight(self) -> int:
        return self._running

    def __repr__(self) -> str:
        return f"<Dispatcher in_flight={self.in_flight} partitions={len(self._trackers)}>"

    # -- the request path -----------------------------------------------------------

    async def submit(self, tp: TP, record: Record, ack: Callable[[], object]) -> None:
        """Take one record from the agent. Never raises for a record's sake.

        Waits for an in-flight slot first (the backpressure). A record faust delivers
        again while it is in flight or done is acked and ignored. If anything fails
        unexpectedly once the offset is tracked, the offset stays unfinished: the
        partition commits no further, so the request is read again after a restart.
        """
        await self._slots.acquire()
        tracker = self._trackers.get(tp)
        if tracker is None:
            # Read under an earlier assignment (it waited for a slot across a
            # rebalance), and its partition is not this worker's now: its owner reads
            # it again from the committed offset. Serving it here could commit nothing.
            # Or it came after this worker was given the partition and before the
            # partition was anchored: ``anchor`` then reads it again.
            self._slots.release()
            self.stale += 1
            dropped = self._unanchored.get(tp)
            if dropped is None or record.offset < dropped:
                self._unanchored[tp] = record.offset
            log.info("record_not_owned", partition=record.partition, offset=record.offset)
            return
        missing = tracker.missing
        if not tracker.begin(record.offset):
            self._slots.release()
            ack()
            self.redelivered += 1
            return
        self._reread.pop(tp, None)  # the partition's records come again
        if tracker.missing > missing:
            # The delivery skipped offsets (records handed over before the seek that
            # follows an assignment, or cancelled by faust during a recovery). They
            # hold this partition's commits, and the partition is read again from the
            # first of them; records that come again are ignored by the tracker.
            first = tracker.first_missing
            log.warning(
                "offsets_skipped_by_consumer",
                partition=record.partition,
                offset=record.offset,
                skipped=tracker.missing - missing,
                refetch_from=first,
            )
            if self._refetch is not None and first is not None:
                self._refetch(tp, first)
        try:
            outcome, hold_ms = await self._admit(tracker, record, ack)
        except Exception:
            self._slots.release()
            log.exception(
                "request_admission_failed", partition=record.partition, offset=record.offset
            )
            return
        if outcome is None:
            return
        lease = SlotLease(self._pool, held=True)
        if hold_ms > 0:
            # A rate-limit reservation waits for its turn without an in-flight slot: a
            # client far over its limit must not take the slots every other client
            # (and the rest of its own partition) needs. Reservations are bounded by
            # the client's own rate times its longest wait; past that it is refused.
            lease.release()
        task = asyncio.create_task(self._run(tracker, record, outcome, ack, lease, hold_ms))
        tasks = self._tasks[tp]
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(self._task_done)
        self._running += 1

    def _task_done(self, _: object) -> None:
        self._running -= 1

    async def _admit(
        self, tracker: OffsetTracker, record: Record, ack: Callable[[], object]
    ) -> tuple[Admitted | Rejected | None, int]:
        """Admission, dedupe and rate limits; (None, 0) when the record needs no work.

        Never raises: a failure here becomes an ``internal_error`` dead letter.
        """
        try:
            return await self._admit_or_raise(tracker, record, ack)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception(
                "request_admission_failed", partition=record.partition, offset=record.offset
            )
            return refuse(record, self._settings, _internal(exc, "admitting the record")), 0

    async def _admit_or_raise(
        self, tracker: OffsetTracker, record: Record, ack: Callable[[], object]
    ) -> tuple[Admitted | Rejected | None, int]:
        outcome = admit(record, config=self._config, settings=self._settings, now_ms=_now_ms())
        if isinstance(outcome, Rejected):
            return outcome, 0
        if not record.force:
            answered = self._done.get(done_key(outcome.request.client_id, outcome.request.id))
            if answered is not None:
                self._skip(tracker, record, outcome, answered, ack)
                return None, 0
        # Runs in the agent's iteration, so the table write belongs to this record's
        # partition: the single writer of this client's buckets. Limits run in event
        # time: the same records give the same decisions after a restart, and a
        # backlog is charged as it was sent, not as it drains.
        key = outcome.request.client_id.encode()
        charged = charge(
            outcome, config=self._config, state=self._buckets.get(key), now_ms=record.timestamp_ms
        )
        if isinstance(charged, Rejected):
            return charged, 0
        if charged.state is not None:
            await self._buckets.put(record.partition, key, charged.state)
        return outcome, record.timestamp_ms + charged.wait_ms - _now_ms()

    def _skip(
        self,
        tracker: OffsetTracker,
        record: Record,
        job: Admitted,
        answered: bytes,
        ack: Callable[[], object],
    ) -> None:
        """A request answered ok before (a replay, or a repeat): do not serve it twice."""
        tracker.finish(record.offset)
        ack()
        self._slots.release()
        self.skipped += 1
        self.metrics.skipped()
        log.info(
            "request_skipped",
            reason="already answered ok",
            request_id=job.request.id,
            client_id=job.request.client_id,
            replay=record.replay,
            answered=answered.decode("utf-8", "replace"),
            partition=record.partition,
            offset=record.offset,
        )

    async def _run(
        self,
        tracker: OffsetTracker,
        record: Record,
        outcome: Admitted | Rejected,
        ack: Callable[[], object],
        lease: SlotLease,
        hold_ms: int = 0,
    ) -> None:
        tp = TP(record.topic, record.partition)
        deadline = outcome.deadline_ms if isinstance(outcome, Admitted) else None
        stage = Stage("serving", "serving the request", deadline)
        # Every line logged while serving it names the request (this task's context only).
        rid: str | None
        cid: str | None
        if isinstance(outcome, Admitted):
            rid, cid = outcome.request.id, outcome.request.client_id
        else:
            rid, cid = outcome.request_id, outcome.client_id
        logs.bind_request(request_id=rid, client_id=cid)
        _stage.set(stage)
        _replied.set(False)
        self._stages[tp][record.offset] = stage
        self._watched.add(tp)
        try:
            try:
                if isinstance(outcome, Rejected):
                    await self._reject(record, outcome)
                else:
                    trace = dict(record.trace_headers)
                    picked = _now_ms()
                    with tracing.request_span(
                        trace, outcome.request, enqueued_ms=record.timestamp_ms, picked_ms=picked
                    ):
                        if not lease.held:  # a reservation takes its slot when its turn comes
                            stage.cause = "rate_limit_wait"
                            stage.detail = "waiting for its rate limit"
                            with tracing.span("turnout.rate_limit_wait", wait_ms=hold_ms):
                                await asyncio.sleep(hold_ms / 1000)
                                await lease.acquire()
                        stage.cause, stage.detail = "serving", "serving the request"
                        await self._serve(record, outcome, lease)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._fail(record, outcome, exc)
            tracker.finish(record.offset)
            ack()
        except asyncio.CancelledError:
            self._forget_stage(tp, record.offset)
            raise
        except Exception:
            # Only a bug in the failure path itself gets here: the offset stays
            # unfinished (the request stays in Kafka) and check_commits reports it.
            stage.cause, stage.detail = "internal_error", "failed, and could not be dead-lettered"
            stage.deadline_ms = None
            log.exception(
                "request_failed_internally", offset=record.offset, partition=record.partition
            )
            return  # the stage stays, naming the cause of the stall
        finally:
            lease.release()
        self._forget_stage(tp, record.offset)

    def _forget_stage(self, tp: TP, offset: int) -> None:
        stages = self._stages.get(tp)
        if stages is not None:
            stages.pop(offset, None)
            if not stages:
                del self._stages[tp]

    async def _fail(self, record: Record, outcome: Admitted | Rejected, exc: Exception) -> None:
        """Something other than bad input failed: dead-letter the record with the reason.

        An error reply goes to the client too, unless a final reply is already out.
        """
        if isinstance(exc, TurnoutError):
            error: TurnoutError = exc
            log.warning(
                "request_failed", code=exc.code, offset=record.offset, partition=record.partition
            )
        else:
            log.exception("request_failed", offset=record.offset, partition=record.partition)
            error = _internal(exc, _stage_detail())
        rid: str | None
        cid: str | None
        reply_to: str | None
        if isinstance(outcome, Admitted):
            rid, cid, reply_to = outcome.request.id, outcome.request.client_id, outcome.reply_to
        else:
            rid, cid, reply_to = outcome.request_id, outcome.client_id, outcome.reply_to
        if _replied.get():
            reply_to = None  # the client has its final reply; the operator learns of the failure
            error = error.with_message(f"{error.message} (after its final reply was published)")
        elif isinstance(error, ReplyUnpublishable):
            reply_to = None
        await self._reject(record, Rejected(error, rid, cid, reply_to))

    async def _reject(self, record: Record, rejected: Rejected) -> None:
        err = rejected.error
        if err.code == "rate_limited":
            self.metrics.rate_limited()
        if rejected.dead_letter:
            self.metrics.dead_lettered(err.code)
            await self._dead_letter(record, rejected)
        replied = rejected.reply_to is not None and rejected.request_id is not None
        if rejected.reply_to is not None and rejected.request_id is not None:
            total = float(_now_ms() - record.timestamp_ms)
            reply = Reply(
                id=rejected.request_id,
                status="error",
                client_id=rejected.client_id,
                error=ErrorInfo.from_error(err),
                timings=Timings(queue_ms=total, backend_ms=0.0, total_ms=total),
            )
            try:
                await self._reply(rejected.reply_to, reply)
            except ReplyUnpublishable as exc:
                if not rejected.dead_letter:
                    raise  # not dead-lettered yet: _fail does it
                # the record is in the dead-letter topic already: that is where it ends
                replied = False
                log.warning("error_reply_unpublishable", request_id=reply.id, error=exc.message)
        t = float(_now_ms() - record.timestamp_ms)
        if replied:
            self.metrics.request_completed(None, None, "error", err.code, t, 0.0, t)
        log.info(
            "request_completed",
            request_id=rejected.request_id,
            client_id=rejected.client_id,
            route=None,
            backend=None,
            policy=None,
            status="error",
            code=err.code,
            attempts=0,
            queue_ms=t,
            backend_ms=0.0,
            total_ms=t,
            dead_lettered=rejected.dead_letter,
            replied=replied,
            partition=record.partition,
            offset=record.offset,
        )

    async def _dead_letter(self, record: Record, rejected: Rejected) -> None:
        """Publish the record's dead letter; by reference if the copy is too large.

        The dead-letter topic is the last resort, so this does not give up: a copy the
        broker refuses is sent again as a reference (a few KB); a reference refused for
        good (the topic not writable, say) is retried with backoff up to a minute apart,
        loudly, while ``check_commits`` reports the stalled partition.
        """
        err = rejected.error
        _set_stage("dead_lettering", f"publishing to {self._settings.dead_letter_topic}")
        letter = dead_letter_for(
            record,
            code=err.code,
            reason=err.message,
            now_ms=_now_ms(),
            max_bytes=self._settings.dead_letter_max_bytes,
            request_id=rejected.request_id,
            client_id=rejected.client_id,
        )
        forms = [letter]
        if letter.original is None:
            forms.append(_by_reference(letter, record, self._settings))
        delay = 1.0
        while True:
            try:
                letter = await self._publish_first(forms, record)
                break
            except Exception as exc:  # the last resort: whatever fails, try again later
                log.error(
                    "dead_letter_unpublishable",
                    partition=record.partition,
                    offset=record.offset,
                    error=str(exc) or type(exc).__name__,
                    retry_in_s=round(delay, 1),
                )
                _set_stage(
                    "dead_letter_unpublishable",
                    f"the dead letter is refused: {str(exc) or type(exc).__name__}",
                )
                await asyncio.sleep(delay * (0.5 + self._rng.random()))
                delay = min(delay * 2, 60.0)
        if letter.original is not None:
            log.info(
                "dead_lettered_by_reference",
                partition=record.partition,
                offset=record.offset,
                size=letter.original.value_bytes,
                sha256=letter.original.value_sha256,
            )

    async def _publish_first(self, forms: list[DeadLetter], record: Record) -> DeadLetter:
        """Publish the first form of a dead letter the broker takes; raise the last refusal."""
        for i, letter in enumerate(forms):
            try:
                await self._publisher.dead_letter(letter)
                return letter
            except PublishFailed as exc:
                if i == len(forms) - 1:
                    raise
                log.warning(
                    "dead_letter_refused",
                    partition=record.partition,
                    offset=record.offset,
                    error=str(exc),
                    next="by_reference",
                )
        raise AssertionError("no forms")  # pragma: no cover

    def new_generation(self) -> str:
        """A token unique to one serve of one request, in its chunks and final reply."""
        return f"{self._generation_tag}-{next(self._generations)}"

    async def _serve(self, record: Record, job: Admitted, lease: SlotLease | None = None) -> None:
        req = job.request
        generation = self.new_generation()
        tried: set[str] = set()
        attempts = 0
        reached = 0
        redispatched = 0
        backend_ms = 0.0
        first_call_ms: int | None = None
        decision: Decision | None = None
        degraded = False
        body: dict[str, object] | None = None
        error: TurnoutError | None = None
        sticky = self._sticky(job)
        prefer = self._affinity.get(sticky) if sticky is not None else None
        spill = self._spill_offer(job)
        while True:
            try:
                with tracing.span("turnout.route", attempt=attempts + 1) as span:
                    decision, fell_back = await self.chooser.choose(
                        job, frozenset(tried), lease, prefer.decode() if prefer else None, spill
                    )
                    span.set_attributes(tracing.decision_attributes(decision, fell_back))
            except TurnoutError as exc:
                error = exc
                break
            except Spill as to:
                await self._serve_elsewhere(record, job, to, attempts, generation, lease)
                return
            degraded = degraded or fell_back
            backend = self.chooser.backends[decision.backend]
            attempts += 1
            if first_call_ms is None:
                first_call_ms = _now_ms()
            streaming = req.stream and req.kind != "embeddings"
            limits = self.chooser.timeouts(
                backend, job.deadline_ms - _now_ms(), stream=bool(streaming)
            )
            # Only plain calls may be abandoned: a stream may have sent chunks already.
            token = self.chooser.started(backend.id, abandonable=not streaming)
            started = time.monotonic()
            call_error: BackendError | None = None
            abandoned = False
            relayed = [0]
            try:
                if streaming:
                    body = await self._relay_stream(
                        job, decision, attempts, limits.total_s, relayed, generation, limits
                    )
                else:
                    body = await self._client.call(
                        backend,
                        kind=req.kind,
                        model=decision.model,
                        body=req.body,
                        timeout_s=limits.total_s,
                        first_byte_s=(
                            limits.first_byte_s if limits.first_byte_ms < limits.total_ms else None
                        ),
                    )
            except BackendError as exc:
                call_error = exc
            except asyncio.CancelledError:
                # Cancelled by the chooser because the backend turned unhealthy (and by
                # nothing else: then uncancel() leaves 0): retry it elsewhere.
                task = asyncio.current_task()
                if not self.chooser.abandoned(token) or task is None or task.uncancel():
                    raise
                call_error = BackendTimeout(
                    f"abandoned: backend {backend.id!r} was judged unhealthy "
                    f"({self.chooser.health.machines[backend.id].reason}) while the call "
                    "waited; re-dispatched",
                    backend=backend.id,
                )
                abandoned = True
                redispatched += 1
                self.metrics.redispatched(backend.id)
            finally:
                took_ms = (time.monotonic() - started) * 1000
                backend_ms += took_ms
                self.chooser.finished(backend.id, token)
            if not abandoned:  # the hang already counted; an abandoned call is no evidence
                self.chooser.observe(
                    backend.id,
                    call_error,
                    took_ms,
                    blame=blames_backend(
                        timed_out=isinstance(call_error, BackendTimeout)
                        and call_error.limit == "total",
                        deadline_capped=limits.deadline_capped,
                        timeout_ms=limits.total_ms,
                        p99_ms=self.chooser.health.percentile(backend.id, 99),
                    ),
                )
            if attempts == 1:
                self.chooser.budget(job).deposit()
            if call_error is None:
                error = None
                break
            error = call_error
            remaining_ms = job.deadline_ms - _now_ms()
            # A refused connection never reached the backend: retrying it cannot do the
            # work twice, so only calls that did reach it count against max_attempts.
            reached_backend = not isinstance(error, BackendUnavailable)
            if reached_backend:
                reached += 1
            tried.add(backend.id)
            budget = self.chooser.budget(job)
            step = next_step(
                retryable=error.retryable,
                reached=reached_backend,
                relayed=relayed[0],
                attempts_reached=reached,
                max_attempts=job.route.max_attempts,
                remaining_ms=remaining_ms,
                budget_available=budget.available(),
                idle_target=self.chooser.idle_target(job, frozenset(tried)),
            )
            if not step.retry:
                error = self._final_error(job, error, step.why, relayed[0], attempts)
                break
            if step.charge_budget:
                budget.withdraw()
            await asyncio.sleep(min(retry_delay_s(attempts, self._rng), remaining_ms / 1000))

        now = _now_ms()
        timings = Timings(
            queue_ms=float((first_call_ms or now) - record.timestamp_ms),
            backend_ms=round(backend_ms, 3),
            total_ms=float(now - record.timestamp_ms),
        )
        reply = Reply(
            id=req.id,
            status="ok" if error is None else "error",
            client_id=req.client_id,
            body=body if error is None else None,
            error=None if error is None else _error_info(error, attempts, job.route_name),
            backend=decision.backend if decision else None,
            route=job.route_name,
            policy=decision.policy if decision else None,
            reason=decision.reason if decision else None,
            attempts=attempts,
            degraded=degraded,
            timings=timings,
            generation=generation,
        )
        await self._reply(job.reply_to, reply)
        if error is None:
            await self._record_done(
                record.partition,
                done_key(req.client_id, req.id),
                done_value(
                    at_ms=now,
                    backend=reply.backend,
                    replay=record.replay,
                    partition=record.partition,
                ),
            )
            if sticky is not None and decision is not None and not degraded:
                served = decision.backend.encode()
                if served != prefer:
                    await self._record_affinity(record.partition, sticky, served)
        self.metrics.request_completed(
            job.route_name,
            reply.backend,
            reply.status,
            error.code if error else None,
            timings.queue_ms,
            timings.backend_ms,
            timings.total_ms,
            body.get("usage") if body is not None and error is None else None,  # type: ignore[arg-type]
        )
        fields = {}
        if self._settings.log_content:
            fields = {"request_body": req.body, "response_body": body}
        log.info(
            "request_completed",
            request_id=req.id,
            client_id=req.client_id,
            kind=req.kind,
            model=req.model,
            route=job.route_name,
            backend=reply.backend,
            policy=reply.policy,
            status=reply.status,
            code=error.code if error else None,
            degraded=degraded,
            attempts=attempts,
            redispatched=redispatched,
            queue_ms=timings.queue_ms,
            backend_ms=timings.backend_ms,
            total_ms=timings.total_ms,
            partition=record.partition,
            offset=record.offset,
            **fields,
        )

    def _spill_offer(self, job: Admitted) -> Callable[[str], Spill | None] | None:
        """The chooser's way to spill ``job`` to another region, if its route names one."""
        fw = self.forwarding
        if fw is None or not job.route.regions or not spillable(job.request, job.reply_to):
            return None
        return lambda why: fw.offer(job, why)

    async def _serve_elsewhere(
        self,
        record: Record,
        job: Admitted,
        to: Spill,
        attempts: int,
        generation: str,
        lease: SlotLease | None,
    ) -> None:
        """No local target can serve in time: another region serves; publish its answer.

        The offset stays unfinished until the final reply is on the broker (as for a
        local serve). A request answered ok meanwhile by another serve of the same id
        gets no second final reply (the ``done`` table).
        """
        assert self.forwarding is not None
        req = job.request
        if lease is not None:
            lease.release()  # waiting for another region holds no local slot
        _set_stage("forwarded", f"forwarded to region {to.region}, waiting for its reply")
        reply = await self.forwarding.forward(
            job,
            to,
            record_timestamp_ms=record.timestamp_ms,
            local_attempts=attempts,
            generation=generation,
        )
        key = done_key(req.client_id, req.id)
        if self._done.get(key) is not None:
            self.forwarding.counts["duplicate_suppressed"] += 1
            log.info("request_skipped", reason="already answered ok", request_id=req.id)
            return
        await self._reply(job.reply_to, reply)
        if reply.status == "ok":
            await self._record_done(
                record.partition,
                key,
                done_value(
                    at_ms=_now_ms(),
                    backend=reply.backend,
                    replay=record.replay,
                    partition=record.partition,
                ),
            )
        t = reply.timings or Timings(queue_ms=0.0, backend_ms=0.0, total_ms=0.0)
        code = reply.error.code if reply.error else None
        self.metrics.request_completed(
            job.route_name, reply.backend, reply.status, code, t.queue_ms, t.backend_ms, t.total_ms
        )
        log.info(
            "request_completed",
            request_id=req.id,
            client_id=req.client_id,
            kind=req.kind,
            model=req.model,
            route=job.route_name,
            backend=reply.backend,
            status=reply.status,
            code=code,
            degraded=True,
            served_region=reply.served_region,
            spill_why=to.why,
            attempts=reply.attempts,
            queue_ms=t.queue_ms,
            backend_ms=t.backend_ms,
            total_ms=t.total_ms,
            partition=record.partition,
            offset=record.offset,
        )

    def _sticky(self, job: Admitted) -> bytes | None:
        """The affinity table key of a request on a ``cache_affinity`` route, else None."""
        if not job.route.cache_affinity:
            return None
        req = job.request
        key = affinity_key(req.body, req.metadata)
        return None if key is None else table_key(req.client_id, key)

    async def _record_affinity(self, partition: int, key: bytes, backend: bytes) -> None:
        """Remember which backend served a cache key (in the request's own partition, like
        ``done``); a failure costs one cache miss later, never the request."""
        try:
            await self._affinity.put(partition, key, backend)
        except Exception:
            log.exception("affinity_unrecorded", backend=backend.decode())

    def _final_error(
        self, job: Admitted, error: BackendError, why: str, relayed: int, attempts: int
    ) -> TurnoutError:
        """The error the reply carries when ``next_step`` says stop, with retry advice."""
        if relayed:
            # The client has part of an answer: another backend cannot continue it,
            # so the stream ends here with an explicit error, never silently.
            return _broken_stream(error, relayed)
        if job.deadline_ms - _now_ms() <= 0:
            return DeadlineExceeded(
                f"the deadline passed during attempt {attempts} (last: {error.message}); "
                "send it again with a longer timeout_ms",
                retry_after_ms=self.chooser.advice_ms(job),
            )
        if why == BUDGET_SPENT:
            error = error.with_message(
                f"{error.message}; not retried: route {job.route_name!r} has spent its "
                "retry budget (its backends are failing many requests, none is idle)"
            )
        if error.retryable:
            error.retry_after_ms = self.chooser.advice_ms(job, backend_says_ms=error.retry_after_ms)
        return error

    async def _record_done(self, partition: int, key: bytes, value: bytes) -> None:
        """Remember a request answered ok, after its reply is on the broker.

        This runs in the request's own task, which asyncio started with a copy of
        the agent's context: faust's current event is this request's record, so the
        write lands in the ``done`` partition of the request's own partition (the
        single writer of it). The changelog record is flushed before the next
        commit. The entry says when, so ``DoneSweeper`` can evict it after the dedupe
        window (``turnout.core.retention``). A failure here costs dedupe of one request,
        never the request: it must not leave the offset unfinished.
        """
        try:
            await self._done.put(partition, key, value)
        except Exception:
            log.exception("done_unrecorded", key=key.decode("utf-8", "replace"))

    async def _reply(self, topic: str, reply: Reply) -> None:
        """Publish the final reply; if the broker refuses it for good, say so instead.

        A reply the broker can never take (larger than its message size limit, say)
        must not leave the request unfinished: its partition could not commit past it.
        If even the error reply is refused, ``ReplyUnpublishable`` is raised, and the
        record is dead-lettered instead.
        """
        _set_stage("publishing_reply", f"publishing the reply to {topic}")
        try:
            with tracing.span("turnout.reply_publish", **{"messaging.destination.name": topic}):
                await self._publisher.reply(topic, reply)
        except PublishFailed as exc:
            log.warning("reply_refused", request_id=reply.id, error=str(exc))
            error = ErrorInfo(
                code="reply_unpublishable",
                message=f"the reply could not be published ({exc}); a response this large "
                "cannot travel through Kafka with the broker's current message.max.bytes",
                retryable=False,
            )
            try:
                await self._publisher.reply(
                    topic,
                    Reply(
                        id=reply.id,
                        status="error",
                        client_id=reply.client_id,
                        error=error,
                        backend=reply.backend,
                        route=reply.route,
                        attempts=reply.attempts,
                        timings=reply.timings,
                        generation=reply.generation,
                    ),
                )
            except PublishFailed as again:
                raise ReplyUnpublishable(
                    f"neither the reply nor an error reply could be published to {topic}: {again}"
                ) from None
        _replied.set(True)

    async def _relay_stream(
        self,
        job: Admitted,
        decision: Decision,
        attempt: int,
        timeout_s: float,
        relayed: list[int],
        generation: str | None = None,
        limits: CallTimeouts | None = None,
    ) -> dict[str, object]:
        """Publish each backend chunk in order on the reply topic; return the whole answer.

        Chunks carry this serve's ``generation``: a reader keeps to one generation.
        """
        req = job.request
        chunks = []
        async for delta in self._client.stream(
            self.chooser.backends[decision.backend],
            kind=req.kind,
            model=decision.model,
            body=req.body,
            timeout_s=timeout_s,
            first_byte_s=None if limits is None else limits.first_byte_s,
            stall_s=None if limits is None else limits.stall_s,
        ):
            self.chooser.progressed(decision.backend)
            chunk = ReplyChunk(
                id=req.id, seq=relayed[0], attempt=attempt, generation=generation, delta=delta
            )
            await self._publisher.chunk(job.reply_to, chunk)
            relayed[0] += 1
            chunks.append(delta)
        return accumulate(req.kind, chunks)


def _internal(exc: BaseException, doing: str) -> InternalError:
    """The error of a record turnout failed on; never the exception's text (it may quote
    the request)."""
    return InternalError(
        f"turnout failed while {doing} ({type(exc).__name__}); the record is dead-lettered: "
        "replay it with turnout dlq replay once the cause is fixed"
    )


def _stage_detail() -> str:
    stage = _stage.get()
    return stage.detail if stage is not None else "processing the record"


def _by_reference(letter: DeadLetter, record: Record, settings: Settings) -> DeadLetter:
    return dead_letter_for(
        record,
        code=letter.code,
        reason=letter.reason,
        now_ms=letter.dead_lettered_at_ms,
        max_bytes=settings.dead_letter_max_bytes,
        request_id=letter.request_id,
        client_id=letter.client_id,
        by_reference=True,
    )


def _broken_stream(error: BackendError, relayed: int) -> BackendError:
    """The same failure, saying that the client already holds part of the answer."""
    return error.with_message(
        f"the stream broke after {relayed} chunk(s) were sent: {error.message}; "
        "send the request again for a complete answer"
    )


def _error_info(error: TurnoutError, attempts: int, route: str) -> ErrorInfo:
    message = error.message
    if isinstance(error, BackendError):
        message = f"{message} (after {attempts} attempt(s) on route {route!r})"
    retry_after = error.retry_after_ms
    if retry_after is None and error.retryable:
        retry_after = 1000
    return ErrorInfo(
        code=error.code, message=message, retryable=error.retryable, retry_after_ms=retry_after
    )
