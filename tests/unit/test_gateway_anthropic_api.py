"""Anthropic's Messages API at the edge: requests to OpenAI chat bodies, answers and
streams back, as tables of cases."""

import orjson
import pytest

from turnout.gateway import anthropic_api as ant
from turnout.gateway.openai_api import EdgeError

TOOL = {"name": "f", "description": "d", "input_schema": {"type": "object"}}


def body(**extra):
    return {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}],
            **extra}  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, {"messages": [{"role": "user", "content": "hi"}]}),
        ({"system": "be brief"},
         {"messages": [{"role": "system", "content": "be brief"},
                       {"role": "user", "content": "hi"}]}),
        ({"stop_sequences": ["x"], "temperature": 0.5, "metadata": {"user_id": "u"}},
         {"stop": ["x"], "temperature": 0.5, "user": "u"}),
        ({"tools": [TOOL]},
         {"tools": [{"type": "function",
                     "function": {"name": "f", "description": "d",
                                  "parameters": {"type": "object"}}}]}),
        ({"tool_choice": {"type": "any"}}, {"tool_choice": "required"}),
        ({"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
         {"tool_choice": "auto", "parallel_tool_calls": False}),
        ({"tool_choice": {"type": "tool", "name": "f"}},
         {"tool_choice": {"type": "function", "function": {"name": "f"}}}),
        ({"tool_choice": {"type": "none"}}, {"tool_choice": "none"}),
    ],
)  # fmt: skip
def test_request_fields_translate(extra, expected):
    """Each Anthropic field lands in the OpenAI body the workers read."""
    call = ant.parse(body(**extra))
    assert call.kind == "chat" and call.model == "m" and call.body["max_tokens"] == 16
    for key, value in expected.items():
        assert call.body[key] == value


def test_tool_turns_become_tool_calls_and_tool_messages():
    """Assistant tool_use blocks become tool_calls; user tool_result blocks become tool messages."""
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "let me look"},
            {"type": "tool_use", "id": "t1", "name": "f", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1",
             "content": [{"type": "text", "text": "sun"}]},
            {"type": "text", "text": "thanks", "cache_control": {"type": "ephemeral"}}]},
    ]  # fmt: skip
    out = ant.parse(body(messages=messages)).body["messages"]
    assert out == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "let me look", "tool_calls": [
            {"id": "t1", "type": "function",
             "function": {"name": "f", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "sun"},
        {"role": "user", "content": [
            {"type": "text", "text": "thanks", "cache_control": {"type": "ephemeral"}}]},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"model": 3}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, "messages[0]"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_bad_requests_name_the_field(bad, param):
    """A 400 with Anthropic's error type names the field that is wrong."""
    with pytest.raises(EdgeError) as info:
        ant.parse(body(**bad))
    assert info.value.status == 400 and info.value.param == param
    assert ant.error_body(info.value)["error"]["type"] == "invalid_request_error"


def test_a_completion_with_a_tool_call_becomes_a_tool_use_message():
    """Text and tool calls become blocks; finish reason and cached tokens are translated."""
    completion = {
        "id": "chatcmpl-abc",
        "choices": [{"message": {"role": "assistant", "content": "ok", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "f", "arguments": '{"a": 1}'}}]},
            "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3,
                  "prompt_tokens_details": {"cached_tokens": 4}},
    }  # fmt: skip
    out = ant.message_body("m", completion)
    assert out["id"] == "msg_abc" and out["stop_reason"] == "tool_use"
    assert out["content"] == [
        {"type": "text", "text": "ok"},
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}},
    ]
    assert out["usage"] == {
        "input_tokens": 6,
        "output_tokens": 3,
        "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 0,
    }


def events(raw: bytes):
    out = []
    for block in raw.decode().strip().split("\n\n"):
        name, data = block.split("\n")
        out.append((name.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
    return out


def chunk(delta, finish=None, **extra):
    return {"id": "chatcmpl-x", "choices": [{"index": 0, "delta": delta,
                                             "finish_reason": finish}], **extra}  # fmt: skip


def test_a_streamed_text_then_tool_call_has_anthropics_order():
    """message_start, block start, ping, deltas, block stop per block, message_delta, stop."""
    s = ant.MessageStream("m")
    raw = s.feed(chunk({"role": "assistant", "content": "Hel"}))
    raw += s.feed(chunk({"content": "lo"}))
    call = {"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a"'}}
    raw += s.feed(chunk({"tool_calls": [call]}))
    raw += s.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}))
    raw += s.feed(chunk({}, "tool_calls"))
    raw += s.finish({"usage": {"prompt_tokens": 2, "completion_tokens": 5}})
    got = events(raw)
    assert [name for name, _ in got] == [
        "message_start", "content_block_start", "ping", "content_block_delta",
        "content_block_delta", "content_block_stop", "content_block_start",
        "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert got[6][1]["content_block"] == {"type": "tool_use", "id": "c1", "name": "f", "input": {}}
    assert [d["index"] for n, d in got if n == "content_block_delta"] == [0, 0, 1, 1]
    partial = "".join(
        d["delta"].get("partial_json", "") for n, d in got if n == "content_block_delta"
    )
    assert orjson.loads(partial) == {"a": 1}
    assert got[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert got[-2][1]["usage"]["output_tokens"] == 5


def test_an_empty_stream_still_starts_and_stops():
    """A reply with no content still gives message_start, ping, message_delta, message_stop."""
    got = events(ant.MessageStream("m").finish({"choices": [{"finish_reason": "length"}]}))
    assert [n for n, _ in got] == ["message_start", "ping", "message_delta", "message_stop"]
    assert got[2][1]["delta"]["stop_reason"] == "max_tokens"


def test_count_tokens_estimates_system_messages_and_tools():
    """max_tokens is not needed; more text, and tools, count more."""
    small = ant.count_tokens({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    big = ant.count_tokens(
        {"model": "m", "system": "x" * 400, "tools": [TOOL],
         "messages": [{"role": "user", "content": "hi"}]}
    )  # fmt: skip
    assert 0 < small["input_tokens"] < big["input_tokens"]
    assert big["input_tokens"] >= small["input_tokens"] + 100
