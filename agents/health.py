"""The prober: one per deployment, because faust runs this timer on the leader only."""

from __future__ import annotations

from typing import Any

import faust

from agents.intake import Probes


def register(app: faust.App, interval_s: float, runtime: Probes) -> Any:
    @app.timer(interval=interval_s, on_leader=True, name="turnout-prober")
    async def probe_backends() -> None:
        await runtime.probe_round()

    return probe_backends
