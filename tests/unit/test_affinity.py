"""Cache affinity: the preferred backend wins while it can serve, and the dispatcher
records and reuses it per client and cache key."""

import random
import time

import pytest

from schemas.types import Request
from tests.unit.test_dispatch import TP0, RecordingPublisher, drain
from tests.unit.test_routing import BACKENDS
from turnout import config as cfg
from turnout.config import Route, Target
from turnout.core.admission import Record
from turnout.core.affinity import affinity_key, table_key
from turnout.core.routing import RouteRequest, Snapshot, decide
from turnout.settings import Settings
from turnout.testing.fake import ScriptedBackendClient
from turnout.worker.dispatch import Dispatcher
from turnout.worker.state import MemoryTable

AB = Route(targets=[Target(backend="a", model="m"), Target(backend="b", model="m")])


@pytest.mark.parametrize(
    ("prefer", "in_flight", "excluded", "tried", "expected"),
    [
        (None, {}, (), (), "a"),  # round robin, turn 0
        ("b", {}, (), (), "b"),  # affinity wins
        ("b", {"b": 1}, (), (), "a"),  # b is full (max 1): the policy decides
        ("b", {}, ("b",), (), "a"),  # b is unhealthy
        ("b", {}, (), ("b",), "a"),  # b failed this request already
        ("z", {}, (), (), "a"),  # a backend the route does not have
    ],
)
def test_the_preferred_backend_wins_only_while_it_can_serve(
    prefer, in_flight, excluded, tried, expected
):
    """Affinity never overrides health, caps or a failed attempt."""
    snap = Snapshot(BACKENDS, in_flight, excluded=frozenset(excluded), turn=0, latency_ms={})
    d = decide(AB, snap, RouteRequest(), tried=frozenset(tried), rng=random.Random(1),
               prefer=prefer)  # fmt: skip
    assert d is not None and d.backend == expected
    assert ("affinity" in d.reason) == (expected == prefer)


@pytest.mark.parametrize(
    ("body", "metadata", "expected"),
    [
        ({"prompt_cache_key": "k"}, {}, "k"),
        ({}, {"session": "s"}, "s"),
        ({"prompt_cache_key": ""}, {"session": "s"}, "s"),
        ({"prompt_cache_key": 3}, {}, None),
        ({}, {}, None),
    ],
)
def test_the_affinity_key(body, metadata, expected):
    """prompt_cache_key first, then metadata.session."""
    assert affinity_key(body, metadata) == expected


CONFIG = """
backends:
  - {id: a, protocol: openai, base_url: "http://a", models: [echo]}
  - {id: b, protocol: openai, base_url: "http://b", models: [echo]}
routes:
  default: {targets: [{backend: a, model: echo}, {backend: b, model: echo}],
            cache_affinity: %s}
"""


def record(offset, key):
    body = {"messages": [{"role": "user", "content": "x"}], "prompt_cache_key": key}
    req = Request(id=f"r{offset}", client_id="c", kind="chat", model="default", body=body)
    now = int(time.time() * 1000)
    return Record(topic="turnout.requests", partition=0, offset=offset, timestamp_ms=now,
                  key=b"c", value=req.to_wire())  # fmt: skip


async def serve(affinity_on: bool, table: MemoryTable) -> list[str]:
    config = cfg.loads(CONFIG % ("true" if affinity_on else "false"), env={})
    pub = RecordingPublisher()
    d = Dispatcher(settings=Settings(), config=config, client=ScriptedBackendClient(),
                   publisher=pub, affinity=table)  # fmt: skip
    d.assigned({TP0})
    d.anchor({TP0: 0})  # owns TP0, read from offset 0
    for i in range(4):  # one at a time: round robin would alternate a, b, a, b
        await d.submit(TP0, record(i, "tenant-7"), lambda: None)
        await drain(d)
    return [reply.backend for _, reply in pub.replies]


async def test_requests_sharing_a_cache_key_stay_on_one_backend():
    """With cache_affinity, every request with the key goes where the first one went."""
    table = MemoryTable()
    served = await serve(True, table)
    assert len(set(served)) == 1
    assert table[table_key("c", "tenant-7")] == served[0].encode()


async def test_without_affinity_the_policy_alone_decides():
    """Round robin spreads the same key over both backends and records nothing."""
    table = MemoryTable()
    assert set(await serve(False, table)) == {"a", "b"}
    assert table == {}


async def test_the_recorded_placement_survives_a_new_dispatcher():
    """A restarted worker reads the table (restored from its changelog) and keeps the placement."""
    table = MemoryTable({table_key("c", "tenant-7"): b"b"})
    assert await serve(True, table) == ["b", "b", "b", "b"]
