"""An OpenAI client served by an Anthropic-protocol backend, through the gateway and Kafka."""

import openai
import pytest

from tests.integration.harness import GatewayStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = GatewayStack(tmp_path_factory.mktemp("gw-anthropic"), protocols=("anthropic",))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_an_openai_chat_is_answered_by_an_anthropic_backend(client, stack):
    """The OpenAI SDK gets an OpenAI completion from a backend speaking the Messages API."""
    out = client.chat.completions.create(
        model="default",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
    )
    assert out.choices[0].message.content == "echo: hello"
    assert out.choices[0].finish_reason == "stop"
    assert stack.backend.stats()["by_route"].get("/v1/messages", 0) >= 1


def test_an_openai_stream_is_relayed_from_anthropic_events(client, stack):
    """Anthropic's event stream reaches the OpenAI SDK as ordered chunks through Kafka."""
    stream = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "one two three four"}],
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 2
    assert "".join(pieces) == "echo: one two three four"
