"""Publishing replies and dead letters, durably.

A request's offset may only be committed once its final reply is on the broker,
so ``publish`` waits for the broker's acknowledgement (acks=all) and keeps
retrying while Kafka is unreachable: the request then simply stays in Kafka, in
flight, until the broker is back or the partition moves to another worker.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import faust
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from faust.exceptions import ProducerSendError

from schemas.types import DeadLetter, Reply, ReplyChunk
from turnout import logs, tracing
from turnout.settings import Settings

log = logs.get(__name__)

Headers = Sequence[tuple[str, bytes]]


class PublishFailed(Exception):
    """The broker refused the record for a reason retrying cannot fix."""


class Publisher:
    def __init__(self, app: faust.App, settings: Settings) -> None:
        self._app = app
        self._settings = settings
        self._declared: dict[str, asyncio.Task[None]] = {}
        # While the broker is down every in-flight reply retries: one line per 10 s,
        # with the count of the retries it stands for (not one per retry).
        self._retry_logged_at = float("-inf")
        self._retries_unlogged = 0

    async def reply(self, topic: str, reply: Reply) -> None:
        headers = [("turnout-request-id", reply.id.encode()), *tracing.kafka_headers()]
        await self.publish(topic, reply.id.encode(), reply.to_wire(), headers)

    async def chunk(self, topic: str, chunk: ReplyChunk) -> None:
        headers = [("turnout-request-id", chunk.id.encode()), ("turnout-kind", b"chunk")]
        await self.publish(topic, chunk.id.encode(), chunk.to_wire(), headers)

    async def dead_letter(self, record: DeadLetter) -> None:
        headers = [("turnout-dead-letter-code", record.code.encode())]
        key = record.client_id.encode() if record.client_id else None
        await self.publish(self._settings.dead_letter_topic, key, record.to_wire(), headers)

    async def publish(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers,
        *,
        partition: int | None = None,
        declare: bool = True,
    ) -> None:
        delay = 0.1
        while True:
            try:
                if declare:
                    await self._ensure_topic(topic)
                await self._app.producer.send_and_wait(
                    topic, key, value, partition=partition, timestamp=None, headers=list(headers)
                )
                return
            except (KafkaError, ProducerSendError) as exc:
                # faust wraps the producer's KafkaError in its own ProducerSendError.
                cause = exc.__cause__ if isinstance(exc, ProducerSendError) else exc
                if not isinstance(cause, KafkaError) or not _transient(cause):
                    raise PublishFailed(f"{type(cause).__name__} publishing to {topic}") from exc
                self._log_retry(topic, type(cause).__name__, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    def _log_retry(self, topic: str, error: str, delay_s: float) -> None:
        self._retries_unlogged += 1
        now = time.monotonic()
        if now - self._retry_logged_at < 10.0:
            return
        log.warning(
            "publish_retry",
            topic=topic,
            error=error,
            delay_s=delay_s,
            retries=self._retries_unlogged,
        )
        self._retry_logged_at, self._retries_unlogged = now, 0

    async def _ensure_topic(self, topic: str) -> None:
        """Create a reply topic once; concurrent first publishes share one declaration."""
        task = self._declared.get(topic)
        if task is not None and task.done() and not task.cancelled() and not task.exception():
            return
        if task is None:
            declaring = self._app.topic(
                topic, partitions=self._settings.reply_partitions, value_type=bytes
            ).maybe_declare()
            task = self._declared[topic] = asyncio.ensure_future(declaring)
        try:
            await asyncio.shield(task)
        except Exception:
            self._declared.pop(topic, None)  # try again with the next publish
            raise


_TRANSIENT = (KafkaConnectionError, KafkaTimeoutError)
"""The broker unreachable for now (aiokafka does not mark its timeout ``retriable``)."""


def _transient(exc: KafkaError) -> bool:
    """Worth retrying: aiokafka's ``retriable`` flag, or the broker unreachable for now."""
    return bool(getattr(exc, "retriable", False)) or isinstance(exc, _TRANSIENT)
