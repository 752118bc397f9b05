"""A client's ``default_priority`` orders its waiting requests like a priority they set."""

from __future__ import annotations

import asyncio
import time

from faust.types import TP

from schemas.types import Request
from tests.unit.test_dispatch import RecordingPublisher, drain, own
from turnout import config as cfg
from turnout.core.admission import Record
from turnout.settings import Settings
from turnout.testing.fake import ScriptedBackendClient
from turnout.worker.dispatch import Dispatcher

CONFIG = cfg.loads(
    """
backends:
  - {id: a, protocol: openai, base_url: "http://a", models: [echo], max_concurrency: 1}
routes:
  only-a: {targets: [{backend: a, model: echo}]}
clients:
  batch: {default_priority: 0}
  pager: {default_priority: 9}
default_route: only-a
""",
    env={},
)
TP0 = TP("turnout.requests", 0)


def record(offset: int, client: str, **fields: int) -> Record:
    req = Request(
        id=f"{client}-{offset}",
        client_id=client,
        kind="chat",
        model="only-a",
        body={"messages": [{"role": "user", "content": "hi"}]},
        **fields,
    )
    return Record(
        topic="turnout.requests",
        partition=0,
        offset=offset,
        timestamp_ms=int(time.time() * 1000),
        key=client.encode(),
        value=req.to_wire(),
    )


async def test_waiting_requests_without_a_priority_go_by_their_clients_default() -> None:
    """pager's requests (default 9) overtake batch's (default 0) and an explicit 5."""
    pub = RecordingPublisher()
    d = Dispatcher(
        settings=Settings(),
        config=CONFIG,
        client=ScriptedBackendClient(delay_s={"a": 0.05}),
        publisher=pub,
    )
    own(d)
    await d.submit(TP0, record(0, "batch"), lambda: None)  # holds a's only slot
    await asyncio.sleep(0.01)
    await d.submit(TP0, record(1, "batch"), lambda: None)
    await d.submit(TP0, record(2, "batch", priority=5), lambda: None)
    await d.submit(TP0, record(3, "pager"), lambda: None)
    await drain(d)
    assert [reply.id for _, reply in pub.replies] == ["batch-0", "pager-3", "batch-2", "batch-1"]
