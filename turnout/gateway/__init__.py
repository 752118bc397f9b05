"""The HTTP gateway: OpenAI- and Ollama-compatible endpoints in front of turnout's Kafka topics.

The gateway is just another Kafka client. It publishes each HTTP call as a
``Request`` (keyed by the caller's client id, ``reply_to`` its own reply topic)
and reads the answers from that topic; routing stays with the workers.

    app.py         aiohttp routes: auth, sync/streaming/async calls, health, OpenAPI
    openai_api.py  OpenAI shapes at the edge (pure): bodies in, replies and errors out
    ollama_api.py  Ollama shapes at the edge (pure)
    kafka.py       publisher, reply consumer, durable status store
    webhooks.py    allowlist, SSRF guard, signed delivery with backoff
    openapi.py     the OpenAPI 3.1 document served at /openapi.json

Gateway settings are environment variables, declared once below (``turnout
gateway --help`` and ``GatewaySettings.describe()`` list them); Kafka and topic
settings are the worker's (``turnout.settings.Settings``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from turnout.config import Secret
from turnout.settings import Settings, read_env, setting

_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_CLIENT = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ANONYMOUS = "anonymous"


@dataclasses.dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    gateway_id: str = setting(
        "TURNOUT_GATEWAY_ID",
        "gw",
        "Names the reply topic, status topic and consumer group; one process per id.",
    )
    keys: str = setting(
        "TURNOUT_GATEWAY_KEYS",
        "",
        "API keys: a YAML file {keys: {<key or ${ENV}>: <client_id>}} or key1=client1,...; "
        "empty: auth off, every caller is 'anonymous'.",
    )
    timeout_s: float = setting(
        "TURNOUT_GATEWAY_TIMEOUT_S",
        60.0,
        "How long a sync call waits for its reply before 504 (then poll the status URL).",
    )
    status_max_entries: int = setting(
        "TURNOUT_GATEWAY_STATUS_MAX", 100_000, "Request statuses kept in memory (LRU beyond)."
    )
    status_ttl_s: float = setting(
        "TURNOUT_GATEWAY_STATUS_TTL_S",
        86_400.0,
        "How long a request's status can be polled after its last change.",
    )
    status_retry_s: float = setting(
        "TURNOUT_GATEWAY_STATUS_RETRY_S",
        30.0,
        "How long a status write is retried on retriable Kafka errors before /readyz fails.",
    )
    webhook_secret: str = setting(
        "TURNOUT_WEBHOOK_SECRET", "", "HMAC-SHA256 key of X-Turnout-Signature; webhooks need it."
    )
    webhook_allow: str = setting(
        "TURNOUT_WEBHOOK_ALLOW",
        "",
        "Comma-separated URL prefixes webhooks may target; empty: webhooks are refused.",
    )
    webhook_attempts: int = setting(
        "TURNOUT_WEBHOOK_ATTEMPTS", 6, "Deliveries tried per webhook before giving up."
    )
    webhook_backoff_s: float = setting(
        "TURNOUT_WEBHOOK_BACKOFF_S", 1.0, "First retry delay of a webhook; doubles each time."
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> GatewaySettings:
        return read_env(cls, env, overrides)

    def validate(self) -> None:
        if not _ID.match(self.gateway_id):
            raise ValueError(
                f"TURNOUT_GATEWAY_ID must be 1-64 of A-Z a-z 0-9 . _ -, got {self.gateway_id!r}"
            )
        if not self.timeout_s > 0:
            raise ValueError(f"TURNOUT_GATEWAY_TIMEOUT_S must be > 0, got {self.timeout_s}")
        if not self.status_retry_s > 0:
            raise ValueError(
                f"TURNOUT_GATEWAY_STATUS_RETRY_S must be > 0, got {self.status_retry_s}"
            )
        if self.status_max_entries < 1 or not self.status_ttl_s > 0:
            raise ValueError("TURNOUT_GATEWAY_STATUS_MAX and _TTL_S must be positive")
        if self.webhook_attempts < 1 or self.webhook_backoff_s < 0:
            raise ValueError("TURNOUT_WEBHOOK_ATTEMPTS must be >= 1 and _BACKOFF_S >= 0")

    def reply_topic(self, base: Settings) -> str:
        """``<TURNOUT_REPLY_PREFIX>gateway-<id>``: the workers accept only reply topics
        under their prefix, so the gateway's must use the same one."""
        return base.reply_topic_for(f"gateway-{self.gateway_id}")

    @property
    def status_topic(self) -> str:
        return f"turnout.gateway-status.{self.gateway_id}"

    @property
    def consumer_group(self) -> str:
        return f"turnout-gateway-{self.gateway_id}"

    @property
    def allow_prefixes(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.webhook_allow.split(",") if p.strip())

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        return [
            (f.metadata["env"], repr(f.default), f.metadata["doc"]) for f in dataclasses.fields(cls)
        ]


