"""OpenTelemetry tracing: one trace per request, from the gateway through Kafka to the backend.

The W3C ``traceparent`` (and ``tracestate``) of an HTTP call, or a Kafka header
any producer set, travels as Kafka headers of the request record; the worker
continues that trace and sends it on to the backend in its HTTP headers. Spans:

    turnout.gateway.accept        the gateway publishing the request (SERVER)
    turnout.request               the worker serving it (CONSUMER), with children
      turnout.queue_wait            from the record's timestamp to pick-up
      turnout.rate_limit_wait       a client-limit reservation being waited out
      turnout.route                 the routing decision, capacity waits included
      chat <model> / ...            each backend attempt (CLIENT), GenAI attributes
      turnout.reply_publish         the final reply going to the broker

Attributes follow the GenAI semantic conventions (``gen_ai.operation.name``,
``gen_ai.system``, ``gen_ai.request.model``, ``gen_ai.response.model``,
``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``, and
``gen_ai.usage.cached_input_tokens``) plus ``turnout.*`` ids. Prompts and
answers are never attributes.

Export is off by default: only the OpenTelemetry API is used, and an incoming
``traceparent`` is still carried through unchanged. With no SDK behind the tracer,
a span would record nothing and carry only its parent's context, so none is made
(``silent``): the request path then spends nothing on spans, which was some 13%
of turnout's own CPU per request (docs/ceiling.md).
``TURNOUT_OTLP_ENDPOINT`` (e.g. ``http://127.0.0.1:4318/v1/traces``) turns on
the SDK with an OTLP/HTTP exporter (``pip install turnout[otel]``); tests
install an in-memory exporter with ``install``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

HEADERS = ("traceparent", "tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("turnout")


def tracer() -> trace.Tracer:
    return _tracer


def install(provider: Any) -> None:
    """Use ``provider`` (an SDK TracerProvider) from now on; for start-up and tests."""
    global _tracer
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("turnout")


def configure(service_name: str, endpoint: str) -> bool:
    """Turn on OTLP export to ``endpoint`` (``TURNOUT_OTLP_ENDPOINT``); "" leaves it off."""
    if not endpoint:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ValueError(
            "TURNOUT_OTLP_ENDPOINT is set but the OTLP exporter is not installed: "
            "pip install 'turnout[otel]' (or unset it to turn export off)"
        ) from None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    install(provider)
    return True


def silent() -> bool:
    """No SDK behind turnout's tracer: every span would be a no-op carrying its parent.

    True for the API's default (a proxy while no provider is set, or the no-op
    tracer); False once ``install``/``configure`` or anyone else sets a provider.
    It reads the API's global directly: ``trace.get_tracer_provider()`` looks up an
    environment variable on every call, which cost more than the spans it spares
    (``test_an_sdk_provider_set_globally_turns_spans_on`` pins this down).
    """
    if isinstance(_tracer, trace.ProxyTracer):
        return getattr(trace, "_TRACER_PROVIDER", None) is None
    return isinstance(_tracer, trace.NoOpTracer)


if os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"):
    trace.get_tracer_provider()  # a provider named in the environment is loaded on first ask


# -- carrying the context ----------------------------------------------------------------------


def extract(carrier: Mapping[str, str]) -> otel_context.Context:
    """The context an HTTP call's or a record's trace headers name (empty if none)."""
    found = {k: carrier[k] for k in HEADERS if carrier.get(k)}
    return _PROPAGATOR.extract(found)


def from_kafka(headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None) -> dict[str, str]:
    """The trace headers of a Kafka record, decoded."""
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    return {k: v.decode("ascii", "replace") for k, v in pairs if k in HEADERS and v}


def kafka_headers() -> list[tuple[str, bytes]]:
    """The current span's context as Kafka record headers."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's context to outgoing HTTP headers (a backend call)."""
    _PROPAGATOR.inject(headers)


# -- spans -------------------------------------------------------------------------------------


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[trace.Span]:
    if silent():  # a no-op child would carry exactly its parent's context
        yield trace.get_current_span()
        return
    with _tracer.start_as_current_span(name, attributes=_clean(attributes)) as s:
        yield s


@contextlib.contextmanager
def accept_span(http_headers: Mapping[str, str], request: Any) -> Iterator[trace.Span]:
    """The gateway's accept, continuing the caller's trace if it sent one."""
    if silent() and not any(http_headers.get(k) for k in HEADERS):
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        "turnout.gateway.accept",
        context=extract(http_headers),
        kind=SpanKind.SERVER,
        attributes=_request_attributes(request),
    ) as s:
        yield s


@contextlib.contextmanager
def request_span(trace_headers: Mapping[str, str], request: Any, *, enqueued_ms: int,
                 picked_ms: int) -> Iterator[trace.Span]:  # fmt: skip
    """The worker's span for one request, with its time in the topic as a child span."""
    if not trace_headers and silent():  # nothing to record and no caller's trace to carry
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        "turnout.request",
        context=extract(trace_headers),
        kind=SpanKind.CONSUMER,
        attributes=_request_attributes(request),
    ) as s:
        wait = _tracer.start_span("turnout.queue_wait", start_time=enqueued_ms * 1_000_000)
        wait.end(end_time=max(enqueued_ms, picked_ms) * 1_000_000)
        yield s


