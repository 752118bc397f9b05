"""Ollama shapes at the gateway's edge: bodies in, replies, NDJSON and errors out (pure)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from schemas.types import Reply, Timings
from turnout.gateway import ollama_api as oll
from turnout.gateway.openai_api import EdgeError

NOW = "2026-01-01T00:00:00Z"
USER = {"role": "user", "content": "hi"}


def test_chat_streams_by_default_and_maps_options() -> None:
    """No stream field means stream; options and format become OpenAI fields."""
    call = oll.parse_chat(
        {
            "model": "llama",
            "messages": [USER],
            "format": "json",
            "options": {"temperature": 0.3, "num_predict": 12, "stop": ["x"], "top_k": 5},
        }
    )
    assert call is not None and call.stream and call.kind == "chat" and call.api == "chat"
    assert call.body == {
        "model": "llama",
        "messages": [USER],
        "temperature": 0.3,
        "max_tokens": 12,
        "stop": ["x"],
        "response_format": {"type": "json_object"},
    }


def test_a_format_schema_becomes_a_json_schema_response_format() -> None:
    """format given as a JSON schema object."""
    schema = {"type": "object"}
    call = oll.parse_chat({"model": "m", "messages": [USER], "format": schema, "stream": False})
    assert call is not None and not call.stream
    assert call.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }


def test_unlimited_num_predict_is_dropped() -> None:
    """num_predict -1 means no limit: no max_tokens."""
    call = oll.parse_chat({"model": "m", "messages": [USER], "options": {"num_predict": -1}})
    assert call is not None and "max_tokens" not in call.body


def test_images_become_data_url_parts() -> None:
    """A message's base64 images become image_url parts after its text."""
    call = oll.parse_chat({"model": "m", "messages": [{**USER, "images": ["QUJD"]}]})
    assert call is not None
    assert call.body["messages"][0]["content"] == [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
    ]


def test_a_chat_without_messages_only_loads_the_model() -> None:
    """No messages: nothing to publish (answered with done_reason load)."""
    assert oll.parse_chat({"model": "m"}) is None
    assert oll.parse_chat({"model": "m", "messages": []}) is None
    assert oll.load_response("chat", "m", NOW)["done_reason"] == "load"


def test_generate_is_a_completion() -> None:
    """A prompt alone: kind completion, suffix kept."""
    call = oll.parse_generate({"model": "m", "prompt": "once", "suffix": "end"})
    assert call is not None and call.kind == "completion" and call.api == "generate"
    assert call.body == {"model": "m", "prompt": "once", "suffix": "end"}


def test_generate_with_a_system_prompt_is_a_chat() -> None:
    """system needs a chat: system and user messages, still answered as generate."""
    call = oll.parse_generate({"model": "m", "prompt": "once", "system": "be terse"})
    assert call is not None and call.kind == "chat" and call.api == "generate"
    assert call.body["messages"] == [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": "once"},
    ]


def test_generate_with_an_empty_prompt_only_loads() -> None:
    """Empty prompt: load only."""
    assert oll.parse_generate({"model": "m", "prompt": ""}) is None


def test_embed_and_legacy_embeddings() -> None:
    """/api/embed takes input (string or list); /api/embeddings takes one prompt."""
    call = oll.parse_embed({"model": "m", "input": ["a", "b"], "dimensions": 4})
    assert call.kind == "embeddings" and not call.stream
    assert call.body == {"model": "m", "input": ["a", "b"], "dimensions": 4}
    legacy = oll.parse_embed({"model": "m", "prompt": "a"}, legacy=True)
    assert legacy.body == {"model": "m", "input": "a"} and legacy.api == "embeddings"


