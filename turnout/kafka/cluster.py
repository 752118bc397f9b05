"""What a Kafka cluster looks like right now: brokers, partition leaders, the active controller.

Used by ``scripts/kafka status`` (which node is the active KRaft controller), by the
failover drills (which broker leads the most request partitions, which node to kill
for a controller failover) and by the startup checks (how many brokers there are,
so the default replication factor is min(3, brokers)).

aiokafka has no DescribeQuorum (API key 55), the one request that names the active
KRaft controller (a Metadata response names a random broker as "controller" under
KRaft), so it is declared here from Kafka's own schema, version 0 (flexible).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeAlias

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

METADATA_TOPIC = "__cluster_metadata"


class DescribeQuorumResponse_v0(Response):
    API_KEY = 55
    API_VERSION = 0
    SCHEMA = Schema(
        ("error_code", Int16),
        (
            "topics",
            CompactArray(
                ("topic_name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("error_code", Int16),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("high_watermark", Int64),
                        (
                            "current_voters",
                            CompactArray(
                                ("replica_id", Int32),
                                ("log_end_offset", Int64),
                                ("tags", TaggedFields),
                            ),
                        ),
                        (
                            "observers",
                            CompactArray(
                                ("replica_id", Int32),
                                ("log_end_offset", Int64),
                                ("tags", TaggedFields),
                            ),
                        ),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class DescribeQuorumRequest_v0(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 55
    API_VERSION = 0
    RESPONSE_TYPE = DescribeQuorumResponse_v0
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(
                ("topic_name", CompactString("utf-8")),
                ("partitions", CompactArray(("partition_index", Int32), ("tags", TaggedFields))),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


DescribeQuorumRequestStruct: TypeAlias = DescribeQuorumRequest_v0


class DescribeQuorumRequest(Request[DescribeQuorumRequestStruct]):
    API_KEY: ClassVar[int] = 55

    def build(self, request_struct_class: type[DescribeQuorumRequestStruct]) -> Any:
        return request_struct_class([(METADATA_TOPIC, [(0, {})], {})], {})


@dataclasses.dataclass(frozen=True)
class Quorum:
    leader_id: int
    leader_epoch: int
    voters: tuple[int, ...]


async def describe_quorum(admin: AIOKafkaAdminClient) -> Quorum:
    """The KRaft quorum as any broker sees it: the active controller (leader) and the voters."""
    # Through the admin client's own send path, so security settings apply.
    response = await admin._send_request(DescribeQuorumRequest())
    obj = response.to_object()
    part = obj["topics"][0]["partitions"][0]
    if obj["error_code"] or part["error_code"]:
        raise RuntimeError(
            f"DescribeQuorum failed: error {obj['error_code'] or part['error_code']}"
        )
    return Quorum(
        leader_id=part["leader_id"],
        leader_epoch=part["leader_epoch"],
        voters=tuple(sorted(v["replica_id"] for v in part["current_voters"])),
    )


async def broker_ids(admin: AIOKafkaAdminClient) -> list[int]:
    """Ids of the brokers the cluster metadata lists now (live, registered brokers)."""
    meta = await admin._client.fetch_all_metadata()
    return sorted(b.nodeId for b in meta.brokers())


async def partition_leaders(admin: AIOKafkaAdminClient, topic: str) -> dict[int, int]:
    """partition → leader broker id (-1 while it has none) for one topic."""
    (described,) = await admin.describe_topics([topic])
    return {p["partition"]: p["leader"] for p in described["partitions"]}


def busiest_leader(leaders: Mapping[int, int]) -> int:
    """The broker that leads the most partitions (lowest id on a tie).

    >>> busiest_leader({0: 2, 1: 3, 2: 2, 3: 1})
    2
    >>> busiest_leader({0: 3, 1: 1})
    1
    """
    counts = Counter(b for b in leaders.values() if b >= 0)
    if not counts:
        raise ValueError("no partition has a leader")
    top = max(counts.values())
    return min(b for b, n in counts.items() if n == top)


def format_nodes(nodes: Iterable[int], quorum: Quorum | None) -> str:
    """One line for ``scripts/kafka status``.

    >>> format_nodes([1, 2, 3], Quorum(leader_id=2, leader_epoch=4, voters=(1, 2, 3)))
    'brokers [1, 2, 3]; active controller 2 (epoch 4, voters [1, 2, 3])'
    """
    line = f"brokers {sorted(nodes)}"
    if quorum is not None:
        line += (
            f"; active controller {quorum.leader_id} (epoch {quorum.leader_epoch},"
            f" voters {list(quorum.voters)})"
        )
    return line
