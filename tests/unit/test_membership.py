"""Static group membership: which instance id a worker joins with, and leaving on stop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams.consumer import leave_group_on_stop
from turnout.settings import Settings


def test_auto_ids_differ_per_data_dir_and_stay_the_same_across_restarts() -> None:
    """auto: one id per (host, data dir); the same worker gets the same id again."""
    a = Settings(data_dir="/srv/w1").group_instance_id("node-7")
    b = Settings(data_dir="/srv/w2").group_instance_id("node-7")
    assert a is not None and b is not None and a != b
    assert a == Settings(data_dir="/srv/w1").group_instance_id("node-7")
    assert a.startswith("node-7-")


def test_an_explicit_id_is_used_and_off_means_dynamic_membership() -> None:
    """TURNOUT_INSTANCE_ID=pod-3 joins as pod-3; off joins without an instance id."""
    assert Settings.from_env({"TURNOUT_INSTANCE_ID": "pod-3"}).group_instance_id("h") == "pod-3"
    assert Settings.from_env({"TURNOUT_INSTANCE_ID": "off"}).group_instance_id("h") is None


def test_a_host_name_with_odd_characters_still_gives_a_legal_id() -> None:
    """Kafka allows [A-Za-z0-9._-] in an instance id."""
    got = Settings(data_dir="/d").group_instance_id("my host/1")
    assert got is not None and got.startswith("my-host-1-")


def test_an_illegal_explicit_id_is_refused_naming_the_variable() -> None:
    """A bad id fails at start, not at the broker."""
    with pytest.raises(ValueError, match="TURNOUT_INSTANCE_ID"):
        Settings.from_env({"TURNOUT_INSTANCE_ID": "a b"})


class FakeCoordinator:
    def __init__(self) -> None:
        self._group_instance_id: str | None = "w-1"


class FakeConsumer:
    """Only what leave_group_on_stop touches: aiokafka's attribute names."""

    def __init__(self, instance_id: str | None) -> None:
        self._group_instance_id = instance_id
        self._coordinator: Any = FakeCoordinator()
        self.seen_at_stop: list[str | None] = []

    async def stop(self) -> None:
        self.seen_at_stop.append(self._coordinator._group_instance_id)


def test_a_static_member_leaves_the_group_on_a_graceful_stop() -> None:
    """stop() clears the coordinator's instance id first, so aiokafka sends LeaveGroup."""
    consumer = FakeConsumer("w-1")
    leave_group_on_stop(consumer)
    asyncio.run(consumer.stop())
    assert consumer.seen_at_stop == [None]


def test_a_dynamic_member_is_left_alone() -> None:
    """Without an instance id aiokafka already leaves on stop: nothing is wrapped."""
    consumer = FakeConsumer(None)
    original = consumer.stop
    leave_group_on_stop(consumer)
    assert consumer.stop == original
