"""TrackedConsumer: installed on the app, and fetch batching reaches aiokafka's fetcher."""

from __future__ import annotations

from collections.abc import Iterator

import faust
import pytest
from faust.types import TP

from streams import consumer
from turnout.batching import BATCHED, FetchBatching

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
    consumer.install(app, frozenset({REQUESTS.topic}), lambda tp: None)

    @app.agent(topic)
    async def route(stream: faust.StreamT[bytes]) -> None:
        async for _ in stream:
            pass

    app.finalize()
    app.topics._tp_index[REQUESTS].add(topic)
    app.flow_control.resume()
    yield app


def test_the_worker_gets_the_tracked_consumer(app: faust.App) -> None:
    assert isinstance(app.consumer, consumer.TrackedConsumer)
    assert app.consumer.tracked_topics == frozenset({REQUESTS.topic})


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
