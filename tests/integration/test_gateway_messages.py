"""The official ``anthropic`` SDK, unmodified, against ``POST /v1/messages``: a real
gateway, worker, broker and mock backend, served by each backend protocol."""

import anthropic
import pytest

from tests.integration.clients_stack import PROTOCOLS, ClientsStack

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = ClientsStack(tmp_path_factory.mktemp("gw-messages"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(stack):
    return anthropic.Anthropic(base_url=stack.url, api_key="unused", max_retries=0, timeout=60)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_message_with_a_system_prompt_is_answered(client, protocol):
    """messages.create returns an Anthropic message whatever protocol the backend speaks."""
    out = client.messages.create(
        model=f"m-{protocol}",
        max_tokens=64,
        system="be brief",
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert out.type == "message" and out.role == "assistant"
    assert [b.type for b in out.content] == ["text"]
    assert out.content[0].text == "echo: hello there"
    assert out.stop_reason == "end_turn"
    assert out.usage.output_tokens > 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_stream_arrives_as_anthropic_events_in_order(client, protocol):
    """The event stream has Anthropic's order and the SDK assembles the whole message."""
    kinds = []
    with client.messages.stream(
        model=f"m-{protocol}",
        max_tokens=64,
        messages=[{"role": "user", "content": "one two three four"}],
    ) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    raw = [k for k in kinds if k not in ("text",)]
    assert raw[:2] == ["message_start", "content_block_start"]
    assert raw[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert raw.count("content_block_delta") > 2
    assert final.content[0].text == "echo: one two three four"
    assert final.stop_reason == "end_turn"


def test_x_api_key_is_the_key(tmp_path_factory):
    """With keys on, x-api-key authenticates and a wrong key gets Anthropic's 401 error."""
    s = ClientsStack(
        tmp_path_factory.mktemp("gw-messages-keys"),
        gateway_env={"TURNOUT_GATEWAY_KEYS": "sk-good=team-a"},
    )
    try:
        good = anthropic.Anthropic(base_url=s.url, api_key="sk-good", max_retries=0, timeout=60)
        out = good.messages.create(
            model="m-openai", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
        assert out.content[0].text == "echo: hi"
        bad = anthropic.Anthropic(base_url=s.url, api_key="sk-bad", max_retries=0, timeout=60)
        with pytest.raises(anthropic.AuthenticationError) as info:
            bad.messages.create(
                model="m-openai", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
            )
        assert info.value.body["error"]["type"] == "authentication_error"
    finally:
        s.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("streamed", [False, True])
def test_tool_use_round_trip(client, protocol, streamed):
    """A tool_use block comes back, and the tool_result turn is answered with text."""
    ask = [{"role": "user", "content": "Paris"}]
    kwargs = {"model": f"m-{protocol}", "max_tokens": 64, "tools": [WEATHER]}
    if streamed:
        with client.messages.stream(messages=ask, **kwargs) as s:
            first = s.get_final_message()
    else:
        first = client.messages.create(messages=ask, **kwargs)
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert (use.name, use.input) == ("get_weather", {"text": "Paris"})
    turn = [
        *ask,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user",
         "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
    ]  # fmt: skip
    second = client.messages.create(messages=turn, **kwargs)
    assert second.content[0].text == "tool result: sunny"
    assert second.stop_reason == "end_turn"


def test_count_tokens_answers_the_sdk(client):
    """messages.count_tokens returns an estimate through the gateway."""
    out = client.messages.count_tokens(
        model="m-openai", messages=[{"role": "user", "content": "hello " * 50}]
    )
    assert out.input_tokens > 50


def test_models_list_in_anthropics_shape(client):
    """models.list from the anthropic SDK gets Anthropic's page of models."""
    ids = [m.id for m in client.models.list()]
    assert {"default", "m-openai", "m-ollama", "m-anthropic"} <= set(ids)
