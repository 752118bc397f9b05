"""The Responses API at the edge: bodies to chat bodies, answers and streams back."""

import orjson
import pytest

from turnout.gateway import responses_api as rsp
from turnout.gateway.kafka import StatusRecord
from turnout.gateway.openai_api import EdgeError


def parse(**body):
    return rsp.parse({"model": "m", "input": "hi", **body})


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, {"messages": [{"role": "user", "content": "hi"}]}),
        ({"instructions": "be brief"},
         {"messages": [{"role": "system", "content": "be brief"},
                       {"role": "user", "content": "hi"}]}),
        ({"max_output_tokens": 9, "prompt_cache_key": "k1", "parallel_tool_calls": False},
         {"max_tokens": 9, "prompt_cache_key": "k1", "parallel_tool_calls": False}),
        ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]},
         {"tools": [{"type": "function",
                     "function": {"name": "f", "parameters": {"type": "object"}}}]}),
        ({"tool_choice": {"type": "function", "name": "f"}},
         {"tool_choice": {"type": "function", "function": {"name": "f"}}}),
        ({"tool_choice": "required"}, {"tool_choice": "required"}),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}},
         {"response_format": {"type": "json_schema",
                              "json_schema": {"name": "x", "schema": {"type": "object"}}}}),
        ({"text": {"format": {"type": "json_object"}}},
         {"response_format": {"type": "json_object"}}),
    ],
)  # fmt: skip
def test_request_fields_translate(extra, expected):
    """Each Responses field lands in the chat body the workers read."""
    call, background = parse(**extra)
    assert (call.kind, call.model, background) == ("chat", "m", False)
    for key, value in expected.items():
        assert call.body[key] == value


def test_input_items_with_function_calls_become_chat_turns():
    """Consecutive function_call items share one assistant message; outputs are tool turns."""
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
    ]
    call, _ = parse(input=items)
    assert call.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": []}, "input"),
        ({"input": [{"type": "file_search_call"}]}, "input"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"stream": True, "background": True}, "stream"),
        ({"text": {"format": {"type": "grammar"}}}, "text"),
        ({"model": ""}, "model"),
    ],
)
def test_bad_requests_name_the_field(bad, param):
    """A 400 names what is wrong and, for unsupported features, what to do instead."""
    with pytest.raises(EdgeError) as info:
        parse(**bad)
    assert info.value.status == 400 and info.value.param == param


def test_ids_map_both_ways():
    """resp_<hex> is request req-<hex>; other ids are not ours."""
    assert rsp.response_id("req-abc") == "resp_abc"
    assert rsp.request_id("resp_abc") == "req-abc"
    assert rsp.request_id("chatcmpl-1") is None


COMPLETION = {
    "choices": [{"message": {"content": "ok", "tool_calls": [
        {"id": "c1", "function": {"name": "f", "arguments": '{"a":1}'}}]},
        "finish_reason": "tool_calls"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2,
              "prompt_tokens_details": {"cached_tokens": 3}},
}  # fmt: skip


def test_a_completion_becomes_message_and_function_call_items():
    """Text is a message item, each tool call a function_call item; cached tokens reported."""
    out = rsp.completed("resp_x", "m", COMPLETION, 7)
    assert [i["type"] for i in out["output"]] == ["message", "function_call"]
    assert out["output"][0]["content"][0] == {
        "type": "output_text",
        "text": "ok",
        "annotations": [],
    }
    assert out["output"][1]["call_id"] == "c1" and out["output"][1]["arguments"] == '{"a":1}'
    assert out["usage"]["input_tokens_details"] == {"cached_tokens": 3}
    assert out["usage"]["total_tokens"] == 7


@pytest.mark.parametrize(
    ("status", "reply", "expected"),
    [
        ("queued", None, "queued"),
        ("running", None, "in_progress"),
        ("failed", {"error": {"code": "deadline_exceeded", "message": "late"}}, "failed"),
        ("done", {"body": COMPLETION}, "completed"),
    ],
)
def test_the_status_store_maps_to_response_statuses(status, reply, expected):
    """queued/running/done/failed read as queued/in_progress/completed/failed."""
    rec = StatusRecord(status=status, client_id="c", model="m", updated_ms=1, reply=reply)
    out = rsp.from_status("resp_x", rec)
    assert out["status"] == expected
    if expected == "failed":
        assert out["error"] == {"code": "deadline_exceeded", "message": "late"}


def events(raw: bytes):
    out = []
    for block in raw.decode().strip().split("\n\n"):
        name, data = block.split("\n")
        event = orjson.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        out.append(event)
    return out


def chunk(delta):
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def test_a_stream_has_typed_events_in_order_with_sequence_numbers():
    """Text then a tool call: items open, stream, close in order; completed holds them all."""
    s = rsp.ResponseStream("m")
    s.rid = "resp_x"
    raw = s.feed(chunk({"role": "assistant", "content": "He"})) + s.feed(chunk({"content": "y"}))
    call = {"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a"'}}
    raw += s.feed(chunk({"tool_calls": [call]}))
    raw += s.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}))
    raw += s.finish({"usage": {"prompt_tokens": 1, "completion_tokens": 2}})
    got = events(raw)
    assert [e["type"] for e in got] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    final = got[-1]["response"]
    assert final["id"] == "resp_x" and final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == "Hey"
    assert final["output"][1]["arguments"] == '{"a":1}'
    assert final["usage"]["output_tokens"] == 2
