"""The topics turnout reads and writes."""

from __future__ import annotations

import dataclasses

import faust

from turnout.client import REQUEST_TOPIC_CONFIGS
from turnout.settings import Settings


@dataclasses.dataclass(frozen=True)
class Topics:
    requests: faust.TopicT
    dead_letter: faust.TopicT


def declare(app: faust.App, settings: Settings) -> Topics:
    return Topics(
        requests=app.topic(
            settings.request_topic,
            partitions=settings.request_partitions,
            key_type=bytes,
            value_type=bytes,
            config=dict(REQUEST_TOPIC_CONFIGS),
        ),
        dead_letter=app.topic(
            settings.dead_letter_topic, partitions=1, key_type=bytes, value_type=bytes
        ),
    )
