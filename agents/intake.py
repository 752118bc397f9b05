"""What the agents need of the worker: a small protocol, so agents never import the runtime.

``streams/runtime.py`` (the composition root) builds the ``Runtime`` that provides
these and registers the agents with it; the agents depend on nothing above them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from faust.types import TP

from turnout.core.admission import Record


class Submit(Protocol):
    """The dispatcher as the request agent sees it."""

    def pin(self, tp: TP, offset: int) -> None: ...

    async def submit(self, tp: TP, record: Record, ack: Callable[[], object]) -> None: ...


class Intake(Protocol):
    """Where the request agent hands its records: started once, stopped when it ends."""

    @property
    def dispatcher(self) -> Submit: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Probes(Protocol):
    """What the leader's probe timer calls each round."""

    async def probe_round(self) -> None: ...
