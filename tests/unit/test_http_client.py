"""HttpBackendClient against a real localhost mock backend: answers, and each failure translated."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from turnout.backends.http import HttpBackendClient, new_session
from turnout.config import Backend, Secret
from turnout.errors import (
    BackendError,
    BackendProtocolError,
    BackendStatusError,
    BackendTimeout,
    BackendUnavailable,
)
from turnout.testing.fake import vector
from turnout.testing.mock_backend import MockOptions, build_app

KEY = "sk-test-0123456789abcdef"
CHAT = {"model": "alias", "messages": [{"role": "user", "content": "hello there"}]}


class Mock:
    """A running mock backend: its base URL, and runtime reconfiguration through /admin/config."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self._session = session

    async def configure(self, **options: Any) -> None:
        async with self._session.post(f"{self.url}/admin/config", json=options) as response:
            assert response.status == 200, await response.text()

    async def stats(self) -> dict[str, Any]:
        async with self._session.get(f"{self.url}/stats") as response:
            result: dict[str, Any] = await response.json()
            return result

    def backend(self, protocol: Any = "openai", **fields: Any) -> Backend:
        fields.setdefault("base_url", self.url)
        return Backend(id="local", protocol=protocol, models=["echo"], **fields)


@pytest.fixture
async def mock() -> AsyncIterator[Mock]:
    runner = web.AppRunner(build_app(MockOptions(seed=1)), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        yield Mock(f"http://{host}:{port}", session)
    await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[HttpBackendClient]:
    client = HttpBackendClient(new_session(), {"local": Secret(KEY)})
    yield client
    await client.close()


async def call(
    client: HttpBackendClient,
    backend: Backend,
    kind: Any = "chat",
    body: dict[str, Any] = CHAT,
    model: str = "echo",
    timeout_s: float = 5.0,
) -> dict[str, Any]:
    return await client.call(backend, kind=kind, model=model, body=body, timeout_s=timeout_s)


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
async def test_chat_returns_the_echo(mock: Mock, client: HttpBackendClient, protocol: str) -> None:
    """A chat call answers in OpenAI's shape with the echo of the last user message."""
    out = await call(client, mock.backend(protocol))
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "echo: hello there"}
    assert out["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
async def test_completion_returns_the_echo(
    mock: Mock, client: HttpBackendClient, protocol: str
) -> None:
    """A completion call answers a text_completion echoing the prompt."""
    out = await call(client, mock.backend(protocol), "completion", {"prompt": "once upon"})
    assert out["object"] == "text_completion"
    assert out["choices"][0]["text"] == "echo: once upon"


@pytest.mark.parametrize(
    ("protocol", "embed_endpoint", "route"),
    [
        ("openai", "embed", "/v1/embeddings"),
        ("ollama", "embed", "/api/embed"),
        ("ollama", "embeddings", "/api/embeddings"),
    ],
)
async def test_embeddings(
    mock: Mock, client: HttpBackendClient, protocol: str, embed_endpoint: Any, route: str
) -> None:
    """Embeddings come back as OpenAI's list, one vector per input, through each endpoint."""
    backend = mock.backend(protocol, embed_endpoint=embed_endpoint)
    out = await call(client, backend, "embeddings", {"input": ["a", "b"]})
    assert [d["embedding"] for d in out["data"]] == [vector("a"), vector("b")]
    assert [d["index"] for d in out["data"]] == [0, 1]
    calls = 2 if embed_endpoint == "embeddings" else 1  # the older endpoint embeds one at a time
    assert (await mock.stats())["by_route"] == {route: calls}


async def test_base_url_may_end_in_v1(mock: Mock, client: HttpBackendClient) -> None:
    """An OpenAI base_url written with /v1 reaches the same paths."""
    backend = Backend(id="local", protocol="openai", base_url=mock.url + "/v1/", models=["echo"])
    assert (await call(client, backend))["choices"][0]["message"]["content"] == "echo: hello there"


async def test_sends_the_api_key_as_a_bearer_header(mock: Mock, client: HttpBackendClient) -> None:
    """With a key for the backend, the call carries Authorization: Bearer <key>."""
    await mock.configure(api_key=KEY)
    assert (await call(client, mock.backend()))["object"] == "chat.completion"


async def test_no_key_no_header(mock: Mock) -> None:
    """Without a key for the backend, a backend that requires one answers 401, not retryable."""
    await mock.configure(api_key=KEY)
    client = HttpBackendClient(new_session(), {"other": Secret(KEY)})
    try:
        with pytest.raises(BackendStatusError) as caught:
            await call(client, mock.backend())
    finally:
        await client.close()
    assert (caught.value.status, caught.value.retryable) == (401, False)


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
async def test_server_error_is_retryable(
    mock: Mock, client: HttpBackendClient, protocol: str
) -> None:
    """A 500 raises a retryable BackendStatusError."""
    await mock.configure(error_rate=1.0, status=500)
    with pytest.raises(BackendStatusError) as caught:
        await call(client, mock.backend(protocol))
    assert (caught.value.status, caught.value.retryable, caught.value.backend) == (
        500,
        True,
        "local",
    )


async def test_bad_request_is_not_retryable(mock: Mock, client: HttpBackendClient) -> None:
    """A 400 raises a BackendStatusError that is not retryable."""
    await mock.configure(error_rate=1.0, status=400)
    with pytest.raises(BackendStatusError) as caught:
        await call(client, mock.backend())
    assert (caught.value.status, caught.value.retryable) == (400, False)


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
async def test_unknown_model_is_not_retryable(
    mock: Mock, client: HttpBackendClient, protocol: str
) -> None:
    """A model the backend does not serve raises a 404 BackendStatusError, not retryable."""
    with pytest.raises(BackendStatusError) as caught:
        await call(client, mock.backend(protocol), model="nope")
    assert (caught.value.status, caught.value.retryable) == (404, False)


async def test_rate_limit_is_retryable_after_retry_after(
    mock: Mock, client: HttpBackendClient
) -> None:
    """A 429 with Retry-After: 1 raises a retryable error with retry_after_ms 1000."""
    await mock.configure(error_rate=1.0, status=429)
    with pytest.raises(BackendStatusError) as caught:
        await call(client, mock.backend())
    assert (caught.value.status, caught.value.retryable) == (429, True)
    assert caught.value.retry_after_ms == 1000


async def test_hang_times_out_within_the_timeout(mock: Mock, client: HttpBackendClient) -> None:
    """A backend that never answers raises BackendTimeout once timeout_s has passed."""
    await mock.configure(hang_rate=1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BackendTimeout):
        await call(client, mock.backend(), timeout_s=0.2)
    assert 0.2 <= loop.time() - started < 1.0


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
async def test_malformed_body_is_a_protocol_error(
    mock: Mock, client: HttpBackendClient, protocol: str
) -> None:
    """A 200 whose body is not valid JSON raises BackendProtocolError."""
    await mock.configure(malformed_rate=1.0)
    with pytest.raises(BackendProtocolError, match="answered 200 but the body is not JSON"):
        await call(client, mock.backend(protocol))


async def test_closed_port_is_unavailable(client: HttpBackendClient) -> None:
    """Nothing listening on the port raises BackendUnavailable."""
    backend = Backend(
        id="local", protocol="openai", base_url=f"http://127.0.0.1:{closed_port()}", models=["m"]
    )
    with pytest.raises(BackendUnavailable, match="could not be reached"):
        await call(client, backend)


async def test_many_calls_are_in_flight_at_once(mock: Mock, client: HttpBackendClient) -> None:
    """The session has no connection limit: 300 slow calls are all in flight together."""
    await mock.configure(latency_ms=300)
    await asyncio.gather(*(call(client, mock.backend()) for _ in range(300)))
    assert (await mock.stats())["max_in_flight"] == 300


async def test_the_mock_counts_its_most_calls_at_once_per_path(
    mock: Mock, client: HttpBackendClient
) -> None:
    """Calls one after another peak at 1 on their path, whatever else runs beside them."""
    await mock.configure(latency_ms=20)
    for _ in range(3):
        await call(client, mock.backend())
    stats = await mock.stats()
    assert stats["max_in_flight_by_route"]["/v1/chat/completions"] == 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


FAILURES: dict[str, tuple[dict[str, Any], float, type[BackendError]]] = {
    "server-error": ({"error_rate": 1.0, "status": 503}, 5.0, BackendStatusError),
    "rate-limited": ({"error_rate": 1.0, "status": 429}, 5.0, BackendStatusError),
    "wrong-key": ({"api_key": "sk-another-key"}, 5.0, BackendStatusError),
    "timeout": ({"hang_rate": 1.0}, 0.2, BackendTimeout),
    "malformed": ({"malformed_rate": 1.0}, 5.0, BackendProtocolError),
    "unknown-model": ({"models": ["other"]}, 5.0, BackendStatusError),
}


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
@pytest.mark.parametrize("failure", list(FAILURES))
async def test_errors_never_show_the_key_or_url_secrets(
    mock: Mock, client: HttpBackendClient, failure: str, protocol: str
) -> None:
    """No failure puts the API key, the base URL's query string or the prompt in str or repr."""
    options, timeout_s, expected = FAILURES[failure]
    await mock.configure(**options)
    backend = mock.backend(protocol, base_url=mock.url + "/?token=url-secret")
    body = {"messages": [{"role": "user", "content": "private prompt"}]}
    with pytest.raises(expected) as caught:
        await call(client, backend, body=body, timeout_s=timeout_s)
    for text in (str(caught.value), repr(caught.value)):
        assert KEY not in text
        assert "url-secret" not in text
        assert "private prompt" not in text
        assert "'local'" in text


async def test_unavailable_error_never_shows_url_credentials(client: HttpBackendClient) -> None:
    """A refused connection names the backend, not its host, user, password or query."""
    url = f"http://user:url-password@127.0.0.1:{closed_port()}/?token=url-secret"
    backend = Backend(id="local", protocol="ollama", base_url=url, models=["m"])
    keyless = HttpBackendClient(new_session(), {})
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await call(keyless, backend)
    finally:
        await keyless.close()
    for text in (str(caught.value), repr(caught.value)):
        assert "url-password" not in text
        assert "url-secret" not in text
        assert "127.0.0.1" not in text


# -- first-byte and stall timeouts ------------------------------------------------------

LONG = {"model": "alias", "messages": [{"role": "user", "content": "one two three four five six"}]}


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
async def test_a_stream_that_stalls_after_three_chunks_is_cut(
    mock: Mock, client: HttpBackendClient, protocol: str
) -> None:
    """Three chunks arrive, then nothing: BackendTimeout after the stall limit, not the total."""
    await mock.configure(stall_after_chunks=3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    got = []
    with pytest.raises(BackendTimeout) as caught:
        async for chunk in client.stream(
            mock.backend(protocol), kind="chat", model="echo", body=LONG, timeout_s=30,
            stall_s=0.3,
        ):  # fmt: skip
            got.append(chunk)
    assert 0.3 <= loop.time() - started < 2.0
    assert len(got) == 3
    assert "stalled mid-stream" in caught.value.message


async def test_a_stream_whose_pause_is_shorter_than_the_stall_limit_completes(
    mock: Mock, client: HttpBackendClient
) -> None:
    """A pause shorter than stall_s is not a stall."""
    await mock.configure(stall_after_chunks=3, stall_ms=100)
    chunks = [
        c
        async for c in client.stream(
            mock.backend(), kind="chat", model="echo", body=LONG, timeout_s=30, stall_s=1.0
        )
    ]
    assert len(chunks) > 3


@pytest.mark.parametrize("streaming", [False, True])
async def test_no_first_byte_within_the_limit_is_a_timeout(
    mock: Mock, client: HttpBackendClient, streaming: bool
) -> None:
    """A backend that accepts and says nothing is cut at first_byte_s, long before the total."""
    await mock.configure(hang_rate=1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BackendTimeout) as caught:
        if streaming:
            async for _ in client.stream(
                mock.backend(), kind="chat", model="echo", body=CHAT, timeout_s=30,
                first_byte_s=0.2,
            ):  # fmt: skip
                pass
        else:
            await client.call(
                mock.backend(), kind="chat", model="echo", body=CHAT, timeout_s=30,
                first_byte_s=0.2,
            )  # fmt: skip
    assert 0.2 <= loop.time() - started < 1.5
    assert "did not start answering" in caught.value.message
