"""Tool calls through the gateway: every client API (OpenAI chat, Ollama chat; Anthropic
Messages and Responses have their own files) x every backend protocol, streamed and not,
with the official SDKs against a real gateway, worker, broker and a mock that calls tools.

Together with test_gateway_messages.py and test_gateway_responses.py this is the
client API x backend protocol matrix of issue 17."""

import json

import ollama
import openai
import pytest

from tests.integration.clients_stack import PROTOCOLS, ClientsStack

FUNCTION = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = ClientsStack(tmp_path_factory.mktemp("gw-tools"))
    yield s
    s.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("streamed", [False, True])
def test_openai_chat_tool_call_round_trip(stack, protocol, streamed):
    """tool_calls come back (as deltas when streamed) and a tool turn is answered."""
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0, timeout=60)
    ask = [{"role": "user", "content": "Paris"}]
    kwargs = {"model": f"m-{protocol}", "tools": [{"type": "function", "function": FUNCTION}]}
    if streamed:
        pieces: dict[int, dict] = {}
        finish = None
        for chunk in client.chat.completions.create(messages=ask, stream=True, **kwargs):
            for c in chunk.choices:
                finish = c.finish_reason or finish
                for d in c.delta.tool_calls or []:
                    slot = pieces.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                    slot["id"] = d.id or slot["id"]
                    slot["name"] = (d.function and d.function.name) or slot["name"]
                    slot["arguments"] += (d.function and d.function.arguments) or ""
        (call,) = pieces.values()
        call_id, name, arguments = call["id"], call["name"], call["arguments"]
    else:
        out = client.chat.completions.create(messages=ask, **kwargs)
        finish = out.choices[0].finish_reason
        (tc,) = out.choices[0].message.tool_calls
        call_id, name, arguments = tc.id, tc.function.name, tc.function.arguments
    assert finish == "tool_calls"
    assert name == "get_weather" and json.loads(arguments) == {"text": "Paris"} and call_id
    turn = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "sunny"},
    ]  # fmt: skip
    second = client.chat.completions.create(messages=turn, **kwargs)
    assert second.choices[0].message.content == "tool result: sunny"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("streamed", [False, True])
def test_ollama_chat_tool_call_round_trip(stack, protocol, streamed):
    """The ollama SDK gets tool_calls with object arguments and its tool turn is answered."""
    client = ollama.Client(host=stack.url, timeout=60)
    ask = [{"role": "user", "content": "Paris"}]
    tools = [{"type": "function", "function": FUNCTION}]
    if streamed:
        calls = []
        for part in client.chat(model=f"m-{protocol}", messages=ask, tools=tools, stream=True):
            calls.extend(part.message.tool_calls or [])
    else:
        calls = client.chat(model=f"m-{protocol}", messages=ask, tools=tools).message.tool_calls
    (call,) = calls
    assert call.function.name == "get_weather"
    assert dict(call.function.arguments) == {"text": "Paris"}
    turn = [
        *ask,
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"text": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]  # fmt: skip
    second = client.chat(model=f"m-{protocol}", messages=turn, tools=tools)
    assert second.message.content == "tool result: sunny"


@pytest.mark.parametrize(
    ("protocol", "tool_choice", "lacks"),
    [
        ("ollama", "required", "a forced tool_choice"),
        ("anthropic", None, "response_format json_schema"),
    ],
)
def test_what_a_backend_lacks_is_a_clear_400(stack, protocol, tool_choice, lacks):
    """A forced tool on Ollama, or JSON-schema output on Anthropic: a 400 naming it."""
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0, timeout=60)
    extra: dict = {"tools": [{"type": "function", "function": FUNCTION}]}
    if tool_choice:
        extra["tool_choice"] = tool_choice
    else:
        extra["response_format"] = {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}
        }  # fmt: skip
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=f"m-{protocol}", messages=[{"role": "user", "content": "hi"}], **extra
        )
    assert lacks in info.value.message and f"mock-{protocol}" in info.value.message


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
def test_json_schema_output_reaches_backends_that_support_it(stack, protocol):
    """response_format json_schema is accepted by openai and ollama backends (as format)."""
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0, timeout=60)
    out = client.chat.completions.create(
        model=f"m-{protocol}",
        messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "x", "schema": {"type": "object"}}},
    )  # fmt: skip
    assert out.choices[0].message.content == "echo: hi"
