"""Connecting to Kafka at start, creating durable topics, and saying plainly what is wrong.

Every turnout process that creates or checks topics (worker, gateway, CLI commands,
benchmarks, tests) goes through ``connect_admin`` and ``ensure_topics``:

- ``connect_admin`` first opens one raw connection to the bootstrap servers, because
  aiokafka's bootstrap turns every failure into "Unable to bootstrap": a refused
  port, a bad password and an untrusted certificate must read differently. The
  failure becomes one ``KafkaStartupError`` line (``describe_failure``, pure).
- ``ensure_topics`` creates missing topics with the cluster's ``TopicPolicy``
  (replication factor and min.insync.replicas from ``turnout.kafka.durability``) and reads
  back partition counts; a topic the principal may not create or describe is named.
- ``check_topics`` reads existing topics' replication and configs for the startup
  verdict (refuse, or warn with ``TURNOUT_ALLOW_UNSAFE_TOPICS=1``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import errors as kerrors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn

from turnout import logs
from turnout.errors import StartupError
from turnout.kafka import cluster as kafka_cluster
from turnout.kafka.durability import (
    DurabilitySettings,
    TopicPolicy,
    TopicState,
    policy_for,
    startup_verdict,
)
from turnout.kafka.security import SecuritySettings

log = logs.get("turnout.kafka")

TOPIC_AUTHORIZATION_FAILED = 29
TOPIC_ALREADY_EXISTS = 36
UNKNOWN_TOPIC = 3


class KafkaStartupError(StartupError):
    """Kafka is not usable as configured; ``str()`` is one line for a person, no secrets."""

    code = "kafka_unusable"


@dataclasses.dataclass(frozen=True)
class KafkaEnv:
    """Everything a turnout Kafka client needs besides the bootstrap servers."""

    security: SecuritySettings
    durability: DurabilitySettings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaEnv:
        try:
            return cls(SecuritySettings.from_env(env), DurabilitySettings.from_env(env))
        except ValueError as exc:
            raise KafkaStartupError(str(exc)) from None


def client_kwargs(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Security keyword arguments for any aiokafka client, from the environment."""
    return SecuritySettings.from_env(env).client_kwargs()


def describe_failure(
    bootstrap: str, security: SecuritySettings, errors: list[BaseException]
) -> str:
    """One line naming what went wrong when no bootstrap server could be used.

    >>> s = SecuritySettings(protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
    ...     sasl_username="alice")
    >>> describe_failure("h:1", s, [kerrors.SaslAuthenticationFailed("invalid credentials")])
    'authentication failed at h:1 as alice (SASL_SSL SCRAM-SHA-512): check KAFKA_SASL_USERNAME, \
KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM'
    >>> describe_failure("h:1", SecuritySettings(), [ConnectionRefusedError(111, "refused")])
    'Kafka not reachable at h:1 (connection refused): is the broker up, is KAFKA_BOOTSTRAP right?'
    """
    auth = (
        kerrors.SaslAuthenticationFailed,
        kerrors.AuthenticationFailedError,
        kerrors.IllegalSaslStateError,
    )
    for exc in errors:
        if isinstance(exc, auth):
            return (
                f"authentication failed at {bootstrap} as {security.sasl_username} "
                f"({security.describe().split(' as ')[0]}): check KAFKA_SASL_USERNAME, "
                "KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"
            )
    for exc in errors:
        if isinstance(exc, kerrors.UnsupportedSaslMechanismError):
            return f"authentication failed at {bootstrap}: {exc}"
    for exc in errors:
        if isinstance(exc, ssl.SSLError):
            verify = getattr(exc, "verify_message", None)
            reason = (
                f"certificate verify failed: {verify}"
                if verify
                else getattr(exc, "reason", None) or type(exc).__name__
            )
            return (
                f"TLS handshake with {bootstrap} failed ({reason}): check KAFKA_SSL_CAFILE and "
                "that the listener speaks TLS"
            )
    for exc in errors:
        if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
            return (
                f"Kafka at {bootstrap} did not answer in time with {security.protocol}: is "
                "KAFKA_SECURITY_PROTOCOL the listener's protocol?"
            )
    if any(isinstance(e, ConnectionRefusedError) for e in errors):
        reason = "connection refused"
    else:
        reason = type(errors[0]).__name__ if errors else "no address"
    return (
        f"Kafka not reachable at {bootstrap} ({reason}): is the broker up, "
        "is KAFKA_BOOTSTRAP right?"
    )


