"""Webhooks: where they may go, how they are signed, and delivery with bounded retries.

A ``webhook_url`` is checked when the request is submitted, and again at each
delivery:

1. it is an ``http``/``https`` URL with a host and no user info;
2. it starts with an entry of ``TURNOUT_WEBHOOK_ALLOW`` (comma-separated URL
   prefixes), the match ending at a boundary (``https://a.com`` does not allow
   ``https://a.com.evil.net``); an empty list refuses every webhook;
3. every address its host resolves to is public. Loopback, private, link-local
   (cloud metadata at 169.254.169.254), shared, reserved and multicast addresses
   are refused unless the matching allowlist entry names that host literally as
   an IP address or ``localhost`` (the way to allow a local test receiver).

Checks 1 and 2 need no network, so an address that is not allowlisted is never
resolved or contacted. At delivery the session's resolver repeats check 3 on
the addresses it is about to connect to (no DNS-rebinding window) and redirects
are not followed.

Each delivery POSTs the JSON body with ``X-Turnout-Signature: sha256=<hex>``, the
HMAC-SHA256 of the exact body bytes under ``TURNOUT_WEBHOOK_SECRET``. A 2xx ends
it; a connection error, timeout, 408, 429 or 5xx is retried after
``TURNOUT_WEBHOOK_BACKOFF_S`` seconds, doubling (at most 5 minutes, or the
target's ``Retry-After`` up to that), for ``TURNOUT_WEBHOOK_ATTEMPTS`` attempts;
any other status gives up at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from turnout import logs
from turnout.config import Secret
from turnout.errors import TurnoutError

log = logs.get("turnout.gateway.webhooks")

Resolve = Callable[[str, int], Awaitable[list[str]]]
_MAX_DELAY_S = 300.0
_TIMEOUT_S = 10.0


class WebhookRefused(TurnoutError, ValueError):
    """The webhook target is not allowed; the message says why and how to fix it."""

    code = "webhook_refused"
    http_status = 400


def sign(secret: Secret, body: bytes) -> str:
    """The ``X-Turnout-Signature`` value for ``body``."""
    digest = hmac.new(secret.reveal().encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def is_internal(address: str) -> bool:
    """True unless ``address`` is a globally routable unicast IP address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True  # not an address at all: never trusted
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def _literal_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Allowlist:
    """The URL prefixes webhooks may target (pure: no DNS here)."""

    def __init__(self, prefixes: Sequence[str]) -> None:
        self.prefixes = tuple(prefixes)
        # Hosts an entry names literally (an IP or localhost): only these may be internal.
        self.explicit_hosts = frozenset(
            h for h in (urlsplit(p).hostname or "" for p in self.prefixes) if _literal_host(h)
        )

    def __repr__(self) -> str:
        return f"<Allowlist {len(self.prefixes)} prefixes>"

    def check_url(self, url: str) -> tuple[str, int]:
        """The (host, port) of an allowed ``url``; ``WebhookRefused`` otherwise."""
        if not self.prefixes:
            raise WebhookRefused(
                "webhooks are disabled on this gateway (TURNOUT_WEBHOOK_ALLOW is empty); "
                "poll the status URL instead"
            )
        if not isinstance(url, str) or len(url) > 2048:
            raise WebhookRefused("webhook_url must be a URL string of at most 2048 characters")
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise WebhookRefused(f"webhook_url {url!r} is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookRefused(
                f"webhook_url must be an http:// or https:// URL with a host, got {url!r}"
            )
        if parts.username is not None or parts.password is not None:
            raise WebhookRefused("webhook_url must not carry user info (user:password@)")
        if not any(self._matches(url, p) for p in self.prefixes):
            raise WebhookRefused(
                f"webhook_url {url!r} is not allowlisted; it must start with one of: "
                f"{', '.join(self.prefixes)} (TURNOUT_WEBHOOK_ALLOW)"
            )
        return parts.hostname, port

    @staticmethod
    def _matches(url: str, prefix: str) -> bool:
        if not url.startswith(prefix):
            return False
        rest = url[len(prefix) :]
        return prefix.endswith("/") or not rest or rest[0] in "/?#"

    def check_addresses(self, host: str, addresses: Sequence[str]) -> None:
        """Refuse internal addresses unless ``host`` is named literally by an entry."""
        if host in self.explicit_hosts:
            return
        internal = [a for a in addresses if is_internal(a)]
        if internal or not addresses:
            raise WebhookRefused(
                f"webhook host {host!r} resolves to an internal address ({', '.join(internal)}); "
                "loopback, private and link-local targets are refused unless an allowlist "
                "entry names that IP address literally"
                if internal
                else f"webhook host {host!r} does not resolve"
            )

    async def check(self, url: str, resolve: Resolve | None = None) -> None:
        """Every check of the module docstring; ``WebhookRefused`` with the reason."""
        host, port = self.check_url(url)
        if host in self.explicit_hosts:
            return
        try:
            addresses = [host] if _literal_host(host) else await (resolve or _resolve)(host, port)
        except OSError:
            raise WebhookRefused(f"webhook host {host!r} does not resolve") from None
        self.check_addresses(host, addresses)


