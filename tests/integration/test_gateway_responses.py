"""The official ``openai`` SDK's Responses API, unmodified, against ``/v1/responses``:
a real gateway, worker, broker and mock backend, served by each backend protocol."""

import json
import time

import openai
import pytest

from tests.integration.clients_stack import PROTOCOLS, ClientsStack

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = ClientsStack(tmp_path_factory.mktemp("gw-responses"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_create_answers_with_output_text(client, protocol):
    """responses.create returns a completed response whose output_text is the answer."""
    out = client.responses.create(
        model=f"m-{protocol}", instructions="be brief", input="hello there"
    )
    assert out.status == "completed" and out.id.startswith("resp_")
    assert out.output_text == "echo: hello there"
    assert out.usage.output_tokens > 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_stream_sends_typed_events_and_a_final_response(client, protocol):
    """responses.stream yields typed events in order and the SDK assembles the response."""
    with client.responses.stream(model=f"m-{protocol}", input="one two three four") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") > 2
    assert final.output_text == "echo: one two three four"


def test_retrieve_by_id_reads_the_status_store(client):
    """A created response can be fetched again by its id."""
    out = client.responses.create(model="m-openai", input="keep me")
    again = client.responses.retrieve(out.id)
    assert again.id == out.id and again.status == "completed"
    assert again.output_text == "echo: keep me"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_nothing_here")


def test_background_is_queued_then_completed(client):
    """background: true answers at once; polling by id gives the completed response."""
    out = client.responses.create(model="m-ollama", input="later please", background=True)
    assert out.status in ("queued", "in_progress", "completed")
    deadline = time.monotonic() + 60
    while out.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.2)
        out = client.responses.retrieve(out.id)
    assert out.status == "completed"
    assert out.output_text == "echo: later please"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("streamed", [False, True])
def test_function_call_round_trip(client, protocol, streamed):
    """A function_call item comes back; its function_call_output is answered with text."""
    kwargs = {"model": f"m-{protocol}", "tools": [WEATHER]}
    if streamed:
        with client.responses.stream(input="Paris", **kwargs) as s:
            first = s.get_final_response()
    else:
        first = client.responses.create(input="Paris", **kwargs)
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"text": "Paris"}
    turn = [
        {"role": "user", "content": "Paris"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]  # fmt: skip
    second = client.responses.create(input=turn, **kwargs)
    assert second.output_text == "tool result: sunny"
