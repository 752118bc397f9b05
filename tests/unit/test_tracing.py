"""Tracing with an in-memory exporter: one request is one connected trace, from the
gateway's accept (continuing the caller's traceparent) through the Kafka headers to the
worker's spans and the backend call, with GenAI attributes."""

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.unit.test_dispatch import TP0, drain, make
from tests.unit.test_gateway_http import CHAT, Running, gw, receiver, receiver_prefix  # noqa: F401
from turnout import tracing
from turnout.core.admission import Record
from turnout.settings import Settings
from turnout.testing.fake import ScriptedBackendClient

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    before = tracing._tracer
    tracing._tracer = provider.get_tracer("turnout")  # not global: tests stay independent
    yield exporter
    tracing._tracer = before


async def test_one_request_is_one_connected_trace(spans, gw: Running):  # noqa: F811
    """Caller -> gateway accept -> (Kafka headers) -> worker request -> queue wait, route,
    backend attempt, reply publish: one trace id, each span's parent inside it."""
    r = await gw.post("/v1/chat/completions", CHAT, headers={
        "Authorization": "Bearer key-a", "traceparent": TRACEPARENT})  # fmt: skip
    assert r.status == 200
    ((_, _, published),) = [p for p in gw.kafka.published if p[0].endswith("requests")]
    headers = gw.kafka.headers_sent[-1]
    trace_headers = tracing.from_kafka(headers)
    assert trace_headers["traceparent"].split("-")[1] == CALLER_TRACE

    client = tracing.TracedClient(ScriptedBackendClient())
    d, pub = make(client)
    rec = Record(topic="turnout.requests", partition=0, offset=0,
                 timestamp_ms=published_ms(), key=published.client_id.encode(),
                 value=published.to_wire(), trace_headers=tuple(trace_headers.items()))  # fmt: skip
    await d.submit(TP0, rec, lambda: None)
    await drain(d)
    assert pub.replies[0][1].status == "ok"

    got = {s.name: s for s in spans.get_finished_spans()}
    assert {s.context.trace_id for s in got.values()} == {int(CALLER_TRACE, 16)}
    accept, request = got["turnout.gateway.accept"], got["turnout.request"]
    assert accept.parent.span_id == int("00f067aa0ba902b7", 16)
    assert request.parent.span_id == accept.context.span_id
    for child in ("turnout.queue_wait", "turnout.route", "chat echo", "turnout.reply_publish"):
        assert got[child].parent.span_id == request.context.span_id, child
    assert got["turnout.route"].attributes["turnout.backend"] == "a"
    assert "first" in got["turnout.route"].attributes["turnout.reason"]
    assert got["turnout.queue_wait"].end_time - got["turnout.queue_wait"].start_time >= 5_000_000
    attempt = got["chat echo"]
    assert attempt.attributes["gen_ai.operation.name"] == "chat"
    assert attempt.attributes["gen_ai.system"] == "openai"
    assert attempt.attributes["gen_ai.request.model"] == "echo"
    assert attempt.attributes["gen_ai.usage.input_tokens"] > 0
    assert attempt.attributes["gen_ai.usage.output_tokens"] > 0
    assert attempt.attributes["turnout.backend"] == "a"


def published_ms():
    import time

    return int(time.time() * 1000) - 5


def test_without_an_sdk_an_incoming_traceparent_still_passes_through():
    """With export off (the API's no-op tracer), the caller's context is carried unchanged."""
    from opentelemetry import trace

    noop = trace.NoOpTracerProvider().get_tracer("t")
    before = tracing._tracer
    tracing._tracer = noop
    try:
        with tracing.accept_span({"traceparent": TRACEPARENT}, None):
            carried = tracing.from_kafka(tracing.kafka_headers())
    finally:
        tracing._tracer = before
    assert carried["traceparent"] == TRACEPARENT


def test_backend_calls_carry_the_trace_in_http_headers(spans):
    """inject adds the current span's traceparent to a backend call's headers."""
    with tracing.span("x") as s:
        headers: dict[str, str] = {}
        tracing.inject(headers)
    assert headers["traceparent"].split("-")[2] == format(s.get_span_context().span_id, "016x")


def test_configure_is_off_by_default():
    """No TURNOUT_OTLP_ENDPOINT: no exporter is set up."""
    assert tracing.configure("t", "") is False
    assert Settings.from_env({}).otlp_endpoint == ""


def test_export_without_the_exporter_installed_names_the_extra(monkeypatch):
    """An endpoint set without the otel extra is a clear start-up error, not a crash."""
    import sys

    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ValueError, match=r"turnout\[otel\]"):
        tracing.configure("t", "http://127.0.0.1:4318/v1/traces")


@pytest.fixture
def no_sdk():
    from opentelemetry import trace

    before = tracing._tracer
    tracing._tracer = trace.NoOpTracerProvider().get_tracer("t")
    yield
    tracing._tracer = before


def test_with_no_sdk_spans_are_not_made_but_the_callers_trace_is_carried(no_sdk):
    """No SDK: a child span is its parent (nothing recorded, nothing new to carry), and a
    request with no trace headers gets none; one with a traceparent still passes it on."""
    from opentelemetry import trace

    assert tracing.silent()
    with tracing.request_span({}, None, enqueued_ms=0, picked_ms=0) as s:
        assert s is trace.INVALID_SPAN
        with tracing.span("turnout.route") as child:
            assert child is trace.get_current_span()
        assert tracing.kafka_headers() == []
    with tracing.request_span({"traceparent": TRACEPARENT}, None, enqueued_ms=0, picked_ms=0):
        with tracing.span("turnout.reply_publish"):
            carried = tracing.from_kafka(tracing.kafka_headers())
            headers: dict[str, str] = {}
            tracing.inject(headers)
    assert carried["traceparent"] == TRACEPARENT
    assert headers["traceparent"] == TRACEPARENT


def test_an_sdk_provider_set_globally_turns_spans_on():
    """Whoever sets a real provider (configure, or an operator's own set-up) gets spans.
    A fresh interpreter: the global provider can be set only once per process."""
    import subprocess
    import sys

    code = (
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from turnout import tracing\n"
        "assert tracing.silent()\n"
        "trace.set_tracer_provider(TracerProvider())\n"
        "assert not tracing.silent()\n"
        "with tracing.span('x') as s:\n"
        "    assert s.is_recording()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_with_an_sdk_every_span_is_recorded(spans):
    assert not tracing.silent()
    with tracing.request_span({}, None, enqueued_ms=0, picked_ms=0):
        with tracing.span("turnout.route"):
            pass
    assert {s.name for s in spans.get_finished_spans()} == {
        "turnout.queue_wait", "turnout.route", "turnout.request"}  # fmt: skip
