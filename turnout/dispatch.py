"""Serving admitted requests: many backend calls in flight, offsets committed in order.

The agent hands every record to ``Dispatcher.submit``. ``submit`` waits for one
of ``TURNOUT_MAX_IN_FLIGHT`` slots (waiting is the backpressure: the agent stops
reading and faust pauses fetching), registers the offset with its partition's
``OffsetTracker``, and runs the request in its own task. The task finishes the
offset only after the final reply (or dead letter) is on the broker, so a crash
at any point leaves the request in Kafka, to be read again.

On a rebalance the tasks of revoked partitions are cancelled and their trackers
dropped: the new owner reads those requests again (a repeat carries the same id).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import orjson
from faust.types import TP

from schemas.types import DeadLetter, ErrorInfo, Reply, ReplyChunk, Source, Timings
from streams.settings import Settings
from streams.tables import MemoryTable, StateTable, done_key
from turnout import logs
from turnout.admission import Admitted, Record, Rejected, admit, charge
from turnout.backends import BackendClient
from turnout.backends.streaming import accumulate
from turnout.chooser import Chooser
from turnout.config import Config
from turnout.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    DeadlineExceeded,
    TurnoutError,
)
from turnout.health.book import HealthBook
from turnout.health.timeouts import CallTimeouts
from turnout.metrics import Metrics
from turnout.offsets import OffsetTracker
from turnout.publisher import Publisher, PublishFailed
from turnout.retry import BUDGET_SPENT, blames_backend, next_step
from turnout.routing import Decision, retry_delay_s

log = logs.get("turnout.request")


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
        health: HealthBook | None = None,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._config = config
        self._client = client
        self._publisher = publisher
        self._done: StateTable = MemoryTable() if done is None else done
        self._buckets: StateTable = MemoryTable() if buckets is None else buckets
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._trackers: dict[TP, OffsetTracker] = {}
        self._tasks: dict[TP, set[asyncio.Task[None]]] = defaultdict(set)
        self._running = 0
        self.metrics = metrics or Metrics.from_config(config, settings.request_topic)
        self.metrics.count_in_flight(lambda: self._running)
        self.chooser = Chooser(
            settings=settings, config=config, health=health, metrics=self.metrics, rng=rng
        )
        self._rng = rng or random.Random()
        self.skipped = 0
        self.redelivered = 0

    # -- offsets ---------------------------------------------------------------

    def wake(self) -> None:
        """Health or capacity changed: abandon calls stuck on unhealthy backends, wake waiters."""
        self.chooser.health_changed()

    def share_capacity(self, assigned: int, total: int) -> None:
        self.chooser.share_capacity(assigned, total)

    def committable(self, tp: TP) -> int | None:
        tracker = self._trackers.get(tp)
        return None if tracker is None else tracker.committable

    def pin(self, tp: TP, offset: int) -> None:
        """Hold ``offset`` unfinished: its partition commits no further until reassigned."""
        self._trackers.setdefault(tp, OffsetTracker()).begin(offset)

    def revoke(self, tps: Iterable[TP]) -> None:
        """Forget revoked partitions: cancel their requests, drop their trackers."""
        for tp in tps:
            self._trackers.pop(tp, None)
            for task in self._tasks.pop(tp, set()):
                task.cancel()

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
        tracker = self._trackers.setdefault(tp, OffsetTracker())
        missing = tracker.missing
        if not tracker.begin(record.offset):
            self._slots.release()
            ack()
            self.redelivered += 1
            return
        if tracker.missing > missing:
            # faust skipped offsets: they hold this partition's commits from now on,
            # so those requests stay in Kafka for the partition's next owner.
            log.warning(
                "offsets_skipped_by_consumer",
                partition=record.partition,
                offset=record.offset,
                skipped=tracker.missing - missing,
            )
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
        task = asyncio.create_task(self._run(tracker, record, outcome, ack, hold_ms))
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
        """Admission, dedupe and rate limits; (None, 0) when the record needs no work."""
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
        hold_ms: int = 0,
    ) -> None:
        try:
            if isinstance(outcome, Rejected):
                await self._reject(record, outcome)
            else:
                if hold_ms > 0:  # a rate-limit reservation: its turn comes then
                    await asyncio.sleep(hold_ms / 1000)
                await self._serve(record, outcome)
            tracker.finish(record.offset)
            ack()
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug, not bad input: keep the request in Kafka (its offset is not
            # finished) and say so loudly; the worker itself keeps going.
            log.exception(
                "request_failed_internally", offset=record.offset, partition=record.partition
            )
        finally:
            self._slots.release()

    async def _reject(self, record: Record, rejected: Rejected) -> None:
        err = rejected.error
        if err.code == "rate_limited":
            self.metrics.rate_limited()
        if rejected.dead_letter:
            self.metrics.dead_lettered(err.code)
            await self._publisher.dead_letter(
                DeadLetter(
                    code=err.code,
                    reason=err.message,
                    source=Source(
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        timestamp_ms=record.timestamp_ms,
                    ),
                    key=record.key,
                    value=record.value,
                    request_id=rejected.request_id,
                    client_id=rejected.client_id,
                    dead_lettered_at_ms=_now_ms(),
                )
            )
        if rejected.reply_to is not None and rejected.request_id is not None:
            total = float(_now_ms() - record.timestamp_ms)
            await self._reply(
                rejected.reply_to,
                Reply(
                    id=rejected.request_id,
                    status="error",
                    client_id=rejected.client_id,
                    error=ErrorInfo.from_error(err),
                    timings=Timings(queue_ms=total, backend_ms=0.0, total_ms=total),
                ),
            )
        if rejected.reply_to is not None and rejected.request_id is not None:
            t = float(_now_ms() - record.timestamp_ms)
            self.metrics.request_completed(None, None, "error", err.code, t, 0.0, t)
        log.info(
            "request_completed",
            status="error",
            code=err.code,
            request_id=rejected.request_id,
            client_id=rejected.client_id,
            dead_lettered=rejected.dead_letter,
            replied=rejected.reply_to is not None and rejected.request_id is not None,
            partition=record.partition,
            offset=record.offset,
        )

    async def _serve(self, record: Record, job: Admitted) -> None:
        req = job.request
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
        while True:
            try:
                decision, fell_back = await self.chooser.choose(job, frozenset(tried))
            except TurnoutError as exc:
                error = exc
                break
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
                        job, decision, attempts, limits.total_s, relayed, limits
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
        )
        await self._reply(job.reply_to, reply)
        if error is None:
            await self._record_done(
                record.partition,
                done_key(req.client_id, req.id),
                orjson.dumps({"at_ms": now, "backend": reply.backend, "replay": record.replay}),
            )
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
        commit. A failure here costs dedupe of one request, never the request: it
        must not leave the offset unfinished.
        """
        try:
            await self._done.put(partition, key, value)
        except Exception:
            log.exception("done_unrecorded", key=key.decode("utf-8", "replace"))

    async def _reply(self, topic: str, reply: Reply) -> None:
        """Publish the final reply; if the broker refuses it for good, say so instead.

        A reply the broker can never take (larger than its message size limit, say)
        must not leave the request unfinished: its partition could not commit past it.
        """
        try:
            await self._publisher.reply(topic, reply)
        except PublishFailed as exc:
            log.warning("reply_refused", request_id=reply.id, error=str(exc))
            error = ErrorInfo(
                code="reply_unpublishable",
                message=f"the reply could not be published ({exc}); a response this large "
                "cannot travel through Kafka with the broker's current message.max.bytes",
                retryable=False,
            )
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
                ),
            )

    async def _relay_stream(
        self,
        job: Admitted,
        decision: Decision,
        attempt: int,
        timeout_s: float,
        relayed: list[int],
        limits: CallTimeouts | None = None,
    ) -> dict[str, object]:
        """Publish each backend chunk in order on the reply topic; return the whole answer."""
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
            chunk = ReplyChunk(id=req.id, seq=relayed[0], attempt=attempt, delta=delta)
            await self._publisher.chunk(job.reply_to, chunk)
            relayed[0] += 1
            chunks.append(delta)
        return accumulate(req.kind, chunks)


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
