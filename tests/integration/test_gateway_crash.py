"""The gateway is SIGKILLed and restarted during 200 async requests; nothing is lost.

Every request the gateway acknowledged (202) must be retrievable afterwards with
its result: its "queued" status was on the status topic before the 202, the
request itself in Kafka, and replies that arrived while the gateway was down are
read on restart from the reply consumer's committed offset.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import GatewayStack

TOTAL = 200


@pytest.fixture
def stack(tmp_path) -> Iterator[GatewayStack]:
    s = GatewayStack(tmp_path, mock_args=("--latency-ms", "300", "--latency-jitter-ms", "300"))
    yield s
    s.stop()


async def submit(http: aiohttp.ClientSession, url: str, i: int) -> tuple[int, str | None]:
    body = {
        "kind": "chat",
        "model": "default",
        "body": {"messages": [{"role": "user", "content": f"crash {i}"}]},
    }
    try:
        async with http.post(f"{url}/v1/requests", json=body) as r:
            if r.status != 202:
                return i, None
            return i, (await r.json())["id"]
    except (aiohttp.ClientError, OSError):
        return i, None  # the gateway died before answering: not acknowledged


async def test_every_acknowledged_request_survives_a_gateway_kill(stack: GatewayStack) -> None:
    """SIGKILL mid-traffic, restart, resubmit what was not acknowledged: all 200 are done."""
    accepted: dict[int, str] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        first = [asyncio.create_task(submit(http, stack.url, i)) for i in range(TOTAL // 2)]
        for done in asyncio.as_completed(first):
            i, rid = await done
            if rid is not None:
                accepted[i] = rid
            if len(accepted) == TOTAL // 4:
                stack.gateway.kill(signal.SIGKILL)  # mid-submission, with replies in flight
        for task in first:
            i, rid = await task
            if rid is not None:
                accepted.setdefault(i, rid)
        assert TOTAL // 4 <= len(accepted) < TOTAL // 2 + 1
        stack.gateway.start()
        rest = await asyncio.gather(
            *(submit(http, stack.url, i) for i in range(TOTAL) if i not in accepted)
        )
        for i, rid in rest:
            assert rid is not None, f"request {i} refused after the restart"
            accepted[i] = rid
        # A second kill while those are being answered: replies land while the gateway is down.
        await asyncio.sleep(0.3)
        stack.gateway.kill(signal.SIGKILL)
        await asyncio.sleep(1.0)
        stack.gateway.start()

        views: dict[int, dict[str, Any]] = {}
        deadline = asyncio.get_running_loop().time() + 90
        while len(views) < TOTAL and asyncio.get_running_loop().time() < deadline:
            for i, rid in accepted.items():
                if i in views:
                    continue
                async with http.get(f"{stack.url}/v1/requests/{rid}") as r:
                    assert r.status == 200, f"request {i} ({rid}): {r.status} {await r.text()}"
                    view = await r.json()
                if view["status"] in ("done", "failed"):
                    views[i] = view
            await asyncio.sleep(0.2)
    missing = sorted(set(accepted) - set(views))
    assert not missing, f"{len(missing)} requests never completed, e.g. {missing[:5]}"
    for i, view in views.items():
        assert view["status"] == "done", view
        assert view["result"]["choices"][0]["message"]["content"] == f"echo: crash {i}"