async def connect_admin(
    bootstrap: str, security: SecuritySettings, *, timeout_s: float = 15.0
) -> AIOKafkaAdminClient:
    """A started admin client, or ``KafkaStartupError`` saying why not."""
    kwargs = security.client_kwargs()
    errors: list[BaseException] = []
    for hostport in bootstrap.split(","):
        host, _, port = hostport.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000), **kwargs),
                timeout_s,
            )
        except (TimeoutError, OSError, kerrors.KafkaError, ValueError) as exc:
            errors.append(exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else exc)
            continue
        conn.close()
        break
    else:
        raise KafkaStartupError(describe_failure(bootstrap, security, errors))
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **kwargs
    )
    try:
        await admin.start()
    except (OSError, kerrors.KafkaError) as exc:
        await admin.close()
        raise KafkaStartupError(describe_failure(bootstrap, security, [exc])) from None
    return admin


def _principal(security: SecuritySettings) -> str:
    return f"User:{security.sasl_username}" if security.sasl_username else "this client"


async def cluster_policy(admin: AIOKafkaAdminClient, durability: DurabilitySettings) -> TopicPolicy:
    brokers = await kafka_cluster.broker_ids(admin)
    try:
        return policy_for(len(brokers), durability.replication_factor)
    except ValueError as exc:
        raise KafkaStartupError(str(exc)) from None


async def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    configs: Mapping[str, str] | None = None,
    *,
    kafka: KafkaEnv | None = None,
    specs: Mapping[str, tuple[int, Mapping[str, str]]] | None = None,
    check_safe: Iterable[str] = (),
) -> dict[str, int]:
    """Create the missing topics durably; return every named topic's partition count.

    ``specs`` gives some topics their own (partitions, configs); the others get
    ``partitions`` and ``configs``. The topics in ``check_safe`` (request and reply
    topics) must not be able to lose acknowledged records: ``KafkaStartupError``
    otherwise, or a warning with ``TURNOUT_ALLOW_UNSAFE_TOPICS=1``.
    """
    wanted = {n: (partitions, dict(configs or {})) for n in names}
    wanted.update({n: (p, dict(c)) for n, (p, c) in (specs or {}).items()})
    counts, _ = await ensure_topics_and_policy(
        bootstrap, wanted, kafka=kafka, check_safe=check_safe
    )
    return counts


async def ensure_topics_and_policy(
    bootstrap: str,
    wanted: Mapping[str, tuple[int, Mapping[str, str]]],
    *,
    kafka: KafkaEnv | None = None,
    check_safe: Iterable[str] = (),
    check_prefix: str | None = None,
) -> tuple[dict[str, int], TopicPolicy]:
    """``ensure_topics`` for topics with their own (partitions, configs); also the policy.

    ``check_prefix`` adds every existing topic with that prefix (reply topics) to
    ``check_safe``.
    """
    kafka = kafka or KafkaEnv.from_env()
    admin = await connect_admin(bootstrap, kafka.security)
    try:
        policy = await cluster_policy(admin, kafka.durability)
        existing = set(await admin.list_topics())
        new = [
            NewTopic(n, p, policy.replication_factor, topic_configs=policy.configs(c))
            for n, (p, c) in wanted.items()
            if n not in existing
        ]
        if new:
            response = await admin.create_topics(new)
            for topic, code, *rest in response.topic_errors:
                if code in (0, TOPIC_ALREADY_EXISTS):
                    continue
                if code == TOPIC_AUTHORIZATION_FAILED:
                    raise KafkaStartupError(
                        f"not authorized to create topic {topic} as {_principal(kafka.security)}:"
                        " create it beforehand or grant Create on it (see docs/kafka.md)"
                    )
                message = rest[0] if rest and rest[0] else kerrors.for_code(code).__name__
                raise KafkaStartupError(f"creating topic {topic} failed: {message}")
        counts = await partition_counts(admin, wanted, kafka.security)
        safe = list(check_safe)
        if check_prefix:
            safe += sorted(t for t in existing if t.startswith(check_prefix))
        if safe:
            await require_safe(admin, safe, kafka)
        return counts, policy
    finally:
        await admin.close()


