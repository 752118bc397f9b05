"""Client isolation on Kafka: per-client intake topics, vetted into the request topic.

A Kafka record does not say who produced it, so the worker cannot check a
request's ``client_id`` against the producer's principal. What Kafka can enforce
is *which topics* a principal may write and read. So on a secured cluster:

- client A (principal ``User:A``) may Write only ``turnout.intake.A`` and Read only
  ``turnout.replies.A`` (literal ACLs, ``turnout acls``); it cannot write
  ``turnout.requests``, ``turnout.health``, another client's intake or reply topic,
  nor create topics;
- ``turnout intake`` (principal ``User:turnout``) reads every intake topic (a regex
  subscription) and forwards each record to ``turnout.requests`` only if the
  request claims the client its topic belongs to and replies to that client's own
  reply topic (``vet``, pure). Anything else goes to the dead-letter topic with a
  reason and never reaches a worker.

So a request on ``turnout.requests`` carries a ``client_id`` that Kafka
authenticated: A cannot use B's limits, pre-answer B's ids (dedupe is keyed by
client and request id), aim replies at B, or make workers create topics, since the
only reply topic a vetted request can name is its own client's, which exists.

The forwarder is at least once: it commits an intake offset only after the
forwarded (or dead-lettered) record is acknowledged (acks=all, idempotent). A crash
can forward a record twice; the worker's dedupe by (client, id) answers it once
when the first copy was answered ok, as for any redelivery.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from schemas.types import DeadLetter, Source, salvage_reply_address
from turnout import logs
from turnout.kafka import admin as kafka_admin
from turnout.kafka.admin import client_kwargs
from turnout.settings import Settings

log = logs.get("turnout.intake")

INTAKE_PREFIX = "turnout.intake."


@dataclasses.dataclass(frozen=True)
class Forward:
    client_id: str


@dataclasses.dataclass(frozen=True)
class Reject:
    code: str
    reason: str
    request_id: str | None
    client_id: str


def client_of(topic: str, prefix: str = INTAKE_PREFIX) -> str | None:
    """The client an intake topic belongs to.

    >>> client_of("turnout.intake.billing")
    'billing'
    >>> client_of("turnout.requests") is None
    True
    """
    if not topic.startswith(prefix) or len(topic) == len(prefix):
        return None
    return topic[len(prefix) :]


def vet(
    topic: str, value: bytes, settings: Settings, prefix: str = INTAKE_PREFIX
) -> Forward | Reject:
    """Forward a record from ``topic`` only if it speaks for that topic's client alone.

    >>> s = Settings()
    >>> vet("turnout.intake.a", b'{"id": "1", "client_id": "a"}', s)
    Forward(client_id='a')
    >>> vet("turnout.intake.a", b'{"id": "1", "client_id": "b"}', s).code
    'client_id_mismatch'
    >>> vet("turnout.intake.a", b'{"id": "1", "client_id": "a", "reply_to": "turnout.replies.b"}',
    ...     s).code
    'reply_to_not_allowed'
    """
    client = client_of(topic, prefix)
    if client is None:
        return Reject("not_an_intake_topic", f"{topic!r} is not an intake topic", None, "")
    address = salvage_reply_address(value)
    if address is None:
        # Not even an id: nobody can be answered; dead-lettered here, as the worker would.
        return Reject("invalid_request", "not a JSON request with a string id", None, client)
    if address.client_id != client:
        return Reject(
            "client_id_mismatch",
            f"a request on {topic} must have client_id {client!r}, not {address.client_id!r}",
            address.id,
            client,
        )
    own = settings.reply_topic_for(client)
    if address.reply_to is not None and address.reply_to != own:
        return Reject(
            "reply_to_not_allowed",
            f"client {client!r} may only be answered on {own}, not {address.reply_to!r}",
            address.id,
            client,
        )
    return Forward(client)


def _dead_letter(rec: ConsumerRecord[bytes, bytes], reject: Reject) -> DeadLetter:
    return DeadLetter(
        code=reject.code,
        reason=reject.reason,
        source=Source(
            topic=rec.topic, partition=rec.partition, offset=rec.offset, timestamp_ms=rec.timestamp
        ),
        key=rec.key,
        value=rec.value or b"",
        request_id=reject.request_id,
        client_id=reject.client_id or None,
        dead_lettered_at_ms=int(time.time() * 1000),
    )


async def _forward(
    producer: AIOKafkaProducer, rec: ConsumerRecord[bytes, bytes], settings: Settings
) -> asyncio.Future[object]:
    """Send one intake record on (vetted) or to the dead letters; the send's future."""
    verdict = vet(rec.topic, rec.value or b"", settings)
    sent: asyncio.Future[object]  # aiokafka is untyped: send() resolves to this future
    if isinstance(verdict, Forward):
        sent = await producer.send(
            settings.request_topic,
            rec.value,
            key=verdict.client_id.encode(),
            headers=list(rec.headers or ()),
        )
        return sent
    log.warning(
        "intake_rejected",
        code=verdict.code,
        client_id=verdict.client_id,
        request_id=verdict.request_id,
        topic=rec.topic,
    )
    sent = await producer.send(
        settings.dead_letter_topic,
        _dead_letter(rec, verdict).to_wire(),
        key=verdict.client_id.encode() or None,
    )
    return sent


async def run(
    settings: Settings, *, group: str | None = None, stop: asyncio.Event | None = None
) -> None:
    """``turnout intake``: forward vetted intake records until ``stop`` (or SIGTERM)."""
    await kafka_admin.ensure_topics(
        settings.bootstrap,
        [],
        1,
        specs={
            settings.request_topic: (settings.request_partitions, {}),
            settings.dead_letter_topic: (1, {}),
        },
        check_safe=[settings.request_topic],
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=group or f"{settings.app_id}-intake",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        metadata_max_age_ms=5000,  # new clients' intake topics are found within seconds
        **client_kwargs(),
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        **client_kwargs(),
    )
    await producer.start()
    await consumer.start()
    consumer.subscribe(pattern=f"^{re.escape(INTAKE_PREFIX)}.+")
    stop = stop or asyncio.Event()
    log.info("intake_started", pattern=f"{INTAKE_PREFIX}*", request_topic=settings.request_topic)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            if not batches:
                continue
            try:
                sends = [
                    await _forward(producer, rec, settings)
                    for records in batches.values()
                    for rec in records
                ]
                await asyncio.gather(*sends)  # acknowledged before the offsets move
                await consumer.commit()
            except KafkaError as exc:
                # Not acknowledged (broker away too long) or not committed: read the
                # batch again from the last commit; forwarding it twice is harmless.
                log.warning("intake_retry", error=type(exc).__name__)
                await asyncio.sleep(1)
                await consumer.seek_to_committed()
    finally:
        await consumer.stop()
        await producer.stop()


def main(settings: Settings) -> int:
    import signal

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop=stop)

    asyncio.run(serve())
    return 0
