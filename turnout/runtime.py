"""What a worker holds while it runs: the HTTP session, publisher and dispatcher.

``build(settings)`` wires a faust app: config, topics, the tracked consumer,
the agent, and the rebalance hook. The runtime starts inside the agent (on the
event loop) and stops when the agent stops.
"""

from __future__ import annotations

import os
from typing import Any

import faust
from faust.types import TP

from streams import consumer
from streams import tables as tables_mod
from streams.app import create_app
from streams.settings import Settings
from streams.tables import Tables
from streams.topics import declare
from turnout import config as config_mod
from turnout import logs
from turnout.backends.http import HttpBackendClient, new_session
from turnout.config import Config, Secret
from turnout.dispatch import Dispatcher
from turnout.publisher import Publisher

log = logs.get(__name__)


class Runtime:
    def __init__(self, app: faust.App, settings: Settings, config: Config, tables: Tables) -> None:
        self._app = app
        self._tables = tables
        self._settings = settings
        self._config = config
        self._dispatcher: Dispatcher | None = None
        self._client: HttpBackendClient | None = None

    @property
    def dispatcher(self) -> Dispatcher:
        assert self._dispatcher is not None, "Runtime.start() has not run"
        return self._dispatcher

    async def start(self) -> None:
        if self._dispatcher is not None:
            return
        keys: dict[str, Secret] = {}
        for b in self._config.backends:
            key = b.api_key(os.environ)
            if key is not None:
                keys[b.id] = key
        self._client = HttpBackendClient(new_session(), keys)
        self._dispatcher = Dispatcher(
            settings=self._settings,
            config=self._config,
            client=self._client,
            publisher=Publisher(self._app, self._settings),
            done=self._tables.done,
        )
        log.info(
            "worker_started",
            request_topic=self._settings.request_topic,
            backends=[b.id for b in self._config.backends],
            max_in_flight=self._settings.max_in_flight,
        )

    async def stop(self) -> None:
        if self._dispatcher is not None:
            await self._dispatcher.stop()
        if self._client is not None:
            await self._client.close()
        self._dispatcher = None
        self._client = None

    def committable(self, tp: TP) -> int | None:
        return None if self._dispatcher is None else self._dispatcher.committable(tp)

    async def on_revoked(self, sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        if self._dispatcher is not None:
            self._dispatcher.revoke(revoked)
        log.info(
            "partitions_revoked", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in revoked)
        )


def build(settings: Settings) -> faust.App:
    from agents import outcomes, router

    config = config_mod.load(settings.config_path)
    os.makedirs(settings.data_dir, exist_ok=True)
    app = create_app(settings)
    topics = declare(app, settings)
    tables = tables_mod.declare(app, settings)
    runtime = Runtime(app, settings, config, tables)
    consumer.install(app, frozenset({settings.request_topic}), runtime.committable)
    router.register(app, topics.requests, runtime)
    outcomes.register(app, topics.outcomes, tables.done)
    app.on_partitions_revoked.connect(runtime.on_revoked)
    return app
