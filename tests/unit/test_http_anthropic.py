"""HttpBackendClient speaking Anthropic's Messages API to the real mock backend."""

import pytest

from turnout.backends.http import HttpBackendClient, new_session
from turnout.config import Backend, Secret
from turnout.errors import BackendStatusError
from turnout.testing.mock_backend import MockOptions, start

KEY = "sk-ant-test"


@pytest.fixture
async def mock_url():
    runner, url = await start(MockOptions(port=0, api_key=KEY))
    yield url
    await runner.cleanup()


def anthropic(url):
    return Backend(id="claude", protocol="anthropic", base_url=url, models=["echo"])


async def test_chat_through_the_messages_api(mock_url):
    """An OpenAI chat body goes out as a Messages request and comes back OpenAI-shaped."""
    client = HttpBackendClient(new_session(), {"claude": Secret(KEY)})
    try:
        body = {"messages": [{"role": "system", "content": "be brief"},
                             {"role": "user", "content": "hi there"}]}
        out = await client.call(anthropic(mock_url), kind="chat", model="echo", body=body,
                                timeout_s=5)
    finally:
        await client.close()
    assert out["choices"][0]["message"]["content"] == "echo: hi there"
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"][
        "completion_tokens"]


async def test_the_key_goes_in_x_api_key_and_never_in_errors(mock_url):
    """A wrong key is refused (x-api-key is what the mock checks) and the key is not echoed."""
    client = HttpBackendClient(new_session(), {"claude": Secret("sk-ant-WRONG")})
    try:
        with pytest.raises(BackendStatusError) as info:
            await client.call(anthropic(mock_url), kind="chat", model="echo",
                              body={"messages": [{"role": "user", "content": "x"}]}, timeout_s=5)
    finally:
        await client.close()
    assert info.value.status == 401 and not info.value.retryable
    assert "sk-ant" not in str(info.value) and "sk-ant" not in repr(info.value)


async def test_streaming_from_the_messages_api(mock_url):
    """Anthropic's event stream arrives as OpenAI chunks that add up to the answer."""
    from turnout.backends.streaming import accumulate

    client = HttpBackendClient(new_session(), {"claude": Secret(KEY)})
    try:
        chunks = [c async for c in client.stream(
            anthropic(mock_url), kind="chat", model="echo",
            body={"messages": [{"role": "user", "content": "one two three"}]}, timeout_s=5)]
    finally:
        await client.close()
    assert len(chunks) > 2
    assert accumulate("chat", chunks)["choices"][0]["message"]["content"] == "echo: one two three"
