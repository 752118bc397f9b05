"""The gateway's Prometheus metrics, in a registry of their own, served at ``GET /metrics``.

Series (latencies in seconds):

- ``turnout_gateway_requests_total{endpoint,status}``: HTTP calls answered, by the
  route's template (``/v1/requests/{id}``, never the raw path: bounded labels) and
  HTTP status; unknown paths count as ``other``
- ``turnout_gateway_request_seconds{endpoint}``: time to the last byte (a stream's
  whole length)
- ``turnout_gateway_in_flight``: HTTP calls being served now
- ``turnout_gateway_status_store_entries``: request statuses held in memory
- ``turnout_gateway_webhooks_total{outcome}``: ``delivered`` / ``failed`` deliveries
- ``turnout_gateway_tokens_total{type}``: ``prompt`` / ``completion`` / ``cached``
  (prompt tokens a backend served from its prompt cache), from the replies' usage

Every call is synchronous and never raises: metrics must not fail a request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PCounter
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from turnout.worker.metrics import LATENCY_BUCKETS_S

OTHER = "other"


def cached_tokens(usage: Any) -> int:
    """Prompt tokens served from a prompt cache, in OpenAI's or Anthropic's usage shape.

    >>> cached_tokens({"prompt_tokens_details": {"cached_tokens": 7}})
    7
    >>> cached_tokens({"cache_read_input_tokens": 5}), cached_tokens(None)
    (5, 0)
    """
    if not isinstance(usage, Mapping):
        return 0
    details = usage.get("prompt_tokens_details")
    value = details.get("cached_tokens") if isinstance(details, Mapping) else None
    if value is None:
        value = usage.get("cache_read_input_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class GatewayMetrics:
    def __init__(self, store_size: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = PCounter(
            "turnout_gateway_requests", "HTTP calls answered", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "turnout_gateway_request_seconds",
            "HTTP call duration to the last byte",
            ["endpoint"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.in_flight = Gauge("turnout_gateway_in_flight", "HTTP calls in progress", registry=r)
        store = Gauge(
            "turnout_gateway_status_store_entries", "Request statuses held in memory", registry=r
        )
        store.set_function(lambda: float(store_size()))
        self.webhooks = PCounter(
            "turnout_gateway_webhooks", "Webhook deliveries by outcome", ["outcome"], registry=r
        )
        self.tokens = PCounter(
            "turnout_gateway_tokens", "Tokens in replies by type", ["type"], registry=r
        )
        for outcome in ("delivered", "failed"):
            self.webhooks.labels(outcome)
        for kind in ("prompt", "completion", "cached"):
            self.tokens.labels(kind)

    def __repr__(self) -> str:
        return f"<GatewayMetrics in_flight={self.in_flight._value.get():g}>"

    def answered(self, endpoint: str | None, status: int, seconds: float) -> None:
        name = endpoint or OTHER
        self.requests.labels(name, str(status)).inc()
        self.latency.labels(name).observe(max(0.0, seconds))

    def webhook(self, delivered: bool) -> None:
        self.webhooks.labels("delivered" if delivered else "failed").inc()

    def usage(self, usage: Any) -> None:
        """Count the tokens of one reply's usage (OpenAI shape), cached ones included."""
        if not isinstance(usage, Mapping):
            return
        for kind, field in (("prompt", "prompt_tokens"), ("completion", "completion_tokens")):
            value = usage.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                self.tokens.labels(kind).inc(value)
        cached = cached_tokens(usage)
        if cached:
            self.tokens.labels("cached").inc(cached)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
