"""Which topic settings keep an acknowledged record, decided in pure code.

turnout's promise (an accepted request is never lost) holds only if a record the
broker acknowledged survives the loss of the broker that took it. With producers at
acks=all, that needs every partition on more than one broker (replication factor
> 1), a write refused unless it reached at least ``min.insync.replicas`` of them,
and no "unclean" election of an out-of-date replica as leader. Measured before this
module existed: on a three-node cluster turnout created its request topic with
replication factor 1; a kill -9 of the node leading most request partitions made
Kafka refuse 533 of 2,000 requests, and that node's disk held the only copy of the
accepted requests it led.

- ``TopicPolicy``: replication factor and min.insync.replicas for every topic
  turnout creates: ``TURNOUT_REPLICATION_FACTOR`` (0: min(3, brokers)) and one less
  for min ISR (at least 1), so a three-node cluster stays writable with one node down.
- ``unsafe_reasons``: why an existing topic can lose acknowledged records.
- ``startup_verdict``: what the worker and the gateway do about it (refuse, or with
  ``TURNOUT_ALLOW_UNSAFE_TOPICS=1`` start with a warning).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from turnout.settings import read_env, setting


@dataclasses.dataclass(frozen=True, kw_only=True)
class DurabilitySettings:
    replication_factor: int = setting(
        "TURNOUT_REPLICATION_FACTOR",
        0,
        "Replication factor of every topic turnout creates; 0: min(3, brokers in the cluster). "
        "min.insync.replicas is one less (at least 1).",
    )
    allow_unsafe_topics: bool = setting(
        "TURNOUT_ALLOW_UNSAFE_TOPICS",
        False,
        "Start even if a request or reply topic can lose acknowledged records "
        "(replication factor 1 on a cluster, unclean leader election); logs a warning.",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> DurabilitySettings:
        return read_env(cls, env, overrides)

    def validate(self) -> None:
        if self.replication_factor < 0:
            raise ValueError(
                f"TURNOUT_REPLICATION_FACTOR must be 0 (automatic) or more, "
                f"got {self.replication_factor}"
            )

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        return [
            (f.metadata["env"], repr(f.default), f.metadata["doc"]) for f in dataclasses.fields(cls)
        ]


@dataclasses.dataclass(frozen=True)
class TopicPolicy:
    replication_factor: int
    min_insync: int

    def configs(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Topic configs for a new topic: ours first, the caller's own on top.

        >>> TopicPolicy(3, 2).configs({"cleanup.policy": "compact"})
        {'min.insync.replicas': '2', 'unclean.leader.election.enable': 'false', \
'cleanup.policy': 'compact'}
        """
        return {
            "min.insync.replicas": str(self.min_insync),
            "unclean.leader.election.enable": "false",
            **(extra or {}),
        }


def policy_for(brokers: int, replication_factor: int = 0) -> TopicPolicy:
    """The policy for a cluster of ``brokers``; ``replication_factor`` 0 means automatic.

    >>> policy_for(1)
    TopicPolicy(replication_factor=1, min_insync=1)
    >>> policy_for(3)
    TopicPolicy(replication_factor=3, min_insync=2)
    >>> policy_for(5)
    TopicPolicy(replication_factor=3, min_insync=2)
    >>> policy_for(5, 5)
    TopicPolicy(replication_factor=5, min_insync=4)
    """
    if brokers < 1:
        raise ValueError("the cluster lists no broker")
    rf = replication_factor or min(3, brokers)
    if rf > brokers:
        raise ValueError(
            f"TURNOUT_REPLICATION_FACTOR={rf} but the cluster has {brokers} "
            f"broker{'s' if brokers != 1 else ''}; use at most {brokers}, or 0 for automatic"
        )
    return TopicPolicy(replication_factor=rf, min_insync=max(1, rf - 1))


@dataclasses.dataclass(frozen=True)
class TopicState:
    """What the cluster says about one existing topic."""

    name: str
    replication_factor: int  # the smallest over its partitions
    configs: Mapping[str, str]


def unsafe_reasons(topic: TopicState, brokers: int) -> list[str]:
    """Why ``topic`` can lose records the broker acknowledged; empty if it cannot.

    >>> unsafe_reasons(TopicState("t", 1, {}), brokers=3)
    ['replication factor 1 on a cluster of 3 brokers (one lost disk loses acknowledged records)']
    >>> unsafe_reasons(TopicState("t", 1, {}), brokers=1)
    []
    >>> unsafe_reasons(TopicState("t", 3, {"unclean.leader.election.enable": "true"}), 3)
    ['unclean.leader.election.enable=true (an out-of-date replica may become leader)']
    """
    reasons = []
    if topic.replication_factor < 2 and brokers > 1:
        reasons.append(
            f"replication factor {topic.replication_factor} on a cluster of {brokers} brokers"
            " (one lost disk loses acknowledged records)"
        )
    if str(topic.configs.get("unclean.leader.election.enable", "false")).lower() == "true":
        reasons.append(
            "unclean.leader.election.enable=true (an out-of-date replica may become leader)"
        )
    return reasons


@dataclasses.dataclass(frozen=True)
class Verdict:
    start: bool
    line: str  # empty when every topic is safe


def startup_verdict(topics: list[TopicState], brokers: int, *, allow_unsafe: bool) -> Verdict:
    """Refuse (or, allowed, warn about) request and reply topics that can lose records.

    >>> v = startup_verdict([TopicState("turnout.requests", 1, {})], 3, allow_unsafe=False)
    >>> v.start, v.line  # doctest: +NORMALIZE_WHITESPACE
    (False, 'unsafe topic settings: turnout.requests: replication factor 1 on a cluster of 3
    brokers (one lost disk loses acknowledged records); fix the topic (kafka-reassign-partitions,
    or delete and recreate it) or set TURNOUT_ALLOW_UNSAFE_TOPICS=1 to start anyway')
    >>> startup_verdict([TopicState("t", 3, {})], 3, allow_unsafe=False)
    Verdict(start=True, line='')
    """
    found = [(t.name, r) for t in topics for r in unsafe_reasons(t, brokers)]
    if not found:
        return Verdict(True, "")
    detail = "; ".join(f"{name}: {reason}" for name, reason in found)
    if allow_unsafe:
        return Verdict(True, f"unsafe topic settings (TURNOUT_ALLOW_UNSAFE_TOPICS=1): {detail}")
    return Verdict(
        False,
        f"unsafe topic settings: {detail}; fix the topic (kafka-reassign-partitions, or delete "
        "and recreate it) or set TURNOUT_ALLOW_UNSAFE_TOPICS=1 to start anyway",
    )
