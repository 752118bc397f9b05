"""The request agent: read each record and hand it to the dispatcher.

It never acks by itself (``noack``): the dispatcher acks a record once its final
reply or dead letter is on the broker, and commits go through the offset
trackers (streams/consumer.py). ``submit`` waits while every in-flight slot is
taken, which is how backpressure reaches Kafka.
"""

from __future__ import annotations

from typing import Any, cast

import faust

from agents.intake import Intake
from turnout import logs, tracing
from turnout.core.admission import Record

REPLAY = "turnout-replay"
REPLAY_FORCE = "turnout-replay-force"

log = logs.get("turnout.agent")


def to_record(msg: Any) -> Record:
    headers = dict(msg.headers or ())
    return Record(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        timestamp_ms=int(msg.timestamp * 1000),
        key=msg.key,
        value=msg.value if msg.value is not None else b"",
        replay=REPLAY in headers,
        force=headers.get(REPLAY_FORCE) == b"1",
        trace_headers=tuple(tracing.from_kafka(headers).items()),
    )


def register(app: faust.App, topic: faust.TopicT, runtime: Intake) -> Any:
    @app.agent(topic, name="turnout-route")
    async def route(stream: faust.StreamT[bytes]) -> None:
        await runtime.start()
        try:
            # faust hands the agent a Stream; noack() is declared on it, not on StreamT.
            async for event in cast("faust.Stream[bytes]", stream).noack().events():
                msg = event.message
                try:
                    record = to_record(msg)
                except Exception:
                    # Never let the agent die (faust would stop reading). The offset is
                    # pinned unfinished, so nothing commits past it: it is read again.
                    runtime.dispatcher.pin(msg.tp, msg.offset)
                    log.exception("record_unreadable", partition=msg.partition, offset=msg.offset)
                    continue
                await runtime.dispatcher.submit(msg.tp, record, event.ack)
        finally:
            await runtime.stop()

    return route
