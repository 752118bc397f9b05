"""The publisher retries what is transient (by aiokafka's flag and classes) and gives up
on the rest, so the dispatcher can dead-letter instead of waiting forever."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    TopicAuthorizationFailedError,
)
from faust.exceptions import ProducerSendError

from turnout.settings import Settings
from turnout.worker import publisher as publisher_mod
from turnout.worker.publisher import Publisher, PublishFailed


class Producer:
    def __init__(self, errors):
        self.errors = list(errors)
        self.sent = 0
        self.attempts = 0

    async def send_and_wait(self, topic, key, value, **kwargs):
        self.attempts += 1
        if self.errors:
            exc = self.errors.pop(0)
            wrapped = ProducerSendError("send failed")  # faust wraps the cause like this
            wrapped.__cause__ = exc
            raise wrapped
        self.sent += 1


class App:
    def __init__(self, producer):
        self.producer = producer


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    real = asyncio.sleep
    monkeypatch.setattr(publisher_mod.asyncio, "sleep", lambda s: real(0))


@pytest.mark.parametrize(
    "transient", [NotEnoughReplicasError(), KafkaConnectionError(), KafkaTimeoutError()]
)
async def test_transient_errors_are_retried_until_the_record_is_on_the_broker(transient):
    """A broker briefly away (or short of replicas) costs retries, not the record."""
    producer = Producer([transient, transient])
    pub = Publisher(App(producer), Settings())
    await pub.publish("t", b"k", b"v", [], declare=False)
    assert (producer.attempts, producer.sent) == (3, 1)


@pytest.mark.parametrize("fatal", [MessageSizeTooLargeError(), TopicAuthorizationFailedError()])
async def test_other_errors_fail_at_once(fatal):
    """A refusal retrying cannot fix raises PublishFailed naming it, after one attempt."""
    producer = Producer([fatal])
    pub = Publisher(App(producer), Settings())
    with pytest.raises(PublishFailed, match=type(fatal).__name__):
        await pub.publish("t", b"k", b"v", [], declare=False)
    assert producer.attempts == 1
