#!/usr/bin/env python3
"""Readiness probe for a Kafka broker: succeeds once a client can create a topic.

Used by ``scripts/kafka start``. Creates ``turnout.ready-probe`` (1 partition,
replication factor 1) with aiokafka's admin client, treating "already exists" as
success, and retries until the timeout.

With ``--brokers N`` (a cluster) it also waits until N brokers are registered.
With ``--describe`` it prints one line instead: the brokers and the active KRaft
controller (``scripts/kafka status`` on a cluster).

Exit codes: 0 ready, 1 timed out, 2 the watched broker process (--pid) died.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from turnout.kafka import cluster as kafka_cluster
from turnout.kafka.security import SecuritySettings

PROBE_TOPIC = "turnout.ready-probe"


class ProcessDied(Exception):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _admin(bootstrap: str, request_timeout_ms: int) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="turnout-ready-probe",
        request_timeout_ms=request_timeout_ms,
        **SecuritySettings.from_env().client_kwargs(),
    )


async def _attempt(bootstrap: str, request_timeout_ms: int, brokers: int) -> None:
    admin = _admin(bootstrap, request_timeout_ms)
    try:
        await admin.start()
        have = await kafka_cluster.broker_ids(admin)
        if len(have) < brokers:
            raise RuntimeError(f"{len(have)} of {brokers} brokers registered: {have}")
        response = await admin.create_topics(
            # On a cluster, replicated like any topic (min(3, brokers)).
            [NewTopic(name=PROBE_TOPIC, num_partitions=1, replication_factor=min(3, brokers))]
        )
        for topic_error in response.topic_errors:
            code = topic_error[1]
            if code:
                message = topic_error[2] if len(topic_error) > 2 else ""
                raise for_code(code)(f"{topic_error[0]}: {message}")
    finally:
        await admin.close()


async def describe(bootstrap: str) -> int:
    admin = _admin(bootstrap, 5000)
    try:
        await asyncio.wait_for(admin.start(), 10)
        nodes = await kafka_cluster.broker_ids(admin)
        try:
            quorum: kafka_cluster.Quorum | None = await kafka_cluster.describe_quorum(admin)
        except Exception as exc:  # an old broker without DescribeQuorum
            print(f"kafka_ready: no quorum description ({type(exc).__name__})", file=sys.stderr)
            quorum = None
        print(kafka_cluster.format_nodes(nodes, quorum))
        return 0
    except Exception as exc:
        print(f"cluster not answering on {bootstrap} ({type(exc).__name__})")
        return 1
    finally:
        await admin.close()


async def wait_ready(bootstrap: str, limit_s: float, pid: int | None, brokers: int = 1) -> int:
    deadline = time.monotonic() + limit_s
    last_error: BaseException | None = None
    while True:
        if pid is not None and not _alive(pid):
            print(f"kafka_ready: broker process {pid} exited", file=sys.stderr)
            return 2
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            print(
                f"kafka_ready: {bootstrap} not ready after {limit_s:.0f}s"
                f" (last error: {last_error!r})",
                file=sys.stderr,
            )
            return 1
        per_try = min(remaining, 10.0)
        try:
            await asyncio.wait_for(_attempt(bootstrap, int(per_try * 1000), brokers), per_try)
            return 0
        except TopicAlreadyExistsError:
            return 0
        except Exception as exc:  # connection refused, not a broker, not ready yet...
            last_error = exc
        await asyncio.sleep(min(0.5, max(deadline - time.monotonic(), 0)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument(
        "--timeout", type=float, default=float(os.environ.get("KAFKA_START_TIMEOUT", "60"))
    )
    parser.add_argument("--pid", type=int, default=None, help="give up if this process dies")
    parser.add_argument("--brokers", type=int, default=1, help="wait for this many brokers")
    parser.add_argument("--describe", action="store_true", help="print brokers and controller")
    parser.add_argument("-v", "--verbose", action="store_true", help="show aiokafka logs")
    args = parser.parse_args(argv)

    if args.verbose:
        logging.basicConfig(level=logging.INFO)
    else:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL + 1)
    if args.describe:
        return asyncio.run(describe(args.bootstrap))
    return asyncio.run(wait_ready(args.bootstrap, args.timeout, args.pid, args.brokers))


if __name__ == "__main__":
    sys.exit(main())
