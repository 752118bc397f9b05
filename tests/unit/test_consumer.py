"""The fetch loop's fast hand-over, and fetch batching reaching aiokafka's fetcher.

``TrackedConsumer._can_deliver_now`` reads faust internals (rebalance and recovery
flags, flow control, the producer buffer, the conductor's index and stream
queues). These tests pin that those internals still exist and mean what the fast
path assumes; no broker needed.
"""

from __future__ import annotations

from collections.abc import Iterator

import faust
import pytest
from faust.types import TP

from streams import consumer
from turnout.core.batching import BATCHED, FetchBatching

REQUESTS = TP("requests", 0)


@pytest.fixture
def app() -> Iterator[faust.App]:
    app = faust.App(
        "test-consumer",
        broker="kafka://127.0.0.1:1",
        store="memory://",
        value_serializer="raw",
        stream_buffer_maxsize=2,
    )
    topic = app.topic(REQUESTS.topic, value_type=bytes)
    consumer.install(app, frozenset({REQUESTS.topic}), lambda tp: None, lambda positions: None)

    @app.agent(topic)
    async def route(stream: faust.StreamT[bytes]) -> None:
        async for _ in stream:
            pass

    app.finalize()
    app.topics._tp_index[REQUESTS].add(topic)
    app.flow_control.resume()
    yield app


def test_a_request_record_goes_straight_to_its_stream(app: faust.App) -> None:
    assert isinstance(app.consumer, consumer.TrackedConsumer)
    assert app.consumer._can_deliver_now(REQUESTS)


def test_other_topics_keep_fausts_hand_over(app: faust.App) -> None:
    assert not app.consumer._can_deliver_now(TP("turnout-done-changelog", 0))


def test_not_during_a_rebalance(app: faust.App) -> None:
    app.rebalancing = True
    assert not app.consumer._can_deliver_now(REQUESTS)
    app.rebalancing = False
    assert app.consumer._can_deliver_now(REQUESTS)


def test_not_during_table_recovery(app: faust.App) -> None:
    app.in_recovery = True
    assert not app.consumer._can_deliver_now(REQUESTS)


def test_not_while_the_consumer_suspends_flow_for_a_rebalance(app: faust.App) -> None:
    app.consumer.stop_flow()
    assert not app.consumer._can_deliver_now(REQUESTS)
    app.consumer.resume_flow()
    assert app.consumer._can_deliver_now(REQUESTS)


def test_not_while_the_streams_flow_control_is_suspended(app: faust.App) -> None:
    app.flow_control.suspend()
    assert not app.consumer._can_deliver_now(REQUESTS)


def test_not_while_a_stream_queue_is_full(app: faust.App) -> None:
    (channel,) = app.topics._tp_index[REQUESTS]
    while not channel.queue.full():
        channel.queue.put_nowait(object())
    assert not app.consumer._can_deliver_now(REQUESTS)


def test_not_while_fausts_producer_buffer_is_over_its_limit(app: faust.App) -> None:
    buffer = app.producer.buffer
    for _ in range(buffer.max_messages + 1):
        buffer.pending.put_nowait(object())
    assert not app.consumer._can_deliver_now(REQUESTS)


def test_fetch_batching_sets_the_fetchers_min_bytes(app: faust.App) -> None:
    class Fetcher:
        _fetch_min_bytes = 1

    class AIOKafkaConsumer:
        _fetcher = Fetcher()

    cons = app.consumer
    cons.fetch_batching = FetchBatching(above_rps=100, window_s=0.5)
    cons._thread._consumer = AIOKafkaConsumer()
    cons._batch_fetches(0, 0.0)
    cons._batch_fetches(500, 1.0)  # 500/s
    assert AIOKafkaConsumer._fetcher._fetch_min_bytes == BATCHED
    cons._batch_fetches(0, 2.0)
    assert AIOKafkaConsumer._fetcher._fetch_min_bytes == 1


def test_the_fast_hand_over_can_be_turned_off() -> None:
    """TURNOUT_FAST_HANDOVER=0 keeps faust's own race for every record."""
    app = faust.App("test-consumer-off", broker="kafka://127.0.0.1:1", store="memory://",
                    value_serializer="raw")  # fmt: skip
    consumer.install(app, frozenset({REQUESTS.topic}), lambda tp: None, lambda p: None,
                     fast_handover=False)  # fmt: skip
    app.finalize()
    app.flow_control.resume()
    assert not app.consumer._can_deliver_now(REQUESTS)


def test_an_app_without_a_recovery_flag_counts_as_recovering(
    app: faust.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery detection fails closed: no flag, no fast hand-over."""
    from faust.types.app import AppT

    assert app.consumer._can_deliver_now(REQUESTS)
    monkeypatch.delattr(AppT, "in_recovery")
    assert not hasattr(app, "in_recovery")
    assert not app.consumer._can_deliver_now(REQUESTS)
