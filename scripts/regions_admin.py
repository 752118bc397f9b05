#!/usr/bin/env python3
"""Topic chores for ``scripts/regions``: create, wait for mirroring, describe.

- ``create-topics``: in every region, the compacted ``turnout.regions`` and, for every
  other region X, ``turnout.forward.X`` and ``turnout.forward-replies.X``. They exist
  before MirrorMaker 2 starts, so its first topic scan already mirrors them.
- ``wait-mirrored``: until every flow A->B replicates: B holds ``A.turnout.regions``
  and a record of ``A.heartbeats`` stamped after ``--since-ms`` (MM2 emits heartbeats
  every 5 s into each target cluster and mirrors them like any topic, so a fresh one
  in ``A.heartbeats`` on B proves the flow A->B runs now), or the timeout.
- ``describe``: per region, which turnout topics are local and which are mirrored, and
  which flows into it delivered a heartbeat in the last ``--recent-s`` seconds.

Exit codes: 0 ok; 1 timed out or failed; 2 the watched process (--pid) died.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

STATE_TOPIC = "turnout.regions"
FORWARD_PARTITIONS = 3


def wanted_topics(region: str, regions: list[str]) -> list[NewTopic]:
    topics = [
        NewTopic(
            STATE_TOPIC,
            1,
            1,
            topic_configs={
                "cleanup.policy": "compact",
                "segment.ms": "60000",
                "min.cleanable.dirty.ratio": "0.1",
            },
        )
    ]
    for other in regions:
        if other != region:
            topics.append(NewTopic(f"turnout.forward.{other}", FORWARD_PARTITIONS, 1))
            topics.append(NewTopic(f"turnout.forward-replies.{other}", FORWARD_PARTITIONS, 1))
    return topics


async def _admin(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    return admin


async def create_topics(clusters: dict[str, str]) -> int:
    regions = list(clusters)
    for region, bootstrap in clusters.items():
        admin = await _admin(bootstrap)
        try:
            existing = set(await admin.list_topics())
            new = [t for t in wanted_topics(region, regions) if t.name not in existing]
            for topic in new:
                try:
                    await admin.create_topics([topic])
                except TopicAlreadyExistsError:
                    pass
            print(f"regions: {region}: created {len(new)} topic(s)", flush=True)
        finally:
            await admin.close()
    return 0


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _fresh_record(bootstrap: str, topic: str, since_ms: int) -> bool:
    """Whether ``topic`` holds a record stamped at or after ``since_ms``."""
    admin = await _admin(bootstrap)
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [p["partition"] for t in described for p in t.get("partitions", [])]
    if not partitions:
        return False
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await consumer.start()
    try:
        found = await consumer.offsets_for_times(
            {TopicPartition(topic, p): since_ms for p in partitions}
        )
        return any(v is not None for v in found.values())
    finally:
        await consumer.stop()


async def _flow_missing(clusters: dict[str, str], since_ms: int) -> dict[str, list[str]]:
    missing: dict[str, list[str]] = {}
    for region, bootstrap in clusters.items():
        lacking = []
        try:
            admin = await _admin(bootstrap)
            try:
                have = set(await admin.list_topics())
            finally:
                await admin.close()
            for other in clusters:
                if other == region:
                    continue
                if f"{other}.{STATE_TOPIC}" not in have:
                    lacking.append(f"{other}.{STATE_TOPIC}")
                elif f"{other}.heartbeats" not in have or not await _fresh_record(
                    bootstrap, f"{other}.heartbeats", since_ms
                ):
                    lacking.append(f"a fresh {other}.heartbeats record")
        except KafkaError as exc:
            lacking.append(f"an answer ({exc})")
        if lacking:
            missing[region] = lacking
    return missing


async def wait_mirrored(
    clusters: dict[str, str], timeout_s: float, pid: int | None, since_ms: int
) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        missing = await _flow_missing(clusters, since_ms)
        if not missing:
            return 0
        if not _alive(pid):
            print(f"regions: MirrorMaker 2 (pid {pid}) exited", file=sys.stderr)
            return 2
        if time.monotonic() > deadline:
            print(f"regions: still not mirrored, per region: {missing}", file=sys.stderr)
            return 1
        await asyncio.sleep(2)


async def describe(clusters: dict[str, str], recent_s: float) -> int:
    since_ms = int((time.time() - recent_s) * 1000)
    stalled = 0
    for region, bootstrap in clusters.items():
        admin = await _admin(bootstrap)
        try:
            names = sorted(await admin.list_topics())
        finally:
            await admin.close()
        others = [o for o in clusters if o != region]
        local = [n for n in names if n.startswith("turnout.") and n != "turnout.ready-probe"]
        mirrored = [n for n in names if any(n.startswith(f"{o}.turnout.") for o in others)]
        flows = []
        for other in others:
            ok = f"{other}.heartbeats" in names and await _fresh_record(
                bootstrap, f"{other}.heartbeats", since_ms
            )
            stalled += not ok
            flows.append(f"{other}->{region} {'replicating' if ok else 'NO RECENT HEARTBEAT'}")
        print(f"  {region}: local {', '.join(local) or '-'}")
        print(f"  {region}: mirrored in {', '.join(mirrored) or '-'}")
        print(f"  {region}: flows {', '.join(flows)}")
    return 1 if stalled else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["create-topics", "wait-mirrored", "describe"])
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--pid", type=int, default=None)
    parser.add_argument(
        "--since-ms", type=int, default=0, help="heartbeats must be at least this recent"
    )
    parser.add_argument("--recent-s", type=float, default=30.0)
    parser.add_argument("--clusters", nargs="+", required=True, help="region=host:port ...")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    clusters = dict(item.split("=", 1) for item in args.clusters)
    if args.command == "create-topics":
        return asyncio.run(create_topics(clusters))
    if args.command == "wait-mirrored":
        return asyncio.run(wait_mirrored(clusters, args.timeout, args.pid, args.since_ms))
    return asyncio.run(describe(clusters, args.recent_s))


if __name__ == "__main__":
    sys.exit(main())
