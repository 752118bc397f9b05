"""turnout status: the request buffer's depth per partition, and what workers report."""

from __future__ import annotations

import asyncio
import os

from tests.integration.harness import (
    BOOTSTRAP,
    chat_request,
    collect_replies,
    config_for,
    probing_env,
    run_turnout,
    turnout_json,
    unique,
)
from turnout.client import RequestPublisher, ensure_topics
from turnout.worker.metrics import Metrics
from turnout.worker.web import bound_port, build_app, start_web


async def test_status_shows_the_backlog_until_a_worker_drains_it(spawn, names, tmp_path):
    """Requests published with no worker are lag; once a worker answers them, lag is zero."""
    backend = spawn.backend()
    client = unique("c")
    reply_topic = f"turnout.replies.{client}"
    await ensure_topics(BOOTSTRAP, [names.request_topic], 2)
    await ensure_topics(BOOTSTRAP, [reply_topic], 1)
    requests = [chat_request(f"s{i}", client, f"q{i}") for i in range(12)]
    pub = RequestPublisher(BOOTSTRAP, names.request_topic)
    await pub.start()
    try:
        for r in requests:
            await pub.send(r)
    finally:
        await pub.stop()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": BOOTSTRAP,
        "TURNOUT_APP_ID": names.app_id,
        "TURNOUT_REQUEST_TOPIC": names.request_topic,
    }
    metrics = Metrics(backends=["alpha", "beta"], request_topic=names.request_topic)
    metrics.backend_state("alpha", "healthy")
    runner = await start_web(build_app(metrics), "127.0.0.1", 0)
    worker_url = f"http://127.0.0.1:{bound_port(runner)}"
    try:
        backlog = await turnout_json("status", "--worker-url", worker_url, env=env)
        text_rc, text, _ = await run_turnout("status", "--worker-url", worker_url, env=env)
    finally:
        await runner.cleanup()
    assert backlog["lag_total"] == 12
    assert [p["committed"] for p in backlog["partitions"]] == [None, None]
    assert set(backlog["workers"][worker_url]["backends"]) == {"alpha", "beta"}
    assert text_rc == 0 and "total lag 12" in text and "alpha=healthy" in text

    spawn.worker(
        config_for(("b", "openai", backend.url)),
        app_id=names.app_id,
        request_topic=names.request_topic,
        partitions=2,
        extra_env=probing_env(unique("it.health"), 30),
    )
    got = await collect_replies({reply_topic: {r.id for r in requests}}, 60)
    assert len(got[reply_topic]) == 12
    for _ in range(40):  # commits follow the replies within the commit interval
        drained = await turnout_json("status", "--worker-url", "http://127.0.0.1:9", env=env)
        if drained["lag_total"] == 0:
            break
        await asyncio.sleep(0.25)
    assert drained["lag_total"] == 0
    assert sum(p["committed"] or 0 for p in drained["partitions"]) == 12
    assert "error" in drained["workers"]["http://127.0.0.1:9"]
