"""The faust app, configured from Settings."""

from __future__ import annotations

import socket

import faust

from turnout.kafka.security import SecuritySettings
from turnout.settings import Settings


def create_app(settings: Settings) -> faust.App:
    return faust.App(
        settings.app_id,
        # A cluster's bootstrap list (h1:p1,h2:p2) is one URL per server for faust.
        broker=";".join(f"kafka://{hp.strip()}" for hp in settings.bootstrap.split(",")),
        broker_credentials=SecuritySettings.from_env().faust_credentials(),
        store=settings.store,
        datadir=settings.data_dir,
        key_serializer="raw",
        value_serializer="raw",
        # turnout acks out of order and commits through its own trackers
        # (streams/consumer.py); waiting for every in-flight request to be
        # acked before a rebalance could block it for a whole request deadline.
        stream_wait_empty=False,
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        # Static membership: after a kill -9, the restarted worker rejoins under the same
        # instance id and the broker hands it its partitions back at once (no rebalance,
        # no wait for the dead member's session to expire). On a graceful stop the
        # worker still leaves the group (streams/consumer.py), so SIGTERM hands its
        # partitions over at once as before. The cost: a crashed worker that is not
        # restarted keeps its partitions for a whole session timeout, as it did with
        # dynamic membership; and two live workers must never share an instance id (the
        # broker fences the older one).
        consumer_group_instance_id=settings.group_instance_id(socket.gethostname()),
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 4),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=1,
        topic_partitions=settings.request_partitions,
        topic_allow_declare=True,
        # The worker serves /metrics and its status page itself (turnout/worker/web.py).
        web_enabled=False,
    )
