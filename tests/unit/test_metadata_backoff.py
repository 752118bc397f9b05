"""aiokafka refreshes metadata no more often than its retry backoff (kafka/metadata_backoff.py)."""

from __future__ import annotations

import asyncio
import doctest

from aiokafka.client import AIOKafkaClient

from turnout.kafka import metadata_backoff


def test_the_decision_doctests():
    assert doctest.testmod(metadata_backoff).failed == 0


async def test_refreshes_against_an_unreachable_broker_are_spaced_by_the_backoff():
    """With nothing listening, a refresh fails at once; asked in a loop (as aiokafka's
    sender asks while a leader is unknown) it now runs at most once per backoff."""
    metadata_backoff.install()
    metadata_backoff.install()  # idempotent: wrapped once
    client = AIOKafkaClient(bootstrap_servers="127.0.0.1:1", retry_backoff_ms=100)
    loop = asyncio.get_running_loop()
    started = loop.time()
    refreshes = 0
    while loop.time() - started < 1.0:
        await client._metadata_update(client.cluster, set())
        refreshes += 1
    await client.close()
    assert 1 < refreshes <= 11, refreshes  # unwrapped: thousands