class ApiKeys:
    """API key -> client id. Keys are kept only as SHA-256 digests; ``None`` means auth is off."""

    def __init__(self, keys: Mapping[str, str] | None) -> None:
        self._digests = None if keys is None else {_digest(k): cid for k, cid in keys.items()}

    def __repr__(self) -> str:
        n = "off" if self._digests is None else f"{len(self._digests)} keys"
        return f"<ApiKeys {n}>"

    @property
    def enabled(self) -> bool:
        return self._digests is not None

    def client_for(self, key: str | None) -> str | None:
        """The client id of ``key``; ``anonymous`` when auth is off; None when unknown."""
        if self._digests is None:
            return ANONYMOUS
        return None if key is None else self._digests.get(_digest(key))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def load_keys(value: str, env: Mapping[str, str] | None = None) -> ApiKeys:
    """Parse ``TURNOUT_GATEWAY_KEYS``: a YAML file path, or inline ``key=client,...``.

    Raises ValueError naming every problem (never a key's value).
    """
    env = os.environ if env is None else env
    value = value.strip()
    if not value:
        return ApiKeys(None)
    problems: list[str] = []
    pairs: list[tuple[str, Any]] = []
    if "=" not in value or os.path.exists(value):
        try:
            with open(value, encoding="utf-8") as f:
                doc = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"TURNOUT_GATEWAY_KEYS: cannot read {value}: {exc}") from None
        keys = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(keys, dict) or not keys:
            raise ValueError(
                f"TURNOUT_GATEWAY_KEYS: {value} must hold a non-empty mapping "
                "'keys: {<key or ${ENV}>: <client_id>}'"
            )
        pairs = [(str(k), v) for k, v in keys.items()]
    else:
        for i, item in enumerate(p for p in value.split(",") if p.strip()):
            key, sep, cid = item.strip().partition("=")
            if not sep:
                problems.append(f"entry {i + 1} has no '=' (expected key=client_id)")
            pairs.append((key, cid))
    out: dict[str, str] = {}
    for i, (raw_key, cid) in enumerate(pairs):
        key = _ENV_REF.sub(lambda m: env.get(m.group(1), "\0"), raw_key)
        if "\0" in key:
            problems.append(f"entry {i + 1}: its key refers to an environment variable not set")
        elif not key:
            problems.append(f"entry {i + 1}: the key is empty")
        if not isinstance(cid, str) or not _CLIENT.match(cid):
            problems.append(
                f"entry {i + 1}: client id must be 1-128 of A-Z a-z 0-9 . _ -, got {cid!r}"
            )
        elif key in out and out[key] != cid:
            problems.append(f"entry {i + 1}: the same key is given to two clients")
        else:
            out[key] = cid
    if problems:
        raise ValueError("TURNOUT_GATEWAY_KEYS: " + "; ".join(problems))
    return ApiKeys(out)


def webhook_secret(settings: GatewaySettings) -> Secret | None:
    return Secret(settings.webhook_secret) if settings.webhook_secret else None
