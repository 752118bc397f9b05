"""The gateway never stops silently: status writes retry only retriable Kafka errors, within
a bound; anything else fails readiness and is logged, and the batch is read again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    NotEnoughReplicasError,
    TopicAuthorizationFailedError,
    UnsupportedVersionError,
)

from schemas.types import Reply
from turnout.gateway import GatewaySettings
from turnout.gateway.kafka import (
    GatewayKafka,
    StatusRecord,
    StatusWriteFailed,
    now_ms,
    retriable,
)
from turnout.settings import Settings


class Producer:
    """send_and_wait raises the scripted errors, then succeeds; records what was written."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = list(errors)
        self.sent: list[bytes] = []
        self.attempts = 0

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(key)


def gateway(errors: list[Exception], retry_s: float = 30.0) -> tuple[GatewayKafka, Producer]:
    gw = GatewayKafka(Settings(), GatewaySettings(status_retry_s=retry_s))
    producer = Producer(errors)
    gw._producer = producer  # type: ignore[assignment]
    gw.started = True
    return gw, producer


def done() -> StatusRecord:
    return StatusRecord(status="done", client_id="c", updated_ms=now_ms())


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (NotEnoughReplicasError(), True),
        (KafkaConnectionError(), True),
        (TopicAuthorizationFailedError(), False),
        (UnsupportedVersionError(), False),
    ],
)
def test_errors_are_classified_by_aiokafkas_flag_and_class(exc: Exception, expected: bool) -> None:
    """retriable() follows aiokafka's retriable flag (plus the broker being unreachable)."""
    assert retriable(exc) is expected  # type: ignore[arg-type]


async def test_retriable_errors_are_retried_until_the_write_lands() -> None:
    """Two NotEnoughReplicas, then success: written once, stored, still ready."""
    gw, producer = gateway([NotEnoughReplicasError(), NotEnoughReplicasError()])
    await gw.record("r1", done(), retry=True)
    assert producer.sent == [b"r1"] and producer.attempts == 3
    assert gw.lookup("r1") is not None and gw.failure is None


async def test_a_non_retriable_error_is_not_retried_and_fails_readiness() -> None:
    """TopicAuthorizationFailed fails at once, names itself, and keeps memory unchanged."""
    gw, producer = gateway([TopicAuthorizationFailedError()])
    with pytest.raises(StatusWriteFailed):
        await gw.record("r1", done(), retry=True)
    assert producer.attempts == 1
    assert gw.failure is not None and "TopicAuthorizationFailedError" in gw.failure
    assert gw.lookup("r1") is None  # not durable, so not remembered: the re-read writes it
    assert not await gw.ready()


async def test_retriable_errors_give_up_after_the_bound() -> None:
    """A retriable error that outlasts TURNOUT_GATEWAY_STATUS_RETRY_S fails readiness."""
    gw, producer = gateway([NotEnoughReplicasError()] * 100, retry_s=0.5)
    with pytest.raises(StatusWriteFailed):
        await gw.record("r1", done(), retry=True)
    assert 2 <= producer.attempts < 10 and "still failing after 0.5 s" in (gw.failure or "")


class Consumer:
    """Hands out one batch of replies per getmany; records seeks and commits."""

    def __init__(self, batches: list[dict[TopicPartition, list[Any]]]) -> None:
        self.batches = batches
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits: list[dict[TopicPartition, int]] = []

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(0.01)
        return {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.batches.insert(0, {tp: [r for r in BATCH[tp] if r.offset >= offset]})

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


class Rec:
    def __init__(self, offset: int, rid: str) -> None:
        self.offset = offset
        self.value = Reply(id=rid, status="ok", client_id="c").to_wire()


TP = TopicPartition("turnout.replies.gateway-gw", 0)
BATCH = {TP: [Rec(7, "a"), Rec(8, "b")]}


async def test_a_failed_batch_fails_readiness_is_read_again_and_recovers(monkeypatch) -> None:
    """The consumer does not commit past a failed status write: it seeks back and retries."""
    import turnout.gateway.kafka as gk

    real_sleep = asyncio.sleep
    monkeypatch.setattr(gk.asyncio, "sleep", lambda s: real_sleep(min(s, 0.01)))
    gw, producer = gateway([TopicAuthorizationFailedError()])
    consumer = Consumer([dict(BATCH)])
    gw._consumer = consumer  # type: ignore[assignment]
    gw.base = Settings(commit_interval_s=0.0)
    task = asyncio.create_task(gw._consume())
    gw._tasks = [task]
    for _ in range(200):
        if consumer.commits:
            break
        await real_sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert consumer.seeks == [(TP, 7)]
    assert consumer.commits[0] == {TP: 9}
    assert sorted(producer.sent) == [b"a", b"b"]
    assert gw.failure is None
