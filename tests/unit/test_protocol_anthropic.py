"""The Anthropic Messages adapter: OpenAI bodies to /v1/messages and back, as tables of cases."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from turnout.backends import anthropic
from turnout.errors import BackendProtocolError, BackendStatusError

USER = {"role": "user", "content": "hi"}


def build(body: dict[str, Any], kind: Any = "chat", **kw: Any) -> dict[str, Any]:
    call = anthropic.build(kind, "claude-x", {"model": "alias", **body}, **kw)
    assert call.path == "/v1/messages"
    return call.json


def test_system_and_developer_messages_move_to_the_system_field() -> None:
    """System prompts are lifted out of messages, joined with blank lines, in order."""
    json = build(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                USER,
                {"role": "developer", "content": [{"type": "text", "text": "no lists"}]},
            ]
        }
    )
    assert json["system"] == "be brief\n\nno lists"
    assert json["messages"] == [USER]
    assert json["model"] == "claude-x"


def test_no_system_message_means_no_system_field() -> None:
    """A chat without system messages sends no system field at all."""
    assert "system" not in build({"messages": [USER]})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, anthropic.DEFAULT_MAX_TOKENS),
        ({"max_tokens": 7}, 7),
        ({"max_completion_tokens": 9}, 9),
        ({"max_tokens": None, "max_completion_tokens": 3}, 3),
    ],
    ids=["default", "max_tokens", "max_completion_tokens", "null-falls-through"],
)
def test_max_tokens_is_always_sent(body: dict[str, Any], expected: int) -> None:
    """Anthropic requires max_tokens: the body's, else the default of 1024."""
    assert build({"messages": [USER], **body})["max_tokens"] == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"stop": "END"}, {"stop_sequences": ["END"]}),
        ({"stop": ["a", "b"]}, {"stop_sequences": ["a", "b"]}),
        ({"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2, "top_p": 0.9}),
        ({"user": "u-1"}, {"metadata": {"user_id": "u-1"}}),
        ({"temperature": None, "n": 1, "seed": 4}, {}),
    ],
    ids=["stop-string", "stop-list", "sampling", "user", "ignored"],
)
def test_sampling_fields_are_translated(body: dict[str, Any], expected: dict[str, Any]) -> None:
    """stop becomes stop_sequences; sampling passes; OpenAI-only fields are dropped."""
    json = build({"messages": [USER], **body})
    extra = {k: v for k, v in json.items() if k not in ("model", "messages", "max_tokens")}
    assert extra == expected


def test_image_parts_become_image_blocks() -> None:
    """A data-URL image becomes a base64 source; a remote URL a url source."""
    content = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    json = build({"messages": [{"role": "user", "content": content}]})
    assert json["messages"][0]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
    ]


def test_a_completion_is_sent_as_one_user_message() -> None:
    """Anthropic has no completion endpoint: the prompt becomes the user message."""
    json = build({"prompt": ["say hi"]}, kind="completion")
    assert json["messages"] == [{"role": "user", "content": "say hi"}]


def test_stream_true_is_sent_only_when_asked() -> None:
    """build(stream=True) asks for server-sent events; the default does not."""
    assert build({"messages": [USER]}, stream=True)["stream"] is True
    assert "stream" not in build({"messages": [USER]})


def test_embeddings_are_refused_as_a_retryable_501() -> None:
    """There is no embeddings endpoint: a 501 that lets the router try another target."""
    with pytest.raises(BackendStatusError) as info:
        anthropic.build("embeddings", "m", {"input": "x"}, backend_id="claude")
    assert info.value.status == 501
    assert info.value.retryable
    assert "claude" in info.value.message


def test_headers_carry_the_key_and_the_api_version() -> None:
    """x-api-key (not Authorization) and anthropic-version."""
    assert anthropic.headers("sk-ant") == {
        "anthropic-version": anthropic.API_VERSION,
        "x-api-key": "sk-ant",
    }
    assert anthropic.headers(None) == {"anthropic-version": anthropic.API_VERSION}


def answer(**fields: Any) -> bytes:
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "output_tokens": 2},
    }
    return orjson.dumps({**body, **fields})


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        (None, "stop"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason: Any, finish: str) -> None:
    """end_turn and stop_sequence are stop, max_tokens is length."""
    body = anthropic.parse("chat", "claude", 200, answer(stop_reason=stop_reason), {})
    assert body["choices"][0]["finish_reason"] == finish


def test_parse_chat_joins_text_blocks_and_maps_usage() -> None:
    """Text blocks join into the message; input/output tokens become prompt/completion."""
    body = anthropic.parse("chat", "claude", 200, answer(), {})
    assert body["object"] == "chat.completion"
    assert body["id"] == "chatcmpl-msg_1"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello there"}
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_parse_completion_answers_as_text_completion() -> None:
    """A completion's answer has choices[0].text."""
    body = anthropic.parse("completion", "claude", 200, answer(), {})
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "Hello there"


def test_an_error_status_raises_with_anthropics_error_type() -> None:
    """A 529 overloaded answer is a retryable BackendStatusError naming the error type."""
    payload = orjson.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "x"}})
    with pytest.raises(BackendStatusError) as info:
        anthropic.parse("chat", "claude", 529, payload, {"retry-after": "2"})
    assert info.value.retryable
    assert info.value.retry_after_ms == 2000
    assert "overloaded_error" in info.value.message


def test_a_body_without_content_is_a_protocol_error() -> None:
    """No content list: BackendProtocolError naming what was expected."""
    with pytest.raises(BackendProtocolError, match="content list"):
        anthropic.parse("chat", "claude", 200, b'{"id": "x"}', {})


def events() -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {"id": "msg_9", "model": "claude-x", "usage": {"input_tokens": 4}},
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hel"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "lo"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens"},
                "usage": {"output_tokens": 2},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_stream_events_become_openai_chunks() -> None:
    """message_start gives the role, deltas the text, message_delta the finish and usage."""
    t = anthropic.StreamTranslator("chat", "claude")
    chunks = [c for event, data in events() for c in t.feed(event, data)]
    assert t.done
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["id"] for c in chunks} == {"chatcmpl-msg_9"}
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def test_stream_events_of_a_completion_are_text_completion_chunks() -> None:
    """For kind completion, the text travels in choices[0].text."""
    t = anthropic.StreamTranslator("completion", "claude")
    chunks = [c for event, data in events() for c in t.feed(event, data)]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello"
    assert {c["object"] for c in chunks} == {"text_completion"}


def test_an_error_event_raises_with_the_status_it_stands_for() -> None:
    """overloaded_error mid-stream is a retryable 529."""
    t = anthropic.StreamTranslator("chat", "claude")
    with pytest.raises(BackendStatusError) as info:
        t.feed("error", {"type": "error", "error": {"type": "overloaded_error", "message": "x"}})
    assert info.value.status == 529
    assert info.value.retryable


def test_an_event_whose_data_is_not_an_object_is_a_protocol_error() -> None:
    """Junk data: BackendProtocolError."""
    with pytest.raises(BackendProtocolError):
        anthropic.StreamTranslator("chat", "claude").feed("content_block_delta", [1, 2])
