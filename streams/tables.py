"""faust tables: per-client state, co-partitioned with the request topic.

Requests are keyed by client id, so every table here has the request topic's
partition count and is written only from a stream over a co-partitioned topic:
each partition's state has exactly one writer in the whole group, which is what
makes the limits exact across any number of workers without Redis.

- ``client_buckets``: client id → rate-limit buckets (written by the request agent).
- ``done``: client id + request id → when it was answered ok (written by the
  request's dispatch task, in the request's own partition: see
  ``Dispatcher._record_done``). A request already answered ok is not served again: a replay,
  or a repeat after a crash that got as far as recording the outcome.
"""

from __future__ import annotations

import dataclasses

import faust

from streams.settings import Settings


@dataclasses.dataclass(frozen=True)
class Tables:
    client_buckets: faust.Table[bytes, bytes]
    done: faust.Table[bytes, bytes]


def declare(app: faust.App, settings: Settings) -> Tables:
    return Tables(
        client_buckets=app.Table(
            "client-buckets",
            partitions=settings.request_partitions,
            key_type=bytes,
            value_type=bytes,
        ),
        done=app.Table(
            "done",
            partitions=settings.request_partitions,
            key_type=bytes,
            value_type=bytes,
            # Old entries fall out of the changelog: dedupe covers the retention.
            extra_topic_configs={
                "cleanup.policy": "compact,delete",
                "retention.ms": str(settings.dedupe_retention_s * 1000),
            },
        ),
    )


def done_key(client_id: str, request_id: str) -> bytes:
    return f"{client_id}\x00{request_id}".encode()