@pytest.mark.parametrize(
    ("parse", "body", "param"),
    [
        (oll.parse_chat, [], None),
        (oll.parse_chat, {"messages": [USER]}, "model"),
        (oll.parse_chat, {"model": "m", "messages": "hi"}, "messages"),
        (oll.parse_chat, {"model": "m", "messages": [{"content": "x"}]}, "messages[0]"),
        (
            oll.parse_chat,
            {"model": "m", "messages": [{"role": "user", "content": 1}]},
            "messages[0].content",
        ),
        (oll.parse_chat, {"model": "m", "messages": [USER], "stream": "no"}, "stream"),
        (oll.parse_chat, {"model": "m", "messages": [USER], "options": []}, "options"),
        (oll.parse_chat, {"model": "m", "messages": [USER], "format": "xml"}, "format"),
        (oll.parse_generate, {"model": "m", "prompt": 3}, "prompt"),
        (oll.parse_generate, {"model": "m", "prompt": "x", "images": "b64"}, "images"),
        (oll.parse_embed, {"model": "m", "input": [1]}, "input"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(parse: Any, body: Any, param: str | None) -> None:
    """Each problem is a 400 naming its field."""
    with pytest.raises(EdgeError) as info:
        parse(body)
    assert (info.value.status, info.value.param) == (400, param)


def reply(content: str = "hello", finish: str = "stop", **fields: Any) -> Reply:
    body = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
        **fields,
    }
    timings = Timings(queue_ms=1.0, backend_ms=2.0, total_ms=5.0)
    return Reply(id="r", status="ok", body=body, timings=timings)


def test_chat_answer_has_ollamas_shape() -> None:
    """message, done, done_reason and the counts and durations Ollama reports."""
    call = oll.parse_chat({"model": "llama", "messages": [USER], "stream": False})
    assert call is not None
    out = oll.response_body(call, reply(finish="length"), NOW)
    assert out == {
        "model": "llama",
        "created_at": NOW,
        "message": {"role": "assistant", "content": "hello"},
        "done": True,
        "done_reason": "length",
        "prompt_eval_count": 2,
        "eval_count": 1,
        "total_duration": 5_000_000,
        "load_duration": 0,
        "eval_duration": 2_000_000,
    }


def test_tool_calls_come_back_with_parsed_arguments() -> None:
    """OpenAI tool calls (arguments as JSON text) become Ollama's (arguments as object)."""
    call = oll.parse_chat({"model": "m", "messages": [USER]})
    assert call is not None
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]
    body = reply().body
    assert body is not None
    body["choices"][0]["message"]["tool_calls"] = calls
    out = oll.response_body(call, Reply(id="r", status="ok", body=body), NOW)
    assert out["message"]["tool_calls"] == [{"function": {"name": "f", "arguments": {"x": 1}}}]


def test_generate_answer_has_response() -> None:
    """A generate answered by a completion: response is choices[0].text."""
    call = oll.parse_generate({"model": "m", "prompt": "p"})
    assert call is not None
    body = {"choices": [{"index": 0, "text": "txt", "finish_reason": "stop"}]}
    out = oll.response_body(call, Reply(id="r", status="ok", body=body), NOW)
    assert out["response"] == "txt" and out["done"] is True


def test_embed_answers() -> None:
    """/api/embed: a list of vectors; /api/embeddings: one vector."""
    body = {"data": [{"embedding": [0.1]}, {"embedding": [0.2]}], "usage": {"prompt_tokens": 2}}
    r = Reply(id="r", status="ok", body=body)
    embed = oll.response_body(oll.parse_embed({"model": "m", "input": ["a", "b"]}), r, NOW)
    assert embed["embeddings"] == [[0.1], [0.2]] and embed["prompt_eval_count"] == 2
    legacy = oll.parse_embed({"model": "m", "prompt": "a"}, legacy=True)
    assert oll.response_body(legacy, r, NOW) == {"embedding": [0.1]}


def test_streamed_pieces_and_the_done_line() -> None:
    """Each chunk with text is a done:false line; the last line is done:true with counts."""
    call = oll.parse_chat({"model": "m", "messages": [USER]})
    assert call is not None
    delta = {"choices": [{"index": 0, "delta": {"content": "he"}, "finish_reason": None}]}
    line = orjson.loads(oll.relay(call, delta, NOW))
    assert line == {
        "model": "m",
        "created_at": NOW,
        "message": {"role": "assistant", "content": "he"},
        "done": False,
    }
    empty = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    assert oll.relay(call, empty, NOW) == b""
    last = orjson.loads(oll.finish(call, reply(), NOW))
    assert last["done"] is True and last["message"]["content"] == ""
    assert last["eval_count"] == 1


def test_fallback_sends_the_whole_text_as_one_piece() -> None:
    """A worker that did not stream: one done:false piece with all the text."""
    call = oll.parse_generate({"model": "m", "prompt": "p"})
    assert call is not None
    body = {"choices": [{"index": 0, "text": "all", "finish_reason": "stop"}]}
    line = orjson.loads(oll.fallback(call, Reply(id="r", status="ok", body=body), NOW))
    assert line["response"] == "all" and line["done"] is False


def test_errors_have_ollamas_shape() -> None:
    """{"error": "..."} as a body and as a stream line."""
    err = EdgeError(404, "no such model", extra={"id": "r"})
    assert oll.error_body(err) == {"error": "no such model", "id": "r"}
    assert orjson.loads(oll.stream_error(err)) == {"error": "no such model", "id": "r"}
