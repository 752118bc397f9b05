"""A gateway and a worker with a custom ``TURNOUT_REPLY_PREFIX``, on the real broker.

The workers accept only reply topics under their prefix, so a gateway that kept
``turnout.replies.`` had every request rejected. Here the whole path runs with
another prefix: a call is answered, and a client whose ``allowed_routes`` forbid
the route gets the worker's ``route_not_allowed`` as a 403, never a 502. The
worker's ``request_completed`` lines are read from its JSON log.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator

import aiohttp
import pytest

from tests.integration.harness import (
    GatewayProcess,
    MockBackend,
    Worker,
    config_for,
    events,
    unique,
)

PREFIX = "acme.answers."
KEYS = "sk-free=free-client,sk-limited=limited-client"


class Stack:
    def __init__(self, tmp: pathlib.Path) -> None:
        self.backend = MockBackend(tmp)
        self.request_topic = unique("prefix.requests")
        config = _with_route_and_clients(config_for(("mock-openai", "openai", self.backend.url)))
        env = {"TURNOUT_REPLY_PREFIX": PREFIX}
        self.worker = Worker(
            tmp,
            config,
            app_id=unique("prefix-app"),
            request_topic=self.request_topic,
            extra_env=env,
        )
        try:
            self.gateway = GatewayProcess(
                tmp,
                config_path=self.worker.config_path,
                request_topic=self.request_topic,
                gateway_id=unique("gwp"),
                extra_env={**env, "TURNOUT_GATEWAY_KEYS": KEYS},
            )
        except BaseException:
            self.worker.stop()
            self.backend.stop()
            raise

    def stop(self) -> None:
        for p in (self.gateway, self.worker, self.backend):
            p.stop()


def _with_route_and_clients(config: str) -> str:
    """Add a second route, ``other``, and a client allowed only that one."""
    head, tail = config.split("default_route:", 1)
    return (
        head
        + "  other:\n    targets:\n      - {backend: mock-openai, model: echo}\n"
        + "clients:\n  limited-client: {allowed_routes: [other]}\n"
        + "default_route:"
        + tail
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("reply-prefix"))
    yield s
    s.stop()


async def chat(stack: Stack, key: str, text: str) -> tuple[int, dict, str]:
    """(status, body, the request id the gateway published) of one chat call."""
    body = {"model": "default", "messages": [{"role": "user", "content": text}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{stack.gateway.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=aiohttp.ClientTimeout(total=90),
        ) as r:
            return r.status, await r.json(), r.headers.get("X-Request-Id", "")


async def completed_line(stack: Stack, timeout_s: float = 20, **match: object) -> dict:
    """The worker's one request_completed line with these fields (logged after its reply)."""
    for _ in range(int(timeout_s * 10)):
        lines = [
            e
            for e in events(stack.worker, "request_completed")
            if all(e.get(k) == v for k, v in match.items())
        ]
        if lines:
            (line,) = lines
            return line
        await asyncio.sleep(0.1)
    raise AssertionError(f"no request_completed line with {match} in {timeout_s} s")


async def test_a_call_is_answered_through_a_custom_reply_prefix(stack: Stack) -> None:
    """With TURNOUT_REPLY_PREFIX set on both, the worker answers on the gateway's topic."""
    status, body, rid = await chat(stack, "sk-free", "custom prefix")
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "echo: custom prefix"
    line = await completed_line(stack, request_id=rid)
    assert (line["status"], line["code"], line["client_id"]) == ("ok", None, "free-client")
    assert (line["route"], line["backend"], line["attempts"]) == ("default", "mock-openai", 1)


async def test_a_forbidden_route_is_a_403_from_a_real_worker(stack: Stack) -> None:
    """route_not_allowed from the worker reaches the caller as 403 permission_error."""
    status, body, _ = await chat(stack, "sk-limited", "not for you")
    assert status == 403, body
    assert body["error"]["type"] == "permission_error"
    assert body["error"]["code"] == "route_not_allowed"
    assert "allowed routes are: other" in body["error"]["message"]
    line = await completed_line(stack, client_id="limited-client")
    assert (line["status"], line["code"]) == ("error", "route_not_allowed")
    assert line["request_id"].startswith("req-")
    assert (line["route"], line["backend"], line["attempts"]) == (None, None, 0)
    assert (line["dead_lettered"], line["replied"]) == (False, True)


def test_the_worker_rejected_no_reply_topic(stack: Stack) -> None:
    """Not one gateway request was refused for its reply topic."""
    refused = [
        e
        for e in events(stack.worker, "request_completed")
        if e.get("code") == "invalid_reply_topic"
    ]
    assert refused == []
