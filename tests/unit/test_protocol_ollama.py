"""The Ollama protocol adapter: OpenAI bodies to Ollama calls and back, as tables of cases."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from turnout.backends import ollama
from turnout.backends.http_call import HttpAnswer, HttpCall
from turnout.errors import BackendProtocolError, BackendStatusError

USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("body", "expected_options"),
    [
        ({}, {}),
        ({"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2, "top_p": 0.9}),
        ({"max_tokens": 7}, {"num_predict": 7}),
        ({"max_completion_tokens": 9}, {"num_predict": 9}),
        ({"stop": "END"}, {"stop": ["END"]}),
        ({"stop": ["a", "b"]}, {"stop": ["a", "b"]}),
        ({"seed": 42}, {"seed": 42}),
        (
            {"presence_penalty": 0.5, "frequency_penalty": 0.25},
            {"presence_penalty": 0.5, "frequency_penalty": 0.25},
        ),
        ({"temperature": None, "user": "u1", "n": 1}, {}),
    ],
    ids=[
        "none",
        "sampling",
        "max_tokens",
        "max_completion_tokens",
        "stop-string",
        "stop-list",
        "seed",
        "penalties",
        "ignored-fields",
    ],
)
def test_build_chat_maps_sampling_to_options(
    body: dict[str, Any], expected_options: dict[str, Any]
) -> None:
    """Sampling parameters move into options, max_tokens becoming num_predict."""
    call = ollama.build("chat", "llama3.2", {"model": "alias", "messages": [USER], **body})
    assert call == HttpCall(
        "/api/chat",
        {"model": "llama3.2", "stream": False, "options": expected_options, "messages": [USER]},
    )


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "json_object"}, "json"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            {"type": "object"},
        ),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "json"),
    ],
)
def test_build_maps_response_format(response_format: dict[str, Any], expected: Any) -> None:
    """response_format json_object becomes format "json"; a JSON schema is passed as format."""
    body = {"messages": [USER], "response_format": response_format}
    assert ollama.build("chat", "m", body).json["format"] == expected


def test_build_sends_no_format_for_plain_text() -> None:
    """response_format text leaves Ollama's format unset."""
    body = {"messages": [USER], "response_format": {"type": "text"}}
    assert "format" not in ollama.build("chat", "m", body).json


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"role": "user", "content": "plain"}, {"role": "user", "content": "plain"}),
        (
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "user", "content": "a\nb"},
        ),
        (
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            },
            {"role": "user", "content": "what is this?", "images": ["iVBORw0"]},
        ),
        (
            {"role": "system", "content": "be brief", "name": "x"},
            {"role": "system", "content": "be brief"},
        ),
    ],
    ids=["text", "parts-flattened", "data-url-images", "extra-fields-dropped"],
)
def test_build_translates_messages(message: dict[str, Any], expected: dict[str, Any]) -> None:
    """Content given as parts is flattened to text; base64 data-URL images go to images."""
    assert ollama.build("chat", "m", {"messages": [message]}).json["messages"] == [expected]


def test_build_passes_malformed_messages_through() -> None:
    """Messages that are not a list are left for the backend to reject."""
    assert ollama.build("chat", "m", {"messages": "hi"}).json["messages"] == "hi"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"prompt": "once", "max_tokens": 5},
            {"model": "m", "stream": False, "options": {"num_predict": 5}, "prompt": "once"},
        ),
        (
            {"prompt": ["only one"]},
            {"model": "m", "stream": False, "options": {}, "prompt": "only one"},
        ),
        (
            {"prompt": "def f(", "suffix": "return x"},
            {
                "model": "m",
                "stream": False,
                "options": {},
                "prompt": "def f(",
                "suffix": "return x",
            },
        ),
    ],
    ids=["prompt", "one-prompt-list", "suffix"],
)
def test_build_completion(body: dict[str, Any], expected: dict[str, Any]) -> None:
    """A completion becomes POST /api/generate with one prompt string."""
    assert ollama.build("completion", "m", body) == HttpCall("/api/generate", expected)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"input": "a"}, {"model": "m", "input": "a"}),
        (
            {"input": ["a", "b"], "dimensions": 4},
            {"model": "m", "input": ["a", "b"], "dimensions": 4},
        ),
    ],
)
def test_build_embeddings(body: dict[str, Any], expected: dict[str, Any]) -> None:
    """Embeddings become POST /api/embed with the input as given."""
    assert ollama.build("embeddings", "m", body) == HttpCall("/api/embed", expected)


