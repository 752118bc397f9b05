"""The gateway never stops silently, on the real broker: a status write the broker refuses
for good (a record over the status topic's max.message.bytes) fails /readyz with the
reason and is logged, instead of being retried forever behind a 200."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.harness import (
    BOOTSTRAP,
    GatewayProcess,
    MockBackend,
    Worker,
    config_for,
    unique,
)


async def test_a_status_write_refused_for_good_fails_readiness(tmp_path):
    """Replies too large for the status topic: /readyz answers 503 naming the error."""
    backend = MockBackend(tmp_path)
    request_topic = unique("gw.requests")
    worker = Worker(
        tmp_path,
        config_for(("mock-openai", "openai", backend.url)),
        app_id=unique("gw-app"),
        request_topic=request_topic,
    )
    gateway_id = unique("gw")
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:  # the status topic exists already, with a small message size limit
        await admin.create_topics(
            [
                NewTopic(
                    f"turnout.gateway-status.{gateway_id}",
                    1,
                    1,
                    topic_configs={"cleanup.policy": "compact", "max.message.bytes": "3000"},
                )
            ]
        )
    finally:
        await admin.close()
    gateway = GatewayProcess(
        tmp_path,
        config_path=worker.config_path,
        request_topic=request_topic,
        gateway_id=gateway_id,
        extra_env={"TURNOUT_GATEWAY_STATUS_RETRY_S": "5"},
    )
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gateway.url}/readyz") as r:
                assert r.status == 200
            body = {
                "model": "default",
                "messages": [{"role": "user", "content": "long " * 1200}],  # echoed: > 3000 B
            }
            async with http.post(f"{gateway.url}/v1/chat/completions", json=body) as r:
                assert r.status == 200, await r.text()  # the caller still gets its answer
            status, reason = 200, None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                async with http.get(f"{gateway.url}/readyz") as r:
                    status, doc = r.status, await r.json()
                if status != 200:
                    reason = doc.get("reason")
                    break
                await asyncio.sleep(0.5)
        print(f"\ngateway readiness: /readyz {status}, reason {reason!r}")
        assert status == 503 and "MessageSizeTooLargeError" in (reason or ""), reason
        lines = [
            orjson.loads(x) for x in gateway.log_path.read_bytes().splitlines() if x[:1] == b"{"
        ]
        failed = [x for x in lines if x.get("event") == "gateway_status_write_failed"]
        assert failed and failed[0]["retriable"] is False
    finally:
        for p in (gateway, worker, backend):
            p.stop()
