"""A worker's Prometheus metrics, in a registry of their own, and a short history for its page.

The dispatcher and runtime report what happened through a handful of calls
(``request_completed``, ``dead_lettered``, ``skipped``, ``rate_limited``,
``in_flight``, ``backend_state``, ``consumer_lag``); ``render`` produces the
``/metrics`` exposition and ``snapshot`` the numbers behind ``/status.json``.

Every call is synchronous, cheap and never raises on odd input (a missing
backend, an unknown usage shape): metrics must not be a way for a request to fail.

Exposed series (latencies in seconds, the Prometheus convention; the API takes ms):

- ``turnout_requests_total{route,backend,status,code}``: final replies published
- ``turnout_queue_seconds{route}``, ``turnout_total_seconds{route}``,
  ``turnout_backend_seconds{backend}``: the reply's ``timings``
- ``turnout_in_flight``: backend calls in flight in this worker
- ``turnout_tokens_total{backend,type}``: ``prompt`` / ``completion`` from the body's
  ``usage``, and ``cached``: prompt tokens the backend served from its prompt cache
- ``turnout_cost_total{backend}``: estimated from the config's ``cost`` prices
- ``turnout_rate_limited_total{limit}``: requests refused by a client limit
- ``turnout_dead_letters_total{code}``, ``turnout_skipped_total`` (already answered ok)
- ``turnout_consumer_lag{topic,partition}``: records not yet committed by the group
- ``turnout_backend_state{backend,state}``: 1 for the backend's current state, else 0
- ``turnout_commit_stalled_seconds{topic,partition,offset,cause}``: how long a partition's
  commit point has been stuck at ``offset`` while records behind it are done (only while
  stalled); ``turnout_commit_stalls_total{cause}`` counts the stalls
- ``turnout_redispatched_total{backend}``: calls abandoned on a backend judged unhealthy
  (hung) and retried elsewhere
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PCounter
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0
)  # fmt: skip
STATES = ("healthy", "degraded", "unhealthy", "probation")
_TOTALS = ("ok", "error", "skipped", "dead_lettered", "rate_limited")
NONE = "none"
"""Label value when a request never reached a backend or a route."""


@dataclasses.dataclass(frozen=True, slots=True)
class Price:
    """Currency units per million tokens, as in the config's ``cost`` block."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        prompt = prompt_tokens * self.input_per_mtok
        return (prompt + completion_tokens * self.output_per_mtok) / 1e6


def cached_tokens(usage: Any) -> int:
    """Prompt tokens served from a prompt cache (``prompt_tokens_details.cached_tokens``).

    >>> cached_tokens({"prompt_tokens_details": {"cached_tokens": 7}}), cached_tokens(None)
    (7, 0)
    """
    details = usage.get("prompt_tokens_details") if isinstance(usage, Mapping) else None
    value = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def tokens_of(usage: Mapping[str, Any] | None) -> tuple[int, int]:
    """(prompt, completion) tokens of an OpenAI ``usage`` object; (0, 0) if absent or odd."""
    if not isinstance(usage, Mapping):
        return 0, 0

    def count(name: str) -> int:
        value = usage.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    return count("prompt_tokens"), count("completion_tokens")


