"""Choosing a backend for each attempt: the stateful side of routing.

``routing.decide`` is the pure decision. The ``Chooser`` owns what it decides
from, for one worker: each backend's calls in flight and this worker's share of
its concurrency and rate caps, health (unroutable, cooling, probation), latency
averages, per-route retry budgets, and the requests waiting for a backend,
released highest priority first.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import defaultdict
from collections.abc import Collection
from typing import Protocol

import msgspec

from streams.settings import Settings
from turnout import capshare, logs
from turnout.admission import Admitted
from turnout.budget import RetryBudget
from turnout.config import Config
from turnout.errors import BackendError, BackendStatusError, DeadlineExceeded
from turnout.health.book import HealthBook
from turnout.metrics import Metrics
from turnout.ratelimit import ClientLimits, ClientState
from turnout.routing import Decision, RouteRequest, Snapshot, decide
from turnout.tokens import estimate_completion_tokens

log = logs.get("turnout.request")

LATENCY_MEMORY_S = 15.0
"""How long an idle backend's latency average keeps counting for routing.

``local_first`` passes over a local backend whose average says it would miss the
deadline, and ``latency`` prefers the fastest. Without traffic an average never
changes, so a local model that was slow once (a burst, a busy machine) would never
be tried again. An average not refreshed for this long, of a backend with no call
in flight, is forgotten: the next request measures the backend afresh.
"""


def _now_ms() -> int:
    return int(time.time() * 1000)


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
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_seq = 0
        self._rate_limits: dict[str, ClientLimits] = {}
        self._rate_state: dict[str, ClientState | None] = {}
        self._budgets: dict[str, RetryBudget] = {}
        self._apply_share(None)

    def __repr__(self) -> str:
        calls = {b: n for b, n in self._in_flight.items() if n}
        return f"<Chooser in_flight={calls} waiting={len(self._waiters)}>"

    def started(self, backend_id: str) -> None:
        """A call to ``backend_id`` begins."""
        self._in_flight[backend_id] += 1

    def at_cap(self, backend_id: str) -> bool:
        """Whether this worker has its whole share of ``backend_id``'s cap in flight."""
        backend = self.backends.get(backend_id)
        return backend is not None and self._in_flight[backend_id] >= backend.max_concurrency

    def finished(self, backend_id: str) -> None:
        """A call to ``backend_id`` ended: its capacity is free for waiting requests."""
        self._in_flight[backend_id] -= 1
        self.wake()

    def wake(self) -> None:
        """Capacity or health changed: waiting requests look again, highest priority first.

        Each waiter has its own future; resolving them in priority order makes the
        event loop run them in that order, so the first to take freed capacity is the
        most urgent request, then the oldest.
        """
        waiters, self._waiters = self._waiters, []
        for _, _, fut in sorted(waiters, key=lambda w: (w[0], w[1])):
            if not fut.done():
                fut.set_result(None)

    async def wait_for_change(self, priority: int, timeout_s: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter_seq += 1
        self._waiters.append((-priority, self._waiter_seq, fut))
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            pass

    def share_capacity(self, partitions: Collection[int], total: int) -> None:
        """Give this worker its share of every backend's concurrency and rate caps.

        Caps in the config are for the whole deployment. A worker owning
        ``partitions`` of the request topic's ``total`` may run the whole cap units
        of those partitions (``turnout.capshare``), so the workers together never
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
    ) -> tuple[Decision, bool]:
        """Decide a backend, or a fallback route's (degraded), waiting while none can serve.

        Waiting is bounded by the request's deadline; Kafka buffers whatever does not
        fit in the worker's in-flight slots meanwhile. ``parking`` lets the caller give
        up its in-flight slot while the request waits, and take one again after.
        """
        req = job.request
        fallbacks = (self._config.route(f) for f in job.route.fallbacks)
        routes = [job.route, *(r for r in fallbacks if r is not None)]
        while True:
            now = _now_ms()
            unroutable = self.health.unroutable(now)
            tokens = job.prompt_tokens + estimate_completion_tokens(req.body, kind=req.kind)
            rate_blocked, refill_s = self._rate_blocked(tokens, now)
            wanted = RouteRequest(
                kind=req.kind,
                client_id=req.client_id,
                priority=req.priority,
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
                        return decision, i > 0
            remaining_s = (job.deadline_ms - _now_ms()) / 1000
            if remaining_s <= 0:
                targets = dict.fromkeys(t.backend for r in routes for t in r.targets)
                down = [b for b in targets if b in unroutable]
                why = (
                    self.health.describe(down, now)
                    if down
                    else "all at their concurrency or rate limits"
                )
                raise DeadlineExceeded(
                    f"no backend of route {job.route_name!r} could serve before the deadline: "
                    f"{why}; retry later or with a longer timeout_ms",
                    retry_after_ms=self.retry_hint_ms(bool(down)),
                )
            # Capacity and health changes wake waiters; a refilling rate cap does not.
            parked = parking is not None and parking.park()
            try:
                await self.wait_for_change(req.priority, min(remaining_s, refill_s))
            finally:
                if parked:
                    assert parking is not None
                    await parking.unpark()

    def retry_hint_ms(self, health_bound: bool) -> int:
        """An honest guess of when a retry can succeed."""
        if not health_bound:
            return 1000
        probes = self._settings.probation_probes + 2
        return int(self._settings.probe_interval_s * 1000 * probes)

    def observe(self, backend_id: str, error: BackendError | None, took_ms: float) -> None:
        """Feed a call's outcome to the backend's health (the passive signal) and latency."""
        if error is None:
            self._observe_latency(backend_id, took_ms)
        now = _now_ms()
        if isinstance(error, BackendStatusError) and error.status == 429:
            until = now + (error.retry_after_ms or 1000)
            self.health.cool_down(backend_id, until, now)
            log.info("backend_cooling_down", backend=backend_id, until_ms=until)
            return
        if isinstance(error, BackendStatusError) and not error.retryable:
            return  # the request's fault (4xx), not the backend's
        if self.health.observe(backend_id, error is None, took_ms, now):
            report_transitions(self.health, self.metrics)
            self.wake()

    def budget(self, job: Admitted) -> RetryBudget:
        budget = self._budgets.get(job.route_name)
        if budget is None:
            budget = self._budgets[job.route_name] = RetryBudget(ratio=job.route.retry_budget)
        return budget

    def _observe_latency(self, backend_id: str, took_ms: float, alpha: float = 0.2) -> None:
        """Keep an exponentially weighted moving average of each backend's latency."""
        prev = self._latency_ms.get(backend_id)
        if prev is not None and self._stale(backend_id, _now_ms()):
            prev = None
        self._latency_ms[backend_id] = took_ms if prev is None else prev + alpha * (took_ms - prev)
        self._latency_at[backend_id] = _now_ms()

    def _stale(self, backend_id: str, now_ms: int) -> bool:
        age_ms = now_ms - self._latency_at.get(backend_id, now_ms)
        return age_ms > LATENCY_MEMORY_S * 1000 and not self._in_flight.get(backend_id, 0)

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
