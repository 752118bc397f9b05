"""Freed capacity wakes one waiting request, and reaches every waiter that can use it.

The dispatcher with a scripted backend and a recording publisher: no Kafka, real asyncio.
"""

import asyncio
import time

from faust.types import TP

from turnout import config as cfg
from turnout.settings import Settings
from turnout.testing.fake import ScriptedBackendClient
from turnout.worker.dispatch import Dispatcher

from .test_dispatch import RecordingPublisher, drain, own, record

CONFIG = cfg.loads(
    """
backends:
  - {id: a, protocol: openai, base_url: "http://a", models: [echo], max_concurrency: 1}
  - {id: b, protocol: openai, base_url: "http://b", models: [echo], max_concurrency: 1}
routes:
  only-a: {targets: [{backend: a, model: echo}]}
  only-b: {targets: [{backend: b, model: echo}]}
""",
    env={},
)
TP0 = TP("turnout.requests", 0)


class TimedPublisher(RecordingPublisher):
    def __init__(self):
        super().__init__()
        self.at: dict[str, float] = {}

    async def reply(self, topic, reply):
        self.at[reply.id] = time.monotonic()
        await super().reply(topic, reply)


def dispatcher(delays):
    pub = TimedPublisher()
    d = Dispatcher(settings=Settings(), config=CONFIG, client=ScriptedBackendClient(delay_s=delays),
                   publisher=pub)  # fmt: skip
    own(d)
    waits = []
    wait = d.chooser.wait_for_change

    async def counted(priority, timeout_s):
        waits.append(priority)
        return await wait(priority, timeout_s)

    d.chooser.wait_for_change = counted
    return d, pub, waits


async def test_each_finished_call_wakes_one_waiter():
    """Five requests wait for a's one slot: each waits once. Waking them all on every
    finished call made the four that lost look and wait again (15 waits)."""
    d, pub, waits = dispatcher({"a": 0.02})
    for i in range(6):
        await d.submit(TP0, record(i, model="only-a"), lambda: None)
    await drain(d)
    assert [r.status for _, r in pub.replies] == ["ok"] * 6
    assert len(waits) == 5


async def test_a_unit_the_woken_request_cannot_use_goes_on_to_the_next():
    """b frees up; the most urgent waiter wants a (still busy), so the unit passes to the
    next waiter, which takes it at once instead of waiting for a."""
    d, pub, waits = dispatcher({"a": 1.0, "b": 0.05})
    start = time.monotonic()
    await d.submit(TP0, record(0, model="only-a"), lambda: None)
    await d.submit(TP0, record(1, model="only-b"), lambda: None)
    await d.submit(TP0, record(2, model="only-a", priority=9), lambda: None)
    await d.submit(TP0, record(3, model="only-b", priority=1), lambda: None)
    await asyncio.sleep(0.5)
    assert pub.at.get("r3", float("inf")) - start < 0.5  # not after a's call (1 s)
    await drain(d)
    assert sorted(r.id for _, r in pub.replies) == ["r0", "r1", "r2", "r3"]
    assert {r.status for _, r in pub.replies} == {"ok"}
    # r2 was offered each of b's two units (passing each on) before a freed: no busy loop.
    assert sorted(waits) == [1, 9, 9, 9]


async def test_a_unit_nobody_waiting_can_use_stops():
    """Two waiters for a; b's unit visits each once and stops."""
    d, pub, waits = dispatcher({"a": 0.3, "b": 0.05})
    await d.submit(TP0, record(0, model="only-a"), lambda: None)
    await d.submit(TP0, record(1, model="only-b"), lambda: None)
    await d.submit(TP0, record(2, model="only-a"), lambda: None)
    await d.submit(TP0, record(3, model="only-a"), lambda: None)
    await asyncio.sleep(0.2)  # b finished at 0.05
    assert len(waits) == 4  # each waited, was offered b's unit, waited again
    await drain(d)
    assert [r.status for _, r in pub.replies].count("ok") == 4