async def _resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class _GuardedResolver(aiohttp.ThreadedResolver):
    """Resolves as usual, then refuses internal addresses of hosts not named literally."""

    def __init__(self, allow: Allowlist) -> None:
        super().__init__()
        self._allow = allow

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[Any]:
        results = await super().resolve(host, port, family)
        try:
            self._allow.check_addresses(host, [r["host"] for r in results])
        except WebhookRefused as exc:
            raise OSError(str(exc)) from None
        return list(results)


class WebhookSender:
    """Delivers signed webhooks over its own session (guarded resolver, no redirects)."""

    def __init__(
        self, allow: Allowlist, secret: Secret | None, *, attempts: int, backoff_s: float
    ) -> None:
        self.allow = allow
        self.secret = secret
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<WebhookSender {self.allow!r} attempts={self.attempts}>"

    async def check(self, url: str) -> None:
        """What submit calls: the URL checks, and a secret to sign with."""
        await self.allow.check(url)
        if self.secret is None:
            raise WebhookRefused(
                "webhooks are disabled on this gateway: TURNOUT_WEBHOOK_SECRET is not set, "
                "so deliveries could not be signed"
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=_GuardedResolver(self.allow), limit=64)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def deliver(self, url: str, body: bytes, *, request_id: str) -> bool:
        """POST ``body`` to ``url`` until a 2xx or the attempts run out; True when delivered."""
        assert self.secret is not None, "check() refuses webhooks without a secret"
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "turnout-gateway",
            "X-Turnout-Signature": sign(self.secret, body),
            "X-Turnout-Request-Id": request_id,
        }
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            wait = delay
            try:
                await self.allow.check(url)
                headers["X-Turnout-Delivery-Attempt"] = str(attempt)
                async with self._get_session().post(
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=_TIMEOUT_S),
                ) as response:
                    status = response.status
                    retry_after = response.headers.get("Retry-After", "")
                if 200 <= status < 300:
                    log.info("webhook_delivered", request_id=request_id, attempt=attempt)
                    return True
                if status not in (408, 429) and status < 500:
                    log.warning("webhook_refused", request_id=request_id, status=status)
                    return False
                if retry_after.isdigit():
                    wait = max(delay, float(retry_after))
                outcome = f"status {status}"
            except WebhookRefused as exc:
                log.warning("webhook_target_refused", request_id=request_id, reason=str(exc))
                return False
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                outcome = type(exc).__name__
            log.info("webhook_retry", request_id=request_id, attempt=attempt, outcome=outcome)
            if attempt < self.attempts:
                await asyncio.sleep(min(wait, _MAX_DELAY_S))
                delay = min(delay * 2, _MAX_DELAY_S)
        log.warning("webhook_failed", request_id=request_id, attempts=self.attempts)
        return False
