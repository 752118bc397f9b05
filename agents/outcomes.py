"""The outcomes agent: record each request answered ok in the ``done`` table.

Dispatch tasks cannot write tables (faust ties a table write to the event being
iterated), so the dispatcher publishes an outcome to the outcomes topic, on the
request's own partition, and this agent, the single writer of that partition's
``done`` state, records it.
"""

from __future__ import annotations

from typing import Any

import faust


def register(app: faust.App, topic: faust.TopicT, done: faust.Table[bytes, bytes]) -> Any:
    @app.agent(topic, name="turnout-outcomes")
    async def record_outcomes(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            key = event.message.key
            if key is not None and event.message.value is not None:
                done[key] = event.message.value

    return record_outcomes
