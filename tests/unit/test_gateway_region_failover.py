"""A gateway that cannot reach its Kafka names the nearest other region's router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka.errors import KafkaConnectionError

from tests.unit.test_gateway_http import AUTH, CHAT, CONFIG, FakeKafka, answer
from turnout.gateway import GatewaySettings, load_keys
from turnout.gateway.app import Gateway
from turnout.settings import Settings

PEERS = "ap=http://127.0.0.1:35003@150,eu=http://127.0.0.1:35002@80,us=http://127.0.0.1:35001@1"


class DeadKafka(FakeKafka):
    """Every publish fails as aiokafka fails when the cluster is gone; never ready."""

    async def ready(self) -> bool:
        return False

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9)]")


async def _serve(settings: Settings) -> AsyncIterator[str]:
    gw = GatewaySettings(gateway_id="t-region", timeout_s=1.0)
    kafka = DeadKafka(gw, lambda req: [answer(req)])
    kafka._producer.send_and_wait = kafka.publish  # type: ignore[method-assign]
    runner = web.AppRunner(Gateway(settings, gw, CONFIG, load_keys("key-a=client-a"), kafka).app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await kafka.stop()
    await runner.cleanup()


@pytest.fixture
async def us_gateway() -> AsyncIterator[str]:
    async for url in _serve(Settings.from_env({}, region="us", region_peers=PEERS)):
        yield url


@pytest.fixture
async def lone_gateway() -> AsyncIterator[str]:
    async for url in _serve(Settings.from_env({})):
        yield url


async def test_a_chat_gets_503_naming_the_nearest_other_region(us_gateway: str) -> None:
    """503, Retry-After, and eu (80 ms) rather than ap (150 ms) or itself (us)."""
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{us_gateway}/v1/chat/completions", json=CHAT, headers=AUTH)
        body = await r.json()
    assert r.status == 503
    assert r.headers["Retry-After"] == "2"
    assert r.headers["X-Turnout-Next-Region"] == "eu"
    assert r.headers["X-Turnout-Next-Router"] == "http://127.0.0.1:35002"
    assert "use region eu at http://127.0.0.1:35002" in body["error"]["message"]


async def test_readyz_says_not_ready_and_where_to_go(us_gateway: str) -> None:
    """A load balancer's health check sees 503 and the next router."""
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"{us_gateway}/readyz")
        body = await r.json()
    assert r.status == 503
    assert body["next_region"] == "eu" and body["next_router"] == "http://127.0.0.1:35002"


async def test_without_peers_the_503_names_no_region(lone_gateway: str) -> None:
    """Single-region: the old 503, no failover headers."""
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{lone_gateway}/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status == 503
    assert "X-Turnout-Next-Region" not in r.headers


def test_a_bad_peer_list_is_refused_at_start() -> None:
    """TURNOUT_REGION_PEERS is validated with the reason."""
    with pytest.raises(ValueError, match="TURNOUT_REGION_PEERS: region entry 'eu'"):
        Settings.from_env({"TURNOUT_REGION_PEERS": "eu"})
