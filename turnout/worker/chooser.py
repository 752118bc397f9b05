"""Choosing a backend for each attempt: the stateful side of routing.

``routing.decide`` is the pure decision. The ``Chooser`` owns what it decides
from, for one worker: each backend's calls in flight and this worker's share of
its concurrency and rate caps, health (unroutable, cooling, probation), latency
averages, per-route retry budgets, and the requests waiting for a backend,
released highest priority first.

It also keeps each call in flight (its start, for the hang detector in the health
book, and its task): when a backend turns unhealthy, its calls that have not sent
anything to the client yet are cancelled so that their requests are re-dispatched
(``health_changed``). Cancel-and-retry, not hedging: the hang detector has already
decided that the backend will not answer, so a hedge would only keep a doomed call
(and the backend's slot) alive; and hedging every slow call doubles the load exactly
when a fleet is overloaded. Streams that have started are never abandoned: another
backend cannot continue them; their first-byte and stall timeouts cut them instead.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Collection
from typing import NamedTuple, Protocol

import msgspec

from turnout import logs
from turnout.config import Backend, Config, Route
from turnout.core import capshare
from turnout.core.admission import Admitted
from turnout.core.budget import RetryBudget
from turnout.core.ratelimit import ClientLimits, ClientState
from turnout.core.retry import backlog_clear_ms, retry_after_ms
from turnout.core.routing import Decision, RouteRequest, Snapshot, decide
from turnout.core.spillover import Spill, local_outlook
from turnout.core.tokens import estimate_completion_tokens
from turnout.errors import (
    BackendError,
    BackendProtocolError,
    BackendStatusError,
    DeadlineExceeded,
)
from turnout.health.book import HealthBook
from turnout.health.machine import State
from turnout.health.timeouts import CallTimeouts, call_timeouts
from turnout.settings import Settings
from turnout.worker.metrics import Metrics

log = logs.get("turnout.request")

LATENCY_REFRESH_S = 2.0
"""How old an idle backend's latency average may grow before ``latency`` measures it again.

The ``latency`` policy sends every request to the fastest average, so the others
get no traffic and their averages never change: one slow answer (a cold start, a
busy moment) would keep a fast backend out for good. An average older than this,
of a backend with nothing in flight, is due: the next ``latency`` decision tries
that backend once, and the measurement replaces the old average instead of being
blended into it. The cost is one request per backend per refresh period.
"""

LATENCY_MEMORY_S = 15.0
"""How long an idle backend's latency average keeps counting for routing.

``local_first`` passes over a local backend whose average says it would miss the
deadline, and ``latency`` prefers the fastest. Without traffic an average never
changes, so a local model that was slow once (a burst, a busy machine) would never
be tried again. An average not refreshed for this long, of a backend with no call
in flight, is forgotten: the next request measures the backend afresh.
"""

SPILL_RECHECK_S = 1.0
"""How often a request waiting for a local target asks again whether to spill over."""
DRAIN_WINDOW_MS = 10_000
"""Completions over this long measure how fast a backend drains its backlog."""
IDLE_LOAD = 0.5
"""A healthy target below this share of its cap is idle enough to take a retry for free."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class Woken(NamedTuple):
    """How a wait for capacity ended: woken (or timed out), and the baton of a freed unit."""

    woken: bool
    baton: int | None