@pytest.mark.parametrize(
    ("raw_input", "prompts"),
    [("a", ["a"]), (["a", "b", "c"], ["a", "b", "c"]), ([1, 2], [[1, 2]])],
    ids=["string", "list", "tokens-passed-as-is"],
)
def test_build_legacy_embeddings_makes_one_call_per_input(
    raw_input: Any, prompts: list[Any]
) -> None:
    """The older /api/embeddings endpoint takes one prompt per call."""
    calls = ollama.build_legacy_embeddings("m", {"input": raw_input})
    assert calls == [HttpCall("/api/embeddings", {"model": "m", "prompt": p}) for p in prompts]


CHAT_ANSWER = {
    "model": "llama3.2",
    "created_at": "2024-07-22T20:33:28.123456789Z",
    "message": {"role": "assistant", "content": "hello"},
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 11,
    "eval_count": 3,
}


def test_parse_chat() -> None:
    """An Ollama chat answer becomes a chat.completion with choices and usage."""
    payload = orjson.dumps(CHAT_ANSWER)
    out = ollama.parse("chat", "local", 200, payload, {})
    assert out["id"].startswith("chatcmpl-")
    assert {k: v for k, v in out.items() if k != "id"} == {
        "object": "chat.completion",
        "created": 1721680408,
        "model": "llama3.2",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    }


def test_parse_chat_id_is_deterministic() -> None:
    """The same answer gets the same id."""
    payload = orjson.dumps(CHAT_ANSWER)
    assert (
        ollama.parse("chat", "l", 200, payload, {})["id"]
        == ollama.parse("chat", "l", 200, payload, {})["id"]
    )


@pytest.mark.parametrize(
    ("done_reason", "finish_reason"),
    [("stop", "stop"), ("length", "length"), (None, "stop"), ("load", "stop")],
)
def test_parse_maps_done_reason(done_reason: str | None, finish_reason: str) -> None:
    """done_reason stop and length carry over; anything else reads as stop."""
    payload = orjson.dumps({**CHAT_ANSWER, "done_reason": done_reason})
    assert (
        ollama.parse("chat", "l", 200, payload, {})["choices"][0]["finish_reason"] == finish_reason
    )


@pytest.mark.parametrize(
    ("created_at", "created"),
    [
        ("2023-08-04T08:52:19.385406455-07:00", 1691164339),
        ("2023-08-04T15:52:19Z", 1691164339),
        ("2023-08-04T15:52:19", 1691164339),
        ("yesterday", 0),
        (None, 0),
    ],
)
def test_parse_reads_created_at(created_at: str | None, created: int) -> None:
    """created_at becomes integer epoch seconds (UTC when no zone; 0 when unreadable)."""
    payload = orjson.dumps({**CHAT_ANSWER, "created_at": created_at})
    assert ollama.parse("chat", "l", 200, payload, {})["created"] == created


