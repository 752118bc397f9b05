"""Asynchronous requests, polling, webhooks and sync timeouts against a live gateway."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.integration.harness import GatewayStack, free_port

SECRET = "whsec-integration"
KEYS = {"key-a": "client-a", "key-b": "client-b"}
CHAT = {"messages": [{"role": "user", "content": "later please"}]}
HOOK_PORT = free_port()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    s = GatewayStack(
        tmp_path_factory.mktemp("gw-async"),
        gateway_env={
            "TURNOUT_GATEWAY_KEYS": ",".join(f"{k}={c}" for k, c in KEYS.items()),
            "TURNOUT_WEBHOOK_SECRET": SECRET,
            "TURNOUT_WEBHOOK_ALLOW": f"http://127.0.0.1:{HOOK_PORT}/hooks/",
            "TURNOUT_WEBHOOK_BACKOFF_S": "0.2",
        },
    )
    yield s
    s.stop()


def auth(key: str = "key-a") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def submit(http: aiohttp.ClientSession, url: str, **fields: Any) -> dict[str, Any]:
    body = {"kind": "chat", "model": "default", "body": CHAT, **fields}
    async with http.post(f"{url}/v1/requests", json=body, headers=auth()) as r:
        assert r.status == 202, await r.text()
        out: dict[str, Any] = await r.json()
        assert r.headers["Location"] == out["status_url"]
        return out


async def poll_done(http: aiohttp.ClientSession, status_url: str, timeout_s: float = 60) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        async with http.get(status_url, headers=auth()) as r:
            assert r.status == 200
            view = await r.json()
            if view["status"] in ("done", "failed"):
                assert "Retry-After" not in r.headers
                return view
            assert r.headers["Retry-After"] == "1"
        assert asyncio.get_running_loop().time() < deadline, f"still {view['status']}"
        await asyncio.sleep(0.1)


async def test_an_async_request_is_accepted_then_polled_to_done(
    stack: GatewayStack, http: aiohttp.ClientSession
) -> None:
    """202 with id and status URL; the poll shows the OpenAI result and where it ran."""
    accepted = await submit(http, stack.url, priority=7, metadata={"team": "x"})
    view = await poll_done(http, accepted["status_url"])
    assert view["status"] == "done" and view["id"] == accepted["id"]
    assert view["result"]["choices"][0]["message"]["content"] == "echo: later please"
    assert view["backend"] in ("mock-openai", "mock-ollama") and view["attempts"] == 1


async def test_a_failed_async_request_reports_the_error(
    stack: GatewayStack, http: aiohttp.ClientSession
) -> None:
    """An unknown model ends as failed, with turnout's error."""
    accepted = await submit(http, stack.url, model="gpt-17")
    view = await poll_done(http, accepted["status_url"])
    assert view["status"] == "failed" and view["error"]["code"] == "unknown_model"


async def test_ids_are_private_to_their_client(
    stack: GatewayStack, http: aiohttp.ClientSession
) -> None:
    """Another client's id is 403, an unknown id 404, no key 401."""
    accepted = await submit(http, stack.url)
    async with http.get(accepted["status_url"], headers=auth("key-b")) as r:
        assert r.status == 403
        assert "another client" in (await r.json())["error"]["message"]
    async with http.get(f"{stack.url}/v1/requests/req-unknown", headers=auth()) as r:
        assert r.status == 404
    async with http.get(accepted["status_url"]) as r:
        assert r.status == 401


async def test_a_webhook_is_delivered_signed_to_an_allowlisted_receiver(
    stack: GatewayStack, http: aiohttp.ClientSession
) -> None:
    """The receiver gets the final status once, signed with the shared secret."""
    got: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()
    failures = [503]  # the first delivery fails: the gateway retries

    async def hook(request: web.Request) -> web.Response:
        got.put_nowait((dict(request.headers), await request.read()))
        return web.Response(status=failures.pop() if failures else 204)

    app = web.Application()
    app.router.add_post("/hooks/done", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", HOOK_PORT).start()
    try:
        accepted = await submit(
            http, stack.url, webhook_url=f"http://127.0.0.1:{HOOK_PORT}/hooks/done"
        )
        first = await asyncio.wait_for(got.get(), 30)
        headers, body = await asyncio.wait_for(got.get(), 30)
        assert first[1] == body
        digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Turnout-Signature"] == f"sha256={digest}"
        assert headers["X-Turnout-Request-Id"] == accepted["id"]
        view = await poll_done(http, accepted["status_url"])
        for _ in range(50):
            if view.get("webhook") == "delivered":
                break
            await asyncio.sleep(0.1)
            async with http.get(accepted["status_url"], headers=auth()) as r:
                view = await r.json()
        assert view["webhook"] == "delivered"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/"])
async def test_a_webhook_to_an_internal_address_is_refused(
    stack: GatewayStack, http: aiohttp.ClientSession, target: str
) -> None:
    """400 with a message naming the allowlist; the request is not accepted."""
    body = {"kind": "chat", "model": "default", "body": CHAT, "webhook_url": target}
    async with http.post(f"{stack.url}/v1/requests", json=body, headers=auth()) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["code"] == "webhook_refused" and error["param"] == "webhook_url"
    assert "not allowlisted" in error["message"] and "TURNOUT_WEBHOOK_ALLOW" in error["message"]


async def test_a_sync_call_that_times_out_can_be_polled_later(
    stack: GatewayStack, http: aiohttp.ClientSession
) -> None:
    """504 naming the id and status URL; the request is still answered, and poll shows it."""
    stack.backend.configure(latency_ms=2500)
    try:
        body = {"model": "default", "messages": [{"role": "user", "content": "slow one"}]}
        async with http.post(
            f"{stack.url}/v1/chat/completions?timeout=1", json=body, headers=auth()
        ) as r:
            assert r.status == 504
            error = (await r.json())["error"]
        assert error["code"] == "gateway_timeout" and error["id"] in error["status_url"]
        view = await poll_done(http, error["status_url"])
        assert view["result"]["choices"][0]["message"]["content"] == "echo: slow one"
    finally:
        stack.backend.configure(latency_ms=0)