class Chooser:
    def __init__(
        self,
        *,
        settings: Settings,
        config: Config,
        health: HealthBook | None = None,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._config = config
        self._rng = rng or random.Random()
        self._config_backends = {b.id: b for b in config.backends}
        self.backends = dict(self._config_backends)
        """This worker's view: caps scaled to its share of the partitions."""
        self.health = health if health is not None else HealthBook(self.backends, now_ms=_now_ms())
        self.metrics = metrics
        self._in_flight: dict[str, int] = defaultdict(int)
        self._latency_ms: dict[str, float] = {}
        self._latency_at: dict[str, int] = {}
        self._turn = 0
        self._waiters: list[tuple[int, int, asyncio.Future[int | None]]] = []
        self._waiter_seq = 0
        self._rate_limits: dict[str, ClientLimits] = {}
        self._rate_state: dict[str, ClientState | None] = {}
        self._budgets: dict[str, RetryBudget] = {}
        self._calls: dict[int, tuple[str, asyncio.Task[object] | None]] = {}
        self._abandoned: set[int] = set()
        self.redispatched = 0
        """Calls cancelled because their backend turned unhealthy, their requests retried."""
        self._completions: dict[str, deque[int]] = defaultdict(deque)
        self._last_failed: dict[str, bool] = {}
        self._pending: dict[int, tuple[str, int, int]] = {}
        self._woken: Counter[int] = Counter()
        """Waiters released by ``wake`` that have not looked yet, by priority."""
        """Requests inside ``choose``: route, priority, deadline; in arrival order."""
        self._clear_cache: dict[str, tuple[int, float | None]] = {}
        self._apply_share(None)

    def __repr__(self) -> str:
        calls = {b: n for b, n in self._in_flight.items() if n}
        return f"<Chooser in_flight={calls} waiting={len(self._waiters)}>"

    def started(self, backend_id: str, *, abandonable: bool = False) -> int:
        """A call to ``backend_id`` begins; returns its token for ``finished``.

        ``abandonable``: the calling task may be cancelled if the backend turns
        unhealthy (see ``health_changed``); it must then check ``abandoned(token)``.
        """
        self._in_flight[backend_id] += 1
        token = self.health.call_started(backend_id, _now_ms())
        self._calls[token] = (backend_id, asyncio.current_task() if abandonable else None)
        return token

    def at_cap(self, backend_id: str) -> bool:
        """Whether this worker has its whole share of ``backend_id``'s cap in flight."""
        backend = self.backends.get(backend_id)
        return backend is not None and self._in_flight[backend_id] >= backend.max_concurrency

    def finished(self, backend_id: str, token: int | None = None) -> None:
        """A call to ``backend_id`` ended: its capacity is free for waiting requests."""
        self._in_flight[backend_id] -= 1
        if token is not None:
            self._calls.pop(token, None)
            self._abandoned.discard(token)
            self.health.call_ended(backend_id, token)
        self._release(None)

    def abandoned(self, token: int) -> bool:
        """Whether ``health_changed`` cancelled this call (once: the flag is consumed)."""
        if token in self._abandoned:
            self._abandoned.discard(token)
            return True
        return False

    def progressed(self, backend_id: str) -> None:
        """The backend sent something (a stream chunk): it is alive."""
        self.health.progressed(backend_id, _now_ms())

    def health_changed(self) -> None:
        """Health moved: cancel calls stuck on unhealthy backends, then wake waiters.

        Each cancelled call's request is retried on a healthy target (same id, one
        final reply, the attempt counted); see the module docstring for why.
        """
        for token, (backend_id, task) in list(self._calls.items()):
            if task is None or task.done() or token in self._abandoned:
                continue
            if self.health.state(backend_id) is State.UNHEALTHY:
                self._abandoned.add(token)
                self.redispatched += 1
                task.cancel()
        self.wake()

    def timeouts(self, backend: Backend, remaining_ms: float, *, stream: bool) -> CallTimeouts:
        """This call's total, first-byte and stall limits (see ``health.timeouts``)."""
        return call_timeouts(
            p99_ms=self.health.percentile(backend.id, 99),
            remaining_ms=remaining_ms,
            stream=stream,
            timeout_ms=backend.timeout_ms,
            first_byte_timeout_ms=backend.first_byte_timeout_ms,
            stall_timeout_ms=backend.stall_timeout_ms,
            hang_after_ms=backend.hang_after_ms,
        )

    def idle_target(self, job: Admitted, tried: frozenset[str]) -> str | None:
        """A healthy, routable, untried target of the route below ``IDLE_LOAD`` of its cap,
        whose latest call succeeded (a fleet failing under load has no idle target)."""
        now = _now_ms()
        unroutable = self.health.unroutable(now)
        for t in job.route.targets:
            b = self.backends.get(t.backend)
            if b is None or b.id in tried or b.id in unroutable:
                continue
            if self.health.state(b.id) is not State.HEALTHY or self._last_failed.get(b.id):
                continue
            if self._in_flight.get(b.id, 0) < IDLE_LOAD * b.max_concurrency:
                return b.id
        return None

    def wake(self) -> None:
        """Capacity or health changed: waiting requests look again, highest priority first.

        Each waiter has its own future; resolving them in priority order makes the
        event loop run them in that order, so the first to take freed capacity is the
        most urgent request, then the oldest.
        """
        waiters, self._waiters = self._waiters, []
        for neg_priority, _, fut in sorted(waiters, key=lambda w: (w[0], w[1])):
            if not fut.done():
                fut.set_result(None)
                self._woken[-neg_priority] += 1

    def _release(self, baton: int | None) -> None:
        """One unit of capacity freed: wake the most urgent, oldest waiter, and only it.

        Waking every waiter for each finished call made all of them look and all but
        one wait again: with thousands waiting, most of the worker's time went there.
        The waiter woken holds a *baton*, the last waiter number when the unit freed.
        If it cannot take the unit (another route, a rate cap, its deadline), it
        passes the baton to the next waiter queued before that number, so the unit
        reaches everyone who could use it, and each of them at most once.
        ``baton=None``: a new unit (every waiter queued so far may take it).
        """
        bound = self._waiter_seq if baton is None else baton
        waiters, later = self._waiters, []
        while waiters:
            waiter = heapq.heappop(waiters)  # most urgent, then oldest
            neg_priority, seq, fut = waiter
            if fut.done():  # timed out or cancelled: gone
                continue
            if seq > bound:  # queued after the unit freed: it had its look
                later.append(waiter)
                continue
            fut.set_result(bound)
            self._woken[-neg_priority] += 1
            break
        for waiter in later:
            heapq.heappush(waiters, waiter)

    async def wait_for_change(self, priority: int, timeout_s: float) -> Woken:
        """Wait for a wake or ``timeout_s``: whether woken, and the baton if one came."""
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._waiter_seq += 1
        heapq.heappush(self._waiters, (-priority, self._waiter_seq, fut))
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result() is not None:
                self._release(fut.result())  # the unit it was woken for goes on
            raise
        finally:
            woken = fut.done() and not fut.cancelled()
            if woken:
                self._woken[priority] -= 1  # resumed: no longer owed a first look
        return Woken(woken, fut.result() if woken else None)

    async def _after_woken(self, priority: int) -> None:
        """Let waiters that a wake released, at least as urgent as us, look first.

        They are already queued to run; a request arriving (or timing out) just then
        must not take the capacity they were woken for. A few turns of the loop do it.
        """
        for _ in range(50):
            if not any(n > 0 for p, n in self._woken.items() if p >= priority):
                return
            await asyncio.sleep(0)

    def share_capacity(self, partitions: Collection[int], total: int) -> None:
        """Give this worker its share of every backend's concurrency and rate caps.

        Caps in the config are for the whole deployment. A worker owning
        ``partitions`` of the request topic's ``total`` may run the whole cap units
        of those partitions (``turnout.core.capshare``), so the workers together never
        exceed a cap, even one smaller than the number of workers: a worker left
        with no unit of a backend waits (its requests go elsewhere or wait for
        capacity). It is an upper bound, not a pool: a worker whose partitions are
        quiet leaves its share unused.
        """
        self._apply_share(partitions, total)
        for b in self._config_backends.values():
            if b.max_concurrency > 0 and self.backends[b.id].max_concurrency == 0:
                log.warning(
                    "capacity_share_zero",
                    backend=b.id,
                    max_concurrency=b.max_concurrency,
                    partitions=sorted(partitions),
                    of=total,
                    why="the cap's units belong to partitions this worker does not own",
                )
        self.wake()

    def _apply_share(self, partitions: Collection[int] | None, total: int = 0) -> None:
        """Scale every backend's concurrency cap and rate caps to this worker's share.

        ``None``: no assignment yet, the whole caps.
        """
        share = 1.0 if partitions is None else capshare.fraction(partitions, total)
        self.backends = {
            b.id: msgspec.structs.replace(
                b,
                max_concurrency=b.max_concurrency
                if partitions is None
                else capshare.units(b.max_concurrency, partitions, total),
            )
            for b in self._config_backends.values()
        }
        self._rate_limits = {}
        for b in self._config_backends.values():
            rps, tpm = b.rate.requests_per_s, b.rate.tokens_per_min
            if rps is None and tpm is None:
                continue
            self._rate_limits[b.id] = ClientLimits(
                requests_per_s=None if rps is None else rps * share,
                burst=max(1.0, (rps or 0) * share),
                tokens_per_min=None if tpm is None else tpm * share,
            )

    def _rate_blocked(self, tokens: int, now_ms: int) -> tuple[frozenset[str], float]:
        """Backends over their own rate caps now, and the soonest one frees up (seconds)."""
        blocked, soonest = set(), math.inf
        for bid, limits in self._rate_limits.items():
            verdict = limits.check(self._rate_state.get(bid), tokens=tokens, now_ms=now_ms)
            if not verdict.allowed:
                blocked.add(bid)
                soonest = min(soonest, verdict.retry_after_ms / 1000)
        return frozenset(blocked), soonest

    def _charge_backend(self, backend_id: str, tokens: int, now_ms: int) -> None:
        limits = self._rate_limits.get(backend_id)
        if limits is not None:
            state = self._rate_state.get(backend_id)
            self._rate_state[backend_id] = limits.check(state, tokens=tokens, now_ms=now_ms).state

    async def choose(
        self,
        job: Admitted,
        tried: frozenset[str],
        parking: Parking | None = None,
        prefer: str | None = None,
        spill: Callable[[str], Spill | None] | None = None,
    ) -> tuple[Decision, bool]:
        """Decide a backend, or a fallback route's (degraded), waiting while none can serve.

        Waiting is bounded by the request's deadline; Kafka buffers whatever does not
        fit in the worker's in-flight slots meanwhile. ``parking`` lets the caller give
        up its in-flight slot while the request waits, and take one again after;
        ``prefer`` names a backend of the route to keep (cache affinity) while it can serve.
        ``spill(why)``, when the route names other regions: asked whenever no local target
        can serve in time (``spillover.local_outlook``); the ``Spill`` it returns is raised.
        """
        key = id(job)
        self._pending[key] = (job.route_name, job.priority, job.deadline_ms)
        try:
            return await self._choose(job, tried, parking, prefer, spill)
        finally:
            self._pending.pop(key, None)

    async def _choose(
        self,
        job: Admitted,
        tried: frozenset[str],
        parking: Parking | None,
        prefer: str | None,
        spill: Callable[[str], Spill | None] | None = None,
    ) -> tuple[Decision, bool]:
        req = job.request
        fallbacks = (self._config.route(f) for f in job.route.fallbacks)
        routes = [job.route, *(r for r in fallbacks if r is not None)]
        woken = False
        baton: int | None = None
        """A freed unit this request was woken for (see ``_release``); passed on if unused."""
        try:
            while True:
                if not woken:  # a newcomer, or a timeout: woken waiters look first
                    await self._after_woken(job.priority)
                now = _now_ms()
                down_now = self.health.unroutable(now)
                too_slow = self._too_slow(routes, job.deadline_ms - now) - down_now
                unroutable = down_now | too_slow
                tokens = job.prompt_tokens + estimate_completion_tokens(req.body, kind=req.kind)
                rate_blocked, refill_s = self._rate_blocked(tokens, now)
                wanted = RouteRequest(
                    kind=req.kind,
                    client_id=req.client_id,
                    priority=job.priority,
                    metadata=req.metadata,
                    prompt_tokens=job.prompt_tokens,
                    remaining_ms=job.deadline_ms - now,
                    tiers=job.tiers,
                )
                for i, route in enumerate(routes):
                    # Probation backends get a trickle; if nothing else can serve, they serve.
                    for excluded in (
                        unroutable | rate_blocked | self.health.held_back(self._rng),
                        unroutable | rate_blocked,
                    ):
                        snapshot = Snapshot(
                            self.backends,
                            self._in_flight,
                            excluded=excluded,
                            turn=self._turn,
                            latency_ms=self._latency_view(now),
                            latency_due=frozenset(b for b in self._latency_ms if self._due(b, now)),
                        )
                        decision = decide(
                            route,
                            snapshot,
                            wanted,
                            tried=tried,
                            rng=self._rng,
                            prefer=prefer if i == 0 else None,
                        )
                        if decision is not None:
                            self._turn += 1
                            self._charge_backend(decision.backend, tokens, now)
                            baton = None  # the unit is taken
                            return decision, i > 0
                if spill is not None:
                    self._spill_if_hopeless(job, routes, tried, down_now | too_slow, now, spill)
                if too_slow:
                    # Hopeless if every live target is too slow, or only slowness stands in
                    # the way: waiting longer only leaves less time.
                    alive = {t.backend for r in routes for t in r.targets} - down_now
                    if alive <= too_slow or self._could_serve(routes, wanted, tried, down_now):
                        raise self._cannot_finish(job, too_slow, wanted.remaining_ms)
                remaining_s = (job.deadline_ms - _now_ms()) / 1000
                if remaining_s <= 0:
                    targets = dict.fromkeys(t.backend for r in routes for t in r.targets)
                    down = [b for b in targets if b in down_now]
                    why = (
                        self.health.describe(down, now)
                        if down
                        else "all at their concurrency or rate limits"
                    )
                    raise DeadlineExceeded(
                        f"no backend of route {job.route_name!r} could serve before the deadline: "
                        f"{why}; retry later or with a longer timeout_ms",
                        retry_after_ms=self.advice_ms(job, health_bound=bool(down)),
                    )
                if baton is not None:  # the unit is not for this request: the next looks
                    self._release(baton)
                    baton = None
                # Capacity and health changes wake waiters; a refilling rate cap does not.
                parked = parking is not None and parking.park()
                try:
                    # With regions to spill to, look again at least every second.
                    wait_s = min(remaining_s, refill_s, SPILL_RECHECK_S if spill else math.inf)
                    woken, baton = await self.wait_for_change(job.priority, wait_s)
                finally:
                    if parked:
                        assert parking is not None
                        await parking.unpark()
        finally:
            if baton is not None:  # not taken (deadline, spill, cancelled): the next looks
                self._release(baton)

    def _spill_if_hopeless(
        self,
        job: Admitted,
        routes: list[Route],
        tried: frozenset[str],
        down: frozenset[str],
        now: int,
        spill: Callable[[str], Spill | None],
    ) -> None:
        """Raise the ``Spill`` that ``spill`` offers when no local target can serve in time."""
        targets = list(dict.fromkeys(t.backend for r in routes for t in r.targets))
        why = local_outlook(
            targets=targets,
            down=down,
            tried=tried,
            clear_ms=self.clear_ms(job.route_name, targets, now),
            remaining_ms=job.deadline_ms - now,
        )
        if why is not None:
            to = spill(why)
            if to is not None:
                raise to

    def _too_slow(self, routes: list[Route], remaining_ms: int) -> frozenset[str]:
        """Targets whose recent p50 is longer than the time left: a call could not finish."""
        slow = set()
        for route in routes:
            for t in route.targets:
                p50 = self.health.percentile(t.backend, 50)
                if p50 is not None and p50 > remaining_ms:
                    slow.add(t.backend)
        return frozenset(slow)

    def _could_serve(
        self,
        routes: list[Route],
        wanted: RouteRequest,
        tried: frozenset[str],
        excluded: frozenset[str],
    ) -> bool:
        """Whether some route could take the request now, were time not short."""
        snapshot = Snapshot(
            self.backends,
            self._in_flight,
            excluded=excluded,
            turn=self._turn,
            latency_ms=self._latency_ms,
        )
        return any(
            decide(route, snapshot, wanted, tried=tried, rng=random.Random(0)) is not None
            for route in routes
        )

    def _cannot_finish(
        self, job: Admitted, too_slow: frozenset[str], remaining_ms: float
    ) -> DeadlineExceeded:
        p50s = ", ".join(
            f"{b} p50 {self.health.percentile(b, 50):.0f} ms" for b in sorted(too_slow)
        )
        return DeadlineExceeded(
            f"not sent: {max(remaining_ms, 0)} ms of the deadline remain, less than the "
            f"recent median latency of the backends that could serve it ({p50s}); "
            "send it again with a longer timeout_ms",
            retry_after_ms=self.advice_ms(job),
        )

    def retry_hint_ms(self, health_bound: bool) -> int:
        """When a down backend can be back: probation's wait plus its probes."""
        if not health_bound:
            return 1000
        probes = self._settings.probation_probes + 2
        return int(self._settings.probe_interval_s * 1000 * probes)

    def drain_per_s(self, backend_ids: list[str], now_ms: int) -> float:
        """Completions a second of these backends, measured over ``DRAIN_WINDOW_MS``."""
        total = 0.0
        for b in dict.fromkeys(backend_ids):
            done = self._completions.get(b)
            if not done:
                continue
            while done and done[0] <= now_ms - DRAIN_WINDOW_MS:
                done.popleft()
            if done:
                span = max(1000, now_ms - done[0])
                total += len(done) * 1000 / span
        return total

    def clear_ms(self, route_name: str, backend_ids: list[str], now_ms: int) -> float | None:
        """When the route's calls in flight and servable waiting requests will be done.

        Memoised for 100 ms: a burst of expiring requests asks many times at once.
        """
        cached = self._clear_cache.get(route_name)
        if cached is not None and now_ms - cached[0] < 100:
            return cached[1]
        # In the order they will be served: priority, then arrival.
        waiting = sorted(
            (-prio, i, deadline)
            for i, (route, prio, deadline) in enumerate(self._pending.values())
            if route == route_name
        )
        clear = backlog_clear_ms(
            in_flight=sum(self._in_flight.get(b, 0) for b in dict.fromkeys(backend_ids)),
            waiting_remaining_ms=[deadline - now_ms for _, _, deadline in waiting],
            drain_per_s=self.drain_per_s(backend_ids, now_ms),
        )
        self._clear_cache[route_name] = (now_ms, clear)
        return clear

    def advice_ms(
        self, job: Admitted, *, health_bound: bool = False, backend_says_ms: int | None = None
    ) -> int:
        """An honest ``retry_after_ms`` for this request's failure (``turnout.core.retry``)."""
        now = _now_ms()
        targets = [t.backend for t in job.route.targets]
        return retry_after_ms(
            backend_says_ms=backend_says_ms,
            clear_ms=self.clear_ms(job.route_name, targets, now),
            recovery_ms=self.retry_hint_ms(True) if health_bound else None,
        )

    def observe(
        self,
        backend_id: str,
        error: BackendError | None,
        took_ms: float,
        *,
        blame: bool = True,
    ) -> None:
        """Feed a call's outcome to the backend's health (the passive signal) and latency.

        An answer of any status is progress (the backend is alive, see the hang
        detector); a timeout or a dropped connection is not. ``blame=False`` keeps a
        failure the backend did not cause (the deadline cut it short) out of its health.
        """
        now = _now_ms()
        if error is None or isinstance(error, (BackendStatusError, BackendProtocolError)):
            self.health.progressed(backend_id, now)
            done = self._completions[backend_id]
            done.append(now)
            if len(done) > 4096:
                done.popleft()
        if error is None:
            self._observe_latency(backend_id, took_ms)
        self._last_failed[backend_id] = error is not None
        if error is not None and not blame:
            return
        if isinstance(error, BackendStatusError) and error.status == 429:
            until = now + (error.retry_after_ms or 1000)
            self.health.cool_down(backend_id, until, now)
            log.info("backend_cooling_down", backend=backend_id, until_ms=until)
            return
        if isinstance(error, BackendStatusError) and not error.retryable:
            return  # the request's fault (4xx), not the backend's
        if self.health.observe(backend_id, error is None, took_ms, now):
            report_transitions(self.health, self.metrics)
            self.health_changed()

    def budget(self, job: Admitted) -> RetryBudget:
        budget = self._budgets.get(job.route_name)
        if budget is None:
            budget = self._budgets[job.route_name] = RetryBudget(ratio=job.route.retry_budget)
        return budget

    def _observe_latency(self, backend_id: str, took_ms: float, alpha: float = 0.2) -> None:
        """Keep an exponentially weighted moving average of each backend's latency."""
        prev = self._latency_ms.get(backend_id)
        if prev is not None and self._due(backend_id, _now_ms()):
            prev = None
        self._latency_ms[backend_id] = took_ms if prev is None else prev + alpha * (took_ms - prev)
        self._latency_at[backend_id] = _now_ms()

    def _stale(self, backend_id: str, now_ms: int) -> bool:
        age_ms = now_ms - self._latency_at.get(backend_id, now_ms)
        return age_ms > LATENCY_MEMORY_S * 1000 and not self._in_flight.get(backend_id, 0)

    def _due(self, backend_id: str, now_ms: int) -> bool:
        """Whether the average is old enough to be measured again: see ``LATENCY_REFRESH_S``."""
        age_ms = now_ms - self._latency_at.get(backend_id, now_ms)
        return age_ms > LATENCY_REFRESH_S * 1000 and not self._in_flight.get(backend_id, 0)

    def _latency_view(self, now_ms: int) -> dict[str, float]:
        """The latency averages routing may use now: see ``LATENCY_MEMORY_S``."""
        return {b: v for b, v in self._latency_ms.items() if not self._stale(b, now_ms)}


class Parking(Protocol):
    """How a request waiting for capacity gives back its in-flight slot (see dispatch)."""

    def park(self) -> bool: ...

    async def unpark(self) -> None: ...


def report_transitions(book: HealthBook, metrics: Metrics | None = None) -> None:
    """One log line per backend state change: the operator's record of health."""
    for t in book.drain_transitions():
        if metrics is not None:
            metrics.backend_state(t.backend, t.new)
        log.info(
            "backend_state_changed",
            backend=t.backend,
            old=t.old.name,
            new=t.new.name,
            reason=t.reason,
            signal=t.signal,
        )