def test_parse_counts_missing_usage_as_zero() -> None:
    """An answer without token counts (e.g. a cached prompt) reports zero usage."""
    answer = {k: v for k, v in CHAT_ANSWER.items() if not k.endswith("_count")}
    usage = ollama.parse("chat", "l", 200, orjson.dumps(answer), {})["usage"]
    assert usage == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_parse_completion() -> None:
    """An Ollama generate answer becomes a text_completion."""
    answer = {
        "model": "m",
        "created_at": "2024-01-01T00:00:00Z",
        "response": "text",
        "done_reason": "length",
        "prompt_eval_count": 2,
        "eval_count": 5,
    }
    out = ollama.parse("completion", "l", 200, orjson.dumps(answer), {})
    assert out["id"].startswith("cmpl-")
    assert out["object"] == "text_completion"
    assert out["created"] == 1704067200
    assert out["choices"] == [
        {"index": 0, "text": "text", "logprobs": None, "finish_reason": "length"}
    ]
    assert out["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}


def test_parse_embeddings() -> None:
    """An /api/embed answer becomes OpenAI's list of embeddings, in order."""
    answer = {"model": "e", "embeddings": [[0.1, 0.2], [0.3, 0.4]], "prompt_eval_count": 4}
    assert ollama.parse("embeddings", "l", 200, orjson.dumps(answer), {}) == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
            {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]},
        ],
        "model": "e",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }


def test_parse_legacy_embeddings_joins_answers_in_order() -> None:
    """One /api/embeddings answer per input become one OpenAI list, indexed in input order."""
    answers = [HttpAnswer(200, orjson.dumps({"embedding": [float(i)]}), {}) for i in range(3)]
    out = ollama.parse_legacy_embeddings("l", "e", answers)
    assert [d["embedding"] for d in out["data"]] == [[0.0], [1.0], [2.0]]
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    assert out["model"] == "e"


@pytest.mark.parametrize(
    ("status", "headers", "retryable", "retry_after_ms"),
    [
        (500, {}, True, None),
        (429, {"Retry-After": "1"}, True, 1000),
        (404, {}, False, None),
        (400, {}, False, None),
    ],
)
def test_parse_error_status(
    status: int, headers: dict[str, str], retryable: bool, retry_after_ms: int | None
) -> None:
    """A non-2xx answer raises BackendStatusError, and Ollama's error text stays out of it."""
    payload = b'{"error": "model \'llama3.2\' not found, try pulling it first"}'
    with pytest.raises(BackendStatusError) as caught:
        ollama.parse("chat", "local", status, payload, headers)
    assert (caught.value.status, caught.value.retryable) == (status, retryable)
    assert caught.value.retry_after_ms == retry_after_ms
    assert "pulling" not in str(caught.value)


def test_parse_legacy_embeddings_raises_on_any_failed_answer() -> None:
    """A failed answer among several raises its BackendStatusError."""
    answers = [HttpAnswer(200, b'{"embedding": [1]}', {}), HttpAnswer(503, b"", {})]
    with pytest.raises(BackendStatusError) as caught:
        ollama.parse_legacy_embeddings("l", "e", answers)
    assert caught.value.status == 503


@pytest.mark.parametrize(
    ("kind", "payload", "expected"),
    [
        ("chat", b"not json", "body is not JSON"),
        ("chat", b'"a string"', "body is a str, not a JSON object"),
        ("chat", b'{"error": "boom"}', "has no message.content (got an object with keys [error])"),
        ("chat", b'{"message": {"role": "assistant"}}', "has no message.content"),
        ("completion", b'{"message": {"content": "x"}}', "has no response"),
        ("embeddings", b'{"embedding": [1]}', "has no embeddings list of lists"),
        ("embeddings", b'{"embeddings": [1, 2]}', "has no embeddings list of lists"),
    ],
)
def test_parse_protocol_error(kind: Any, payload: bytes, expected: str) -> None:
    """A 2xx body that is not JSON or lacks the expected shape raises BackendProtocolError."""
    with pytest.raises(BackendProtocolError) as caught:
        ollama.parse(kind, "local", 200, payload, {})
    assert str(caught.value).startswith("backend 'local' answered 200 but the body ")
    assert expected in str(caught.value)


def test_parse_legacy_embeddings_protocol_error() -> None:
    """A legacy answer without an embedding list raises BackendProtocolError."""
    with pytest.raises(BackendProtocolError, match=r"has no embedding list"):
        ollama.parse_legacy_embeddings("l", "e", [HttpAnswer(200, b'{"embeddings": [[1]]}', {})])