async def partition_counts(
    admin: AIOKafkaAdminClient, names: Iterable[str], security: SecuritySettings | None = None
) -> dict[str, int]:
    """Every named topic's partition count, once each partition has a leader.

    A topic just created is described with no partitions, or partitions without a
    leader, for a moment; readers and writers that arrive then fail or retry.
    """
    names = sorted(names)
    described: list[dict[str, Any]] = []
    for _ in range(100):
        described = await admin.describe_topics(names)
        _raise_for_topic_errors(described, security)
        if all(
            d["partitions"] and all(p["leader"] >= 0 for p in d["partitions"]) for d in described
        ):
            break
        await asyncio.sleep(0.1)
    return {d["topic"]: len(d["partitions"]) for d in described}


def _raise_for_topic_errors(
    described: list[dict[str, Any]], security: SecuritySettings | None
) -> None:
    for d in described:
        if d["error_code"] == TOPIC_AUTHORIZATION_FAILED:
            who = _principal(security) if security else "this client"
            raise KafkaStartupError(
                f"not authorized for topic {d['topic']} as {who}: grant Describe (and Read or "
                "Write as its role needs) on it (see docs/kafka.md)"
            )


async def require_safe(admin: AIOKafkaAdminClient, names: Iterable[str], kafka: KafkaEnv) -> None:
    """Refuse (or, allowed, warn about) topics whose settings can lose acknowledged records."""
    states, brokers = await check_topics(admin, names, kafka.security)
    verdict = startup_verdict(states, brokers, allow_unsafe=kafka.durability.allow_unsafe_topics)
    if not verdict.start:
        raise KafkaStartupError(verdict.line)
    if verdict.line:
        log.warning("unsafe_topics_allowed", detail=verdict.line)


async def check_topics(
    admin: AIOKafkaAdminClient, names: Iterable[str], security: SecuritySettings
) -> tuple[list[TopicState], int]:
    """(state of every named topic that exists, brokers in the cluster)."""
    brokers = len(await kafka_cluster.broker_ids(admin))
    existing = set(await admin.list_topics())
    present = sorted(n for n in names if n in existing)
    if not present:
        return [], brokers
    # A topic another process just created is described without partitions (or
    # replicas) for a moment: wait for it, as partition_counts does.
    for _ in range(100):
        described = await admin.describe_topics(present)
        _raise_for_topic_errors(described, security)
        if all(d["partitions"] and all(p["replicas"] for p in d["partitions"]) for d in described):
            break
        await asyncio.sleep(0.1)
    described = [d for d in described if d["partitions"]]  # still unknown: nothing to judge
    present = [d["topic"] for d in described]
    rf = {
        d["topic"]: min((len(p["replicas"]) for p in d["partitions"]), default=0) for d in described
    }
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, n) for n in present]
    )
    configs: dict[str, dict[str, str]] = {n: {} for n in present}
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"] == TOPIC_AUTHORIZATION_FAILED:
                raise KafkaStartupError(
                    f"not authorized to read the configs of topic {resource['resource_name']} as "
                    f"{_principal(security)}: grant DescribeConfigs on it (see docs/kafka.md)"
                )
            configs[resource["resource_name"]] = {
                e["config_names"]: e["config_value"] for e in resource["config_entries"]
            }
    return [TopicState(n, rf[n], configs[n]) for n in present], brokers
