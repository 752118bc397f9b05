"""Webhooks: the allowlist and SSRF guard (pure, no DNS), and signed delivery to a real
localhost receiver with retries."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from turnout.config import Secret
from turnout.gateway.webhooks import Allowlist, WebhookRefused, WebhookSender, is_internal, sign

SECRET = Secret("whsec-test")


@pytest.mark.parametrize(
    ("address", "internal"),
    [
        ("127.0.0.1", True),
        ("10.0.0.1", True),
        ("172.16.5.4", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("::1", True),
        ("fe80::1", True),
        ("fd00::1", True),
        ("::ffff:10.0.0.1", True),
        ("not-an-ip", True),
        ("93.184.216.34", False),
        ("2606:4700::1111", False),
    ],
)
def test_internal_addresses(address: str, internal: bool) -> None:
    """Loopback, private, link-local, shared, multicast and mapped private are internal."""
    assert is_internal(address) is internal


async def never(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolved {host}: a refused URL must not reach DNS")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "not allowlisted"),
        ("http://10.0.0.1/", "not allowlisted"),
        ("https://hooks.example.com.evil.net/x", "not allowlisted"),
        ("https://hooks.example.com:8443/x", "not allowlisted"),
        ("ftp://hooks.example.com/x", "http:// or https://"),
        ("https://user:pw@hooks.example.com/x", "user info"),
        ("https:///nohost", "http:// or https://"),
        ("https://hooks.example.com/" + "x" * 2048, "2048"),
    ],
)
async def test_urls_outside_the_allowlist_are_refused_without_dns(url: str, reason: str) -> None:
    """The prefix check comes first and needs no network."""
    allow = Allowlist(["https://hooks.example.com", "http://127.0.0.1:9999/"])
    with pytest.raises(WebhookRefused, match=reason):
        await allow.check(url, resolve=never)


async def test_an_empty_allowlist_refuses_every_webhook() -> None:
    """No TURNOUT_WEBHOOK_ALLOW: webhooks are disabled, and the message says so."""
    with pytest.raises(WebhookRefused, match="TURNOUT_WEBHOOK_ALLOW"):
        await Allowlist([]).check("https://hooks.example.com/", resolve=never)


async def test_an_allowlisted_name_that_resolves_inside_is_refused() -> None:
    """DNS pointing an allowed name at a private address does not open the inside."""

    async def private(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.7"]

    allow = Allowlist(["https://hooks.example.com/"])
    with pytest.raises(WebhookRefused, match=r"internal address \(10\.0\.0\.7\)"):
        await allow.check("https://hooks.example.com/in", resolve=private)


async def test_an_allowlisted_name_that_resolves_outside_is_allowed() -> None:
    """A public address behind an allowed prefix passes."""

    async def public(host: str, port: int) -> list[str]:
        assert (host, port) == ("hooks.example.com", 443)
        return ["93.184.216.34"]

    await Allowlist(["https://hooks.example.com"]).check("https://hooks.example.com?x=1", public)


async def test_an_internal_address_named_literally_is_allowed() -> None:
    """An entry naming 127.0.0.1 explicitly allows that local receiver, without DNS."""
    await Allowlist(["http://127.0.0.1:9999/"]).check("http://127.0.0.1:9999/hook", never)


def test_the_signature_is_hmac_sha256_of_the_body() -> None:
    """sha256=<hex> of HMAC(secret, exact body bytes)."""
    body = b'{"id":"r1"}'
    expected = hmac.new(b"whsec-test", body, hashlib.sha256).hexdigest()
    assert sign(SECRET, body) == f"sha256={expected}"


class Receiver:
    """A localhost webhook receiver answering a scripted list of statuses."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.calls: list[dict[str, Any]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append({"headers": dict(request.headers), "body": await request.read()})
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver([])
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    r.url = f"http://{host}:{port}/hook"
    yield r
    await runner.cleanup()


def sender(receiver: Receiver, attempts: int = 4) -> WebhookSender:
    prefix = receiver.url.rsplit("/", 1)[0] + "/"
    return WebhookSender(Allowlist([prefix]), SECRET, attempts=attempts, backoff_s=0.01)


async def test_delivery_is_signed_and_retried_until_it_succeeds(receiver: Receiver) -> None:
    """Two 500s then a 200: three signed attempts, numbered."""
    receiver.statuses = [500, 503, 200]
    s = sender(receiver)
    try:
        assert await s.deliver(receiver.url, b'{"id":"r1"}', request_id="r1")
    finally:
        await s.close()
    assert len(receiver.calls) == 3
    headers = receiver.calls[-1]["headers"]
    assert headers["X-Turnout-Signature"] == sign(SECRET, b'{"id":"r1"}')
    assert headers["X-Turnout-Request-Id"] == "r1"
    assert [c["headers"]["X-Turnout-Delivery-Attempt"] for c in receiver.calls] == ["1", "2", "3"]


async def test_delivery_gives_up_after_the_attempts(receiver: Receiver) -> None:
    """Always 500: exactly `attempts` tries, then False."""
    receiver.statuses = [500] * 10
    s = sender(receiver, attempts=3)
    try:
        assert not await s.deliver(receiver.url, b"{}", request_id="r")
    finally:
        await s.close()
    assert len(receiver.calls) == 3


async def test_a_client_error_is_not_retried(receiver: Receiver) -> None:
    """A 400 means the receiver refuses this body: one try."""
    receiver.statuses = [400]
    s = sender(receiver)
    try:
        assert not await s.deliver(receiver.url, b"{}", request_id="r")
    finally:
        await s.close()
    assert len(receiver.calls) == 1


async def test_check_requires_a_secret(receiver: Receiver) -> None:
    """Without TURNOUT_WEBHOOK_SECRET webhooks are refused: they could not be signed."""
    prefix = receiver.url.rsplit("/", 1)[0] + "/"
    s = WebhookSender(Allowlist([prefix]), None, attempts=1, backoff_s=0)
    with pytest.raises(WebhookRefused, match="TURNOUT_WEBHOOK_SECRET"):
        await s.check(receiver.url)
