"""Tools and structured output across protocols: OpenAI bodies to Anthropic and Ollama
calls, and their answers and streams back, as tables of cases."""

import orjson
import pytest

from turnout.backends import anthropic, ollama, tools
from turnout.backends.streaming import OllamaTranslator, accumulate
from turnout.errors import BackendStatusError

FN = {"name": "f", "description": "d", "parameters": {"type": "object"}}
TOOLS = [{"type": "function", "function": FN}]
TURNS = [
    {"role": "system", "content": "sys"},
    {"role": "user", "content": "weather?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "one"},
    {"role": "tool", "tool_call_id": "c2", "content": "two"},
    {"role": "user", "content": "and?"},
]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, {"tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}]}),
        ({"tool_choice": "auto"}, {"tool_choice": {"type": "auto"}}),
        ({"tool_choice": "required"}, {"tool_choice": {"type": "any"}}),
        ({"tool_choice": "none"}, {"tool_choice": {"type": "none"}}),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}},
         {"tool_choice": {"type": "tool", "name": "f"}}),
        ({"parallel_tool_calls": False},
         {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}),
    ],
)  # fmt: skip
def test_anthropic_tool_fields(extra, expected):
    """OpenAI tools and tool_choice become Anthropic's."""
    json = anthropic.build("chat", "m", {"messages": TURNS, "tools": TOOLS, **extra}).json
    for key, value in expected.items():
        assert json[key] == value


def test_anthropic_tool_turns_alternate():
    """tool_calls become tool_use blocks; tool results and the next user text share one turn."""
    json = anthropic.build("chat", "m", {"messages": TURNS}).json
    assert json["system"] == "sys"
    assert json["messages"] == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 1}},
            {"type": "tool_use", "id": "c2", "name": "g", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "c1", "content": "one"},
            {"type": "tool_result", "tool_use_id": "c2", "content": "two"},
            {"type": "text", "text": "and?"}]},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("protocol", "body", "lacks"),
    [
        ("anthropic", {"response_format": {"type": "json_schema", "json_schema": {}}},
         "response_format json_schema"),
        ("ollama", {"tools": TOOLS, "tool_choice": "required"}, "a forced tool_choice"),
        ("ollama", {"tools": TOOLS, "tool_choice": {"type": "function",
                                                   "function": {"name": "f"}}},
         "a forced tool_choice"),
        ("anthropic", {"tools": [{"type": "web_search"}]}, "tools of type 'web_search'"),
    ],
)  # fmt: skip
def test_what_a_target_lacks_is_a_400_naming_it(protocol, body, lacks):
    """No silent drop: a non-retryable 400 names the backend, its protocol and the feature."""
    module = anthropic if protocol == "anthropic" else ollama
    with pytest.raises(BackendStatusError) as info:
        module.build("chat", "m", {"messages": TURNS, **body}, backend_id="b1")
    assert info.value.status == 400 and not info.value.retryable
    assert "backend 'b1'" in str(info.value) and lacks in str(info.value)


def test_ollama_tool_turns():
    """Ollama gets the tools, object arguments and tool names on tool messages."""
    json = ollama.build(
        "chat", "m", {"messages": TURNS, "tools": TOOLS, "tool_choice": "auto"}
    ).json
    assert json["tools"] == TOOLS
    assert json["messages"][2]["tool_calls"] == [
        {"function": {"name": "f", "arguments": {"x": 1}}},
        {"function": {"name": "g", "arguments": {}}},
    ]
    assert json["messages"][3] == {"role": "tool", "content": "one", "tool_name": "f"}
    none = ollama.build("chat", "m", {"messages": TURNS, "tools": TOOLS, "tool_choice": "none"})
    assert "tools" not in none.json


def test_answers_with_tool_calls_come_back_as_openai_tool_calls():
    """Anthropic tool_use blocks and Ollama tool_calls become OpenAI tool_calls."""
    a = orjson.dumps({"id": "msg1", "model": "m", "stop_reason": "tool_use", "content": [
        {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}}]})  # fmt: skip
    got = anthropic.parse("chat", "b", 200, a, {})["choices"][0]
    assert got["finish_reason"] == "tool_calls"
    assert got["message"]["tool_calls"] == [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    ]
    calls = [{"function": {"name": "f", "arguments": {"x": 1}}}]
    message = {"role": "assistant", "content": "", "tool_calls": calls}
    o = orjson.dumps({"model": "m", "done": True, "message": message})
    got = ollama.parse("chat", "b", 200, o, {})["choices"][0]
    assert got["finish_reason"] == "tool_calls"
    (call,) = got["message"]["tool_calls"]
    assert call["function"] == {"name": "f", "arguments": '{"x":1}'}
    assert (
        call["id"].startswith("call_")
        and call["id"]
        == ollama.parse("chat", "b", 200, o, {})["choices"][0]["message"]["tool_calls"][0]["id"]
    )


def test_anthropic_streamed_tool_use_becomes_tool_call_deltas():
    """content_block_start tool_use and input_json_delta become OpenAI tool_calls deltas."""
    t = anthropic.StreamTranslator("chat", "b")
    chunks = t.feed("message_start", {"type": "message_start", "message": {"id": "x"}})
    chunks += t.feed("content_block_start", {"type": "content_block_start", "index": 0,
                     "content_block": {"type": "tool_use", "id": "t1", "name": "f"}})  # fmt: skip
    for piece in ('{"x"', ": 1}"):
        chunks += t.feed("content_block_delta", {"type": "content_block_delta", "index": 0,
                         "delta": {"type": "input_json_delta", "partial_json": piece}})  # fmt: skip
    chunks += t.feed("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": "tool_use"}})  # fmt: skip
    whole = accumulate("chat", chunks)["choices"][0]
    assert whole["finish_reason"] == "tool_calls"
    assert whole["message"]["tool_calls"] == [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    ]


def test_ollama_streamed_tool_calls_become_tool_call_deltas():
    """A streamed line with tool_calls becomes one delta; the finish reason is tool_calls."""
    t = OllamaTranslator("chat", "b")
    call = {"function": {"name": "f", "arguments": {"x": 1}}}
    chunks = t.feed({"model": "m", "message": {"role": "assistant", "content": "",
                                               "tool_calls": [call]}, "done": False})  # fmt: skip
    chunks += t.feed({"model": "m", "message": {"role": "assistant", "content": ""}, "done": True})
    whole = accumulate("chat", chunks)["choices"][0]
    assert whole["finish_reason"] == "tool_calls"
    assert whole["message"]["content"] is None
    assert whole["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x":1}'}


def test_merge_deltas_joins_argument_pieces_by_index():
    """Pieces of two parallel calls interleaved are joined per index."""
    acc: dict = {}
    tools.merge_deltas(acc, [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}])
    tools.merge_deltas(acc, [{"index": 1, "id": "b", "function": {"name": "g", "arguments": ""}}])
    tools.merge_deltas(acc, [{"index": 0, "function": {"arguments": "}"}}])
    assert [(c["id"], c["function"]["arguments"]) for c in acc.values()] == [("a", "{}"), ("b", "")]
