"""The official OpenAI and Ollama Python clients, unchanged, against a live gateway.

One stack per module: a mock backend, a real worker and a ``turnout gateway``
process, all on unique topics of the real broker. Streaming works whether or not
the worker publishes chunks: without them the gateway sends the whole answer as
one chunk, so the assertions are on the assembled text.
"""

from __future__ import annotations

from collections.abc import Iterator

import ollama
import openai
import pytest

from tests.integration.harness import GatewayStack

KEY = "sk-gw-clients"
CLIENT = "sdk-client"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    s = GatewayStack(
        tmp_path_factory.mktemp("gw-clients"),
        gateway_env={"TURNOUT_GATEWAY_KEYS": f"{KEY}={CLIENT}"},
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def oa(stack: GatewayStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def ol(stack: GatewayStack) -> ollama.Client:
    return ollama.Client(host=stack.url, headers={"Authorization": f"Bearer {KEY}"})


def test_openai_sync_chat(oa: openai.OpenAI) -> None:
    """chat.completions.create answers through Kafka with the echo of the message."""
    out = oa.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hello gateway"}]
    )
    assert out.choices[0].message.content == "echo: hello gateway"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.prompt_tokens == 2


def test_openai_completion_and_models(oa: openai.OpenAI) -> None:
    """completions.create and models.list work unchanged."""
    out = oa.completions.create(model="default", prompt="once upon")
    assert out.choices[0].text == "echo: once upon"
    assert {m.id for m in oa.models.list()} >= {"default", "echo", "embed"}


def test_openai_embeddings(oa: openai.OpenAI) -> None:
    """embeddings.create returns one 8-float vector per input, in order."""
    out = oa.embeddings.create(model="embed", input=["alpha", "beta"])
    assert [d.index for d in out.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in out.data)
    assert out.data[0].embedding != out.data[1].embedding


def test_openai_streaming(oa: openai.OpenAI) -> None:
    """stream=True yields chunks that add up to the answer, then the usage chunk."""
    stream = oa.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "stream this please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream this please"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


async def test_openai_async_client(stack: GatewayStack) -> None:
    """AsyncOpenAI: concurrent calls are each answered with their own text."""
    import asyncio

    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=KEY, max_retries=0)
    try:
        outs = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="default", messages=[{"role": "user", "content": f"n{i}"}]
                )
                for i in range(20)
            )
        )
        assert [o.choices[0].message.content for o in outs] == [f"echo: n{i}" for i in range(20)]
        stream = await client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "async stream"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "echo: async stream"
    finally:
        await client.close()


def test_openai_errors_surface_as_sdk_exceptions(stack: GatewayStack, oa: openai.OpenAI) -> None:
    """An unknown model is NotFoundError; a wrong key AuthenticationError."""
    with pytest.raises(openai.NotFoundError, match="gpt-17"):
        oa.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    bad = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="unknown API key"):
        bad.models.list()


def test_ollama_chat_and_generate(ol: ollama.Client) -> None:
    """chat and generate, not streamed."""
    chat = ol.chat(model="default", messages=[{"role": "user", "content": "hi ollama"}])
    assert chat.message.content == "echo: hi ollama" and chat.done
    gen = ol.generate(model="default", prompt="tell me")
    assert gen.response == "echo: tell me" and gen.done_reason == "stop"


def test_ollama_streaming(ol: ollama.Client) -> None:
    """stream=True: NDJSON pieces that add up to the answer, the last one done."""
    parts = list(
        ol.chat(model="default", messages=[{"role": "user", "content": "flow"}], stream=True)
    )
    assert "".join(p.message.content or "" for p in parts) == "echo: flow"
    assert parts[-1].done and parts[-1].eval_count == 2
    gen = list(ol.generate(model="default", prompt="more flow", stream=True))
    assert "".join(p.response or "" for p in gen) == "echo: more flow"


def test_ollama_embed_and_list(ol: ollama.Client) -> None:
    """embed (batch), embeddings (legacy single) and list."""
    out = ol.embed(model="embed", input=["a", "b"])
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 8
    legacy = ol.embeddings(model="embed", prompt="a")
    assert list(legacy.embedding) == list(out.embeddings[0])
    assert {m.model for m in ol.list().models} >= {"default", "embed"}


def test_ollama_errors_surface_as_response_errors(ol: ollama.Client) -> None:
    """An unknown model is a ResponseError with status 404 and turnout's message."""
    with pytest.raises(ollama.ResponseError) as info:
        ol.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404 and "nope" in info.value.error