class History:
    """Counts per time bucket over the last ``buckets * bucket_s`` seconds; a ring buffer."""

    def __init__(self, *, bucket_s: int = 10, buckets: int = 60) -> None:
        self.bucket_s = bucket_s
        self._ring: deque[tuple[int, Counter[str]]] = deque(maxlen=buckets)

    def add(self, now_s: float, **counts: int) -> None:
        start = int(now_s // self.bucket_s) * self.bucket_s
        if not self._ring or self._ring[-1][0] != start:
            self._ring.append((start, Counter()))
        self._ring[-1][1].update(counts)

    def series(self, now_s: float, names: Iterable[str]) -> dict[str, Any]:
        """Every bucket of the window, oldest first, empty ones as zeros."""
        n = self._ring.maxlen or 0
        last = int(now_s // self.bucket_s) * self.bucket_s
        starts = [last - (n - 1 - i) * self.bucket_s for i in range(n)]
        by_start = dict(self._ring)
        out: dict[str, Any] = {"bucket_s": self.bucket_s, "start_s": starts}
        for name in names:
            out[name] = [by_start[s][name] if s in by_start else 0 for s in starts]
        return out

    def total(self, now_s: float, name: str, seconds: float) -> int:
        since = now_s - seconds
        return sum(c[name] for start, c in self._ring if start + self.bucket_s > since)

    def __repr__(self) -> str:
        return f"<History bucket_s={self.bucket_s} buckets={len(self._ring)}/{self._ring.maxlen}>"


@dataclasses.dataclass(slots=True)
class _BackendView:
    state: str = "unknown"
    latency_ms: float | None = None
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    cost: float = 0.0


class Metrics:
    """One worker's metrics; construct with ``Metrics.from_config(config, request_topic)``."""

    def __init__(
        self,
        *,
        backends: Iterable[str] = (),
        prices: Mapping[str, Price] | None = None,
        request_topic: str = "turnout.requests",
        clock: Callable[[], float] = time.time,
        history: History | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._prices = dict(prices or {})
        self._topic = request_topic
        self._clock = clock
        self.history = history or History()
        self._backends: dict[str, _BackendView] = {b: _BackendView() for b in backends}
        self._lag: dict[int, int] = {}
        self._in_flight: Callable[[], int] = lambda: 0
        self._totals: Counter[str] = Counter()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = PCounter(
            "turnout_requests", "Final replies published.",
            ["route", "backend", "status", "code"], registry=r,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "turnout_queue_seconds", "From the request record to the first backend call.",
            ["route"], buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.backend_seconds = Histogram(
            "turnout_backend_seconds", "Time in backend calls, all attempts of a request.",
            ["backend"], buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.total_seconds = Histogram(
            "turnout_total_seconds", "From the request record to its reply on the broker.",
            ["route"], buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.loop_lag_gauge = Gauge(
            "turnout_event_loop_lag_seconds",
            "How late the worker's event loop runs a timer (its own queue), smoothed.",
            registry=r,
        )
        self.in_flight_gauge = Gauge(
            "turnout_in_flight", "Backend calls in flight in this worker.", registry=r
        )
        self.tokens = PCounter(
            "turnout_tokens", "Tokens reported by backends (usage).", ["backend", "type"],
            registry=r,
        )  # fmt: skip
        self.cost = PCounter(
            "turnout_cost", "Estimated cost in currency units, from the config's prices.",
            ["backend"], registry=r,
        )  # fmt: skip
        self.rate_limited_total = PCounter(
            "turnout_rate_limited", "Requests refused by a client rate limit.", ["limit"],
            registry=r,
        )  # fmt: skip
        self.dead_letters = PCounter(
            "turnout_dead_letters", "Records sent to the dead-letter topic.", ["code"], registry=r
        )
        self.skipped_total = PCounter(
            "turnout_skipped", "Requests not served because they were answered ok before.",
            registry=r,
        )  # fmt: skip
        self.redispatched_total = PCounter(
            "turnout_redispatched", "Calls abandoned on an unhealthy backend and retried.",
            ["backend"], registry=r,
        )  # fmt: skip
        self.lag = Gauge(
            "turnout_consumer_lag", "Request records the worker group has not committed yet.",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.stalled_seconds = Gauge(
            "turnout_commit_stalled_seconds",
            "How long a partition's commit point has not moved while records behind it are done.",
            ["topic", "partition", "offset", "cause"], registry=r,
        )  # fmt: skip
        self.stalls = PCounter(
            "turnout_commit_stalls", "Commit points found stalled.", ["cause"], registry=r
        )
        self._stalled: dict[int, tuple[str, ...]] = {}
        self.state = Gauge(
            "turnout_backend_state", "1 for the backend's current health state.",
            ["backend", "state"], registry=r,
        )  # fmt: skip

    @classmethod
    def from_config(cls, config: Any, request_topic: str, **kwargs: Any) -> Metrics:
        """Backends and their prices from a ``turnout.config.Config``."""
        prices = {
            b.id: Price(b.cost.input_per_mtok, b.cost.output_per_mtok) for b in config.backends
        }
        return cls(
            backends=[b.id for b in config.backends],
            prices=prices,
            request_topic=request_topic,
            **kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"<Metrics ok={self._totals['ok']} error={self._totals['error']} "
            f"skipped={self._totals['skipped']} in_flight={self._in_flight()}>"
        )

    # -- what the dispatcher and runtime report ---------------------------------------

    def request_completed(
        self,
        route: str | None,
        backend: str | None,
        status: str,
        code: str | None,
        queue_ms: float,
        backend_ms: float,
        total_ms: float,
        usage: Mapping[str, Any] | None = None,
    ) -> None:
        """A final reply is on the broker. ``usage`` is the reply body's ``usage`` object."""
        route_l = route or NONE
        backend_l = backend or NONE
        self._child(self.requests, route_l, backend_l, status, code or "").inc()
        self._child(self.queue_seconds, route_l).observe(max(queue_ms, 0.0) / 1000)
        self._child(self.total_seconds, route_l).observe(max(total_ms, 0.0) / 1000)
        ok = status == "ok"
        key = "ok" if ok else "error"
        self._totals[key] += 1
        counts = {key: 1}
        if backend is not None:
            self._child(self.backend_seconds, backend_l).observe(max(backend_ms, 0.0) / 1000)
            view = self._backends.setdefault(backend, _BackendView())
            view.requests += 1
            view.errors += 0 if ok else 1
            if backend_ms > 0:
                prev = view.latency_ms
                view.latency_ms = backend_ms if prev is None else prev + 0.2 * (backend_ms - prev)
            counts[f"{key}:{backend}"] = 1
            prompt, completion = tokens_of(usage)
            view.tokens += prompt + completion
            if prompt:
                self._child(self.tokens, backend_l, "prompt").inc(prompt)
            if completion:
                self._child(self.tokens, backend_l, "completion").inc(completion)
            cached = cached_tokens(usage)
            if cached:
                self._child(self.tokens, backend_l, "cached").inc(cached)
            price = self._prices.get(backend)
            if price is not None and (prompt or completion):
                cost = price.cost(prompt, completion)
                view.cost += cost
                self._child(self.cost, backend_l).inc(cost)
        self.history.add(self._clock(), **counts)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: prometheus_client validates on every call."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def dead_lettered(self, code: str) -> None:
        self.dead_letters.labels(code).inc()
        self._totals["dead_lettered"] += 1
        self.history.add(self._clock(), dead_lettered=1)

    def skipped(self) -> None:
        """A request answered ok before came again (a replay or a repeat) and was not served."""
        self.skipped_total.inc()
        self._totals["skipped"] += 1
        self.history.add(self._clock(), skipped=1)

    def redispatched(self, backend: str) -> None:
        """A call stuck on a backend judged unhealthy was abandoned; its request retried."""
        self.redispatched_total.labels(backend).inc()

    def rate_limited(self, limit: str = "requests_per_s") -> None:
        self.rate_limited_total.labels(limit).inc()
        self._totals["rate_limited"] += 1
        self.history.add(self._clock(), rate_limited=1)

    def count_in_flight(self, count: Callable[[], int]) -> None:
        """Read the in-flight count from ``count`` when asked (a scrape), not per request."""
        self._in_flight = count
        self.in_flight_gauge.set_function(count)

    def loop_lag(self, ms: float) -> None:
        self.loop_lag_gauge.set(ms / 1000)

    def backend_state(self, backend: str, state: Any) -> None:
        """The backend's health state: a ``turnout.health.State`` or its value (``"healthy"``)."""
        name = str(getattr(state, "value", state)).lower()
        self._backends.setdefault(backend, _BackendView()).state = name
        for s in {*STATES, name}:
            self.state.labels(backend, s).set(1 if s == name else 0)

    def consumer_lag(self, lags: Mapping[int, int]) -> None:
        """Per-partition lag of the request topic (see ``turnout.ops.status.LagSampler``)."""
        for partition in set(self._lag) - set(lags):
            self.lag.remove(self._topic, str(partition))
        self._lag = dict(lags)
        for partition, lag in lags.items():
            self.lag.labels(self._topic, str(partition)).set(lag)

    def commit_stalled(self, partition: int, offset: int, cause: str, seconds: float) -> None:
        """A partition's commit point is stuck at ``offset``; called again as it lasts."""
        labels = (self._topic, str(partition), str(offset), cause)
        if self._stalled.get(partition) != labels:
            self.commit_resumed(partition)
            self._stalled[partition] = labels
            self.stalls.labels(cause).inc()
        self.stalled_seconds.labels(*labels).set(seconds)

    def commit_resumed(self, partition: int) -> None:
        """The partition's commit point moved again (or the partition left this worker)."""
        labels = self._stalled.pop(partition, None)
        if labels is not None:
            self.stalled_seconds.remove(*labels)

    # -- what the web app serves ------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The ``/metrics`` body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def snapshot(self) -> dict[str, Any]:
        """The numbers behind ``/status.json``; plain JSON types only."""
        now = self._clock()
        backends = {}
        for bid, v in self._backends.items():
            ok = self.history.total(now, f"ok:{bid}", 60)
            err = self.history.total(now, f"error:{bid}", 60)
            backends[bid] = {
                "state": v.state,
                "latency_ms": None if v.latency_ms is None else round(v.latency_ms, 1),
                "requests": v.requests,
                "errors": v.errors,
                "tokens": v.tokens,
                "cost": round(v.cost, 6),
                "last_minute": {"ok": ok, "error": err},
            }
        return {
            "now_ms": int(now * 1000),
            "request_topic": self._topic,
            "in_flight": self._in_flight(),
            "totals": {k: self._totals[k] for k in _TOTALS},
            "lag": {str(p): n for p, n in sorted(self._lag.items())},
            "lag_total": sum(self._lag.values()),
            "backends": backends,
            "history": self.history.series(now, _TOTALS),
        }