def _request_attributes(request: Any) -> dict[str, Any]:
    return _clean(
        {
            "turnout.request.id": getattr(request, "id", None),
            "turnout.client.id": getattr(request, "client_id", None),
            "gen_ai.operation.name": _OPERATION.get(getattr(request, "kind", ""), None),
            "gen_ai.request.model": getattr(request, "model", None),
        }
    )


_OPERATION = {"chat": "chat", "completion": "text_completion", "embeddings": "embeddings"}


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}


def decision_attributes(decision: Any, degraded: bool) -> dict[str, Any]:
    """What the routing span records: the backend, the policy and its reason."""
    return _clean(
        {
            "turnout.backend": getattr(decision, "backend", None),
            "turnout.policy": getattr(decision, "policy", None),
            "turnout.reason": getattr(decision, "reason", None),
            "turnout.degraded": degraded,
        }
    )


def usage_attributes(body: Mapping[str, Any] | None) -> dict[str, Any]:
    """GenAI usage attributes of an OpenAI-shaped answer."""
    if not isinstance(body, Mapping):
        return {}
    usage = got if isinstance(got := body.get("usage"), Mapping) else {}
    details = usage.get("prompt_tokens_details")
    out = {
        "gen_ai.response.model": got if isinstance(got := body.get("model"), str) else None,
        "gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": usage.get("completion_tokens"),
        "gen_ai.usage.cached_input_tokens": details.get("cached_tokens")
        if isinstance(details, Mapping)
        else None,
    }
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        reason = choices[0].get("finish_reason")
        if isinstance(reason, str):
            out["gen_ai.response.finish_reasons"] = [reason]
    return _clean(out)


class TracedClient:
    """A ``BackendClient`` whose every call is one span, named as GenAI wants
    (``chat <model>``), carrying the trace to the backend in its headers."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __repr__(self) -> str:
        return f"<TracedClient {self._inner!r}>"

    def _attributes(self, backend: Any, kind: str, model: str) -> dict[str, Any]:
        return {
            "gen_ai.operation.name": _OPERATION.get(kind, kind),
            "gen_ai.system": str(backend.protocol),
            "gen_ai.request.model": model,
            "turnout.backend": backend.id,
        }

    async def call(self, backend: Any, *, kind: Any, model: str, body: Mapping[str, Any],
                   timeout_s: float, **limits: Any) -> dict[str, Any]:  # fmt: skip
        if silent():
            return await self._inner.call(  # type: ignore[no-any-return]
                backend, kind=kind, model=model, body=body, timeout_s=timeout_s, **limits
            )
        name = f"{_OPERATION.get(kind, kind)} {model}"
        attrs = self._attributes(backend, kind, model)
        with _tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attrs) as s:
            try:
                out: dict[str, Any] = await self._inner.call(
                    backend, kind=kind, model=model, body=body, timeout_s=timeout_s, **limits
                )
            except Exception as exc:
                _failed(s, exc)
                raise
            s.set_attributes(usage_attributes(out))
            return out

    async def stream(self, backend: Any, *, kind: Any, model: str, body: Mapping[str, Any],
                     timeout_s: float, **limits: Any) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
        if silent():
            async for chunk in self._inner.stream(
                backend, kind=kind, model=model, body=body, timeout_s=timeout_s, **limits
            ):
                yield chunk
            return
        name = f"{_OPERATION.get(kind, kind)} {model}"
        attrs = self._attributes(backend, kind, model)
        with _tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attrs) as s:
            usage: dict[str, Any] = {}
            try:
                async for chunk in self._inner.stream(
                    backend, kind=kind, model=model, body=body, timeout_s=timeout_s, **limits
                ):
                    if isinstance(chunk.get("usage"), dict):
                        usage = {"usage": chunk["usage"], "model": chunk.get("model")}
                    yield chunk
            except Exception as exc:
                _failed(s, exc)
                raise
            s.set_attributes(usage_attributes(usage))

    async def close(self) -> None:
        await self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _failed(s: trace.Span, exc: BaseException) -> None:
    code = getattr(exc, "code", None)
    s.set_attribute("error.type", code if isinstance(code, str) else type(exc).__name__)
    s.set_status(Status(StatusCode.ERROR, type(exc).__name__))
