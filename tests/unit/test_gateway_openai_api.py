"""OpenAI shapes at the gateway's edge: bodies in, replies and errors out (pure)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from schemas.types import ErrorInfo, Reply
from turnout.gateway import openai_api as oai
from turnout.gateway.kafka import StatusRecord

MESSAGES = [{"role": "user", "content": "hi"}]


def test_parse_chat_moves_stream_out_of_the_body() -> None:
    """The published body keeps every field but stream; Call.stream carries it."""
    call = oai.parse(
        "chat",
        {
            "model": "m",
            "messages": MESSAGES,
            "stream": True,
            "temperature": 0.1,
            "stream_options": {"include_usage": True},
        },
    )
    assert call.stream and call.include_usage
    assert call.body == {
        "model": "m",
        "messages": MESSAGES,
        "temperature": 0.1,
        "stream_options": {"include_usage": True},
    }


def test_embeddings_never_stream() -> None:
    """stream on an embeddings body is ignored."""
    assert not oai.parse("embeddings", {"model": "m", "input": "x", "stream": True}).stream


@pytest.mark.parametrize(
    ("kind", "body", "param"),
    [
        ("chat", [], None),
        ("chat", {"messages": MESSAGES}, "model"),
        ("chat", {"model": "", "messages": MESSAGES}, "model"),
        ("chat", {"model": "m" * 257, "messages": MESSAGES}, "model"),
        ("chat", {"model": 3, "messages": MESSAGES}, "model"),
        ("chat", {"model": "m"}, "messages"),
        ("chat", {"model": "m", "messages": []}, "messages"),
        ("chat", {"model": "m", "messages": ["hi"]}, "messages"),
        ("chat", {"model": "m", "messages": MESSAGES, "stream": "yes"}, "stream"),
        ("completion", {"model": "m"}, "prompt"),
        ("completion", {"model": "m", "prompt": 3}, "prompt"),
        ("embeddings", {"model": "m", "input": None}, "input"),
    ],
)
def test_invalid_bodies_are_400_naming_the_field(kind: Any, body: Any, param: str | None) -> None:
    """Each problem is a 400 whose param names the field."""
    with pytest.raises(oai.EdgeError) as info:
        oai.parse(kind, body)
    assert info.value.status == 400
    assert info.value.param == param


@pytest.mark.parametrize(
    ("code", "retryable", "status", "retry_after"),
    [
        ("rate_limited", True, 429, 3),
        ("invalid_request", False, 400, None),
        ("invalid_reply_topic", False, 400, None),
        ("request_too_large", False, 413, None),
        ("route_not_allowed", False, 403, None),
        ("internal_error", False, 502, 3),
        ("reply_unpublishable", False, 502, 3),
        ("unknown_model", False, 404, None),
        ("deadline_exceeded", True, 504, 3),
        ("backend_unavailable", True, 502, 3),
        ("backend_timeout", True, 502, 3),
        ("backend_protocol", True, 502, 3),
        ("backend_status", True, 502, 3),
        ("backend_status", False, 400, None),
        ("no_backend_available", True, 503, 3),
        ("something_new", True, 502, 3),
    ],
)
def test_reply_errors_map_to_http_statuses(
    code: str, retryable: bool, status: int, retry_after: int | None
) -> None:
    """Each turnout error code has its HTTP status; retryable ones carry Retry-After."""
    info = ErrorInfo(code=code, message="m", retryable=retryable, retry_after_ms=2500)
    err = oai.reply_error(info)
    assert (err.status, err.retry_after_s, err.code) == (status, retry_after, code)


def test_retry_after_defaults_to_one_second_when_retryable() -> None:
    """No retry_after_ms on a retryable error: Retry-After 1."""
    err = oai.reply_error(ErrorInfo(code="backend_timeout", message="m", retryable=True))
    assert err.headers == {"Retry-After": "1"}


def test_error_body_has_openais_shape() -> None:
    """{"error": {message, type, code, param}} plus any extra fields."""
    err = oai.EdgeError(504, "late", code="gateway_timeout", extra={"id": "r1"})
    assert oai.error_body(err) == {
        "error": {
            "message": "late",
            "type": "timeout_error",
            "code": "gateway_timeout",
            "param": None,
            "id": "r1",
        }
    }
    assert oai.error_body(oai.EdgeError(401, "x"))["error"]["type"] == "authentication_error"
    assert oai.error_body(oai.EdgeError(502, "x"))["error"]["type"] == "server_error"


def events(data: bytes) -> list[Any]:
    out = []
    for block in data.split(b"\n\n"):
        if block:
            assert block.startswith(b"data: ")
            payload = block[len(b"data: ") :]
            out.append(payload.decode() if payload == b"[DONE]" else orjson.loads(payload))
    return out


def ok_reply(**body: Any) -> Reply:
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 7,
        "model": "echo",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "all of it"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
    }
    return Reply(id="r1", status="ok", body={**answer, **body})


def test_fallback_streams_a_whole_reply_as_one_chunk_then_done() -> None:
    """A worker that did not stream: one content chunk, one finish chunk, [DONE]."""
    call = oai.parse("chat", {"model": "m", "messages": MESSAGES, "stream": True})
    reply = ok_reply()
    out = events(oai.fallback(call, reply) + oai.finish(call, reply))
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": "all of it"}
    assert out[1]["choices"][0]["finish_reason"] == "stop"
    assert out[-1] == "[DONE]"
    assert all("usage" not in e for e in out[:-1])


def test_include_usage_adds_a_usage_chunk_before_done() -> None:
    """stream_options.include_usage: a last chunk with empty choices and the usage."""
    call = oai.parse(
        "chat",
        {
            "model": "m",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    out = events(oai.finish(call, ok_reply()))
    assert out[0]["choices"] == [] and out[0]["usage"]["total_tokens"] == 4
    assert out[1] == "[DONE]"


def test_stream_error_is_an_error_event() -> None:
    """The explicit error event that ends a broken stream."""
    err = oai.reply_error(ErrorInfo(code="backend_timeout", message="slow", retryable=True))
    assert events(oai.stream_error(err)) == [oai.error_body(err)]


def test_parse_async_validates_the_envelope() -> None:
    """kind, body, timeout_ms, priority and metadata are checked; the rest becomes a Call."""
    call, extra = oai.parse_async(
        {
            "kind": "chat",
            "model": "m",
            "body": {"messages": MESSAGES, "stream": True},
            "timeout_ms": 5000,
            "priority": 9,
            "metadata": {"team": "a"},
        }
    )
    assert not call.stream and call.model == "m"
    assert extra == {"timeout_ms": 5000, "priority": 9, "metadata": {"team": "a"}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"kind": "image", "model": "m", "body": {}}, "kind"),
        ({"kind": "chat", "model": "m", "body": "hi"}, "body"),
        (
            {"kind": "chat", "model": "m", "body": {"messages": MESSAGES}, "timeout_ms": 0},
            "timeout_ms",
        ),
        (
            {"kind": "chat", "model": "m", "body": {"messages": MESSAGES}, "priority": 10},
            "priority",
        ),
        (
            {"kind": "chat", "model": "m", "body": {"messages": MESSAGES}, "priority": True},
            "priority",
        ),
        (
            {"kind": "chat", "model": "m", "body": {"messages": MESSAGES}, "metadata": {"a": 1}},
            "metadata",
        ),
        (
            {"kind": "chat", "model": "m", "body": {"messages": MESSAGES}, "webhook_url": 5},
            "webhook_url",
        ),
        ({"kind": "chat", "body": {"messages": MESSAGES}}, "model"),
    ],
)
def test_parse_async_refuses_bad_envelopes(body: dict[str, Any], param: str) -> None:
    """Each bad field is a 400 naming it."""
    with pytest.raises(oai.EdgeError) as info:
        oai.parse_async(body)
    assert (info.value.status, info.value.param) == (400, param)


def test_status_view_of_a_done_request_has_the_result() -> None:
    """done: the OpenAI body as result, and where it was served."""
    reply = orjson.loads(ok_reply(backend="b").to_wire())
    reply.update(backend="b1", route="default", attempts=1)
    rec = StatusRecord(
        status="done",
        client_id="c",
        kind="chat",
        model="m",
        created_ms=1,
        updated_ms=2,
        reply=reply,
    )
    view = oai.status_view("r1", rec)
    assert view["result"]["choices"][0]["message"]["content"] == "all of it"
    assert (view["backend"], view["route"], view["attempts"]) == ("b1", "default", 1)
    assert "error" not in view


def test_status_view_of_a_failed_request_has_the_error() -> None:
    """failed: the worker's error, no result."""
    reply = Reply(
        id="r1",
        status="error",
        error=ErrorInfo(code="unknown_model", message="no", retryable=False),
    )
    rec = StatusRecord(
        status="failed", client_id="c", updated_ms=2, reply=orjson.loads(reply.to_wire())
    )
    view = oai.status_view("r1", rec)
    assert view["error"]["code"] == "unknown_model" and "result" not in view


def test_status_view_of_a_queued_request_has_neither() -> None:
    """queued: only the id, status and times."""
    rec = StatusRecord(
        status="queued",
        client_id="c",
        kind="chat",
        model="m",
        created_ms=1,
        updated_ms=1,
        webhook_url="http://x/",
        webhook=None,
    )
    assert oai.status_view("r1", rec) == {
        "id": "r1",
        "status": "queued",
        "kind": "chat",
        "model": "m",
        "created_ms": 1,
        "updated_ms": 1,
    }
