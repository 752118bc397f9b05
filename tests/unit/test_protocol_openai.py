"""The OpenAI protocol adapter: building calls and parsing answers, as tables of cases."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from turnout.backends import openai
from turnout.backends.http_call import HttpCall, join_url
from turnout.errors import BackendProtocolError, BackendStatusError

CHAT_OK = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}
COMPLETION_OK = {"choices": [{"index": 0, "text": "hi"}]}
EMBEDDINGS_OK = {"object": "list", "data": [{"index": 0, "embedding": [0.1, 0.2]}]}


@pytest.mark.parametrize(
    ("kind", "body", "expected"),
    [
        (
            "chat",
            {"model": "alias", "messages": [{"role": "user", "content": "x"}]},
            HttpCall(
                "/v1/chat/completions",
                {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": False},
            ),
        ),
        (
            "chat",
            {"messages": [], "stream": True, "stream_options": {"include_usage": True}},
            HttpCall("/v1/chat/completions", {"messages": [], "stream": False, "model": "m"}),
        ),
        (
            "completion",
            {"prompt": "x", "max_tokens": 3},
            HttpCall(
                "/v1/completions", {"prompt": "x", "max_tokens": 3, "model": "m", "stream": False}
            ),
        ),
        (
            "embeddings",
            {"model": "alias", "input": ["a", "b"]},
            HttpCall("/v1/embeddings", {"model": "m", "input": ["a", "b"]}),
        ),
    ],
    ids=["chat", "chat-stream-forced-off", "completion", "embeddings-no-stream-field"],
)
def test_build(kind: Any, body: dict[str, Any], expected: HttpCall) -> None:
    """The body passes through with the model replaced and streaming forced off."""
    assert openai.build(kind, "m", body) == expected


def test_build_leaves_the_callers_body_alone() -> None:
    """Building a call does not mutate the body it was given."""
    body = {"model": "alias", "messages": [], "stream": True}
    openai.build("chat", "m", body)
    assert body == {"model": "alias", "messages": [], "stream": True}


@pytest.mark.parametrize(
    ("kind", "obj"),
    [("chat", CHAT_OK), ("completion", COMPLETION_OK), ("embeddings", EMBEDDINGS_OK)],
)
def test_parse_returns_the_body(kind: Any, obj: dict[str, Any]) -> None:
    """A 2xx answer of the expected shape comes back unchanged."""
    assert openai.parse(kind, "local", 200, orjson.dumps(obj), {}) == obj


def test_parse_accepts_base64_embeddings() -> None:
    """An embedding may be a base64 string, as encoding_format=base64 asks for."""
    obj = {"data": [{"index": 0, "embedding": "AAAA"}]}
    assert openai.parse("embeddings", "local", 200, orjson.dumps(obj), {}) == obj


@pytest.mark.parametrize(
    ("status", "headers", "retryable", "retry_after_ms"),
    [
        (500, {}, True, None),
        (503, {"Retry-After": "2"}, True, 2000),
        (429, {"Retry-After": "1"}, True, 1000),
        (429, {"retry-after": "0.5"}, True, 500),
        (429, {"retry-after-ms": "250"}, True, 250),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, True, None),
        (429, {}, True, None),
        (400, {}, False, None),
        (401, {}, False, None),
        (404, {}, False, None),
    ],
)
def test_parse_error_status(
    status: int, headers: dict[str, str], retryable: bool, retry_after_ms: int | None
) -> None:
    """A non-2xx answer raises BackendStatusError with its status, retryability and delay."""
    with pytest.raises(BackendStatusError) as caught:
        openai.parse("chat", "local", status, b'{"error": {"message": "x"}}', headers)
    assert caught.value.status == status
    assert caught.value.retryable is retryable
    assert caught.value.retry_after_ms == retry_after_ms
    assert caught.value.backend == "local"


def test_status_error_names_the_error_code_but_not_its_message() -> None:
    """The message keeps the error's type/code and drops its free text, which may quote input."""
    payload = orjson.dumps(
        {
            "error": {
                "message": "your prompt 'SECRET TEXT' is too long",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            }
        }
    )
    with pytest.raises(BackendStatusError) as caught:
        openai.parse("chat", "cloud", 400, payload, {})
    message = str(caught.value)
    assert "backend 'cloud' answered 400 (invalid_request_error/context_length_exceeded)" in message
    assert "SECRET TEXT" not in message


@pytest.mark.parametrize(
    ("kind", "payload", "expected"),
    [
        ("chat", b"<html>oops</html>", "body is not JSON"),
        ("chat", b"[1, 2]", "body is a list of 2, not a JSON object"),
        ("chat", b"{}", "has no choices[0].message (got an empty object)"),
        ("chat", b'{"choices": []}', "has no choices[0].message"),
        (
            "chat",
            b'{"choices": [{"text": "hi"}]}',
            "has no choices[0].message (got an object with keys [text])",
        ),
        ("chat", b'{"choices": [{"message": "hi"}]}', "has no choices[0].message"),
        ("completion", b'{"choices": [{"message": {}}]}', "has no choices[0].text"),
        ("completion", b'{"choices": [{"text": null}]}', "has no choices[0].text"),
        ("embeddings", b'{"embeddings": [[1]]}', "has no data list"),
        ("embeddings", b'{"data": [{"index": 0}]}', "has no data[0].embedding"),
        (
            "embeddings",
            b'{"data": [{"embedding": [1]}, 7]}',
            "has no data[1].embedding (got a int)",
        ),
        (
            "embeddings",
            b'{"data": [{"embedding": [[0.1, 0.2], [0.3, 0.4]]}]}',
            "has no data[0].embedding as a list of numbers (got a list of 2)",
        ),
    ],
)
def test_parse_protocol_error(kind: Any, payload: bytes, expected: str) -> None:
    """A 2xx body that is not JSON or lacks the expected shape raises BackendProtocolError."""
    with pytest.raises(BackendProtocolError) as caught:
        openai.parse(kind, "local", 200, payload, {})
    assert str(caught.value).startswith("backend 'local' answered 200 but the body ")
    assert expected in str(caught.value)
    assert caught.value.retryable is True


def test_protocol_error_never_quotes_the_response_text() -> None:
    """What arrived is described by shape, so the reply's text stays out of the message."""
    payload = b'{"choices": [{"delta": {"content": "PRIVATE REPLY"}}]}'
    with pytest.raises(BackendProtocolError) as caught:
        openai.parse("chat", "local", 200, payload, {})
    assert "PRIVATE REPLY" not in str(caught.value)
    assert str(caught.value) == (
        "backend 'local' answered 200 but the body has no choices[0].message "
        "(got an object with keys [delta])"
    )


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("http://h:1", "http://h:1/v1/chat/completions"),
        ("http://h:1/", "http://h:1/v1/chat/completions"),
        ("http://h:1/v1", "http://h:1/v1/chat/completions"),
        (
            "https://h/openai/v1/?api-version=2024",
            "https://h/openai/v1/chat/completions?api-version=2024",
        ),
    ],
)
def test_join_url(base_url: str, expected: str) -> None:
    """The call's path joins the base URL's path, tolerating /v1 and keeping the query string."""
    assert join_url(base_url, "/v1/chat/completions") == expected
