"""turnout dlq against a real worker: count, show, and replay dead letters after a fix."""

from __future__ import annotations

import asyncio

import orjson

from tests.integration.harness import (
    BOOTSTRAP,
    chat_request,
    collect_replies,
    config_for,
    probing_env,
    record_count,
    run_turnout,
    served_calls,
    turnout_json,
    unique,
)
from turnout.client import RequestPublisher, ensure_topics


async def test_dead_letters_are_counted_shown_and_replayed_after_a_fix(spawn, names):
    """Unknown-model requests, fixed by --to-route, are answered once; garbage fails again."""
    backend = spawn.backend()
    client = unique("c")
    reply_topic = f"turnout.replies.{client}"
    dlq = unique("it.dlq")
    health = unique("it.health")
    await ensure_topics(BOOTSTRAP, [names.request_topic], 2)
    await ensure_topics(BOOTSTRAP, [reply_topic, dlq], 1)
    worker = spawn.worker(
        config_for(("b", "openai", backend.url)),
        app_id=names.app_id,
        request_topic=names.request_topic,
        extra_env={"TURNOUT_DEAD_LETTER_TOPIC": dlq, **probing_env(health)},
    )
    env = worker.env
    wrong = [chat_request(f"w{i}", client, f"q{i}", model="gpt-17") for i in range(3)]
    pub = RequestPublisher(BOOTSTRAP, names.request_topic)
    await pub.start()
    try:
        for r in wrong:
            await pub.send(r)
        await pub.send_raw(b"\x00\x01 not json at all", client.encode())
        got = await collect_replies({reply_topic: {r.id for r in wrong}}, 60)
    finally:
        await pub.stop()
    assert {rs[-1].error.code for rs in got[reply_topic].values()} == {"unknown_model"}
    for _ in range(100):
        if await record_count(dlq) >= 4:
            break
        await asyncio.sleep(0.1)

    stats = await turnout_json("dlq", "stats", env=env)
    assert {c: s["count"] for c, s in stats["codes"].items()} == {
        "unknown_model": 3,
        "invalid_request": 1,
    }

    rc, out, _ = await run_turnout("dlq", "show", "--code", "unknown_model", "--json", env=env)
    shown = [orjson.loads(line) for line in out.splitlines()]
    assert rc == 0 and [s["request_id"] for s in shown] == ["w0", "w1", "w2"]
    assert {s["original_json"]["model"] for s in shown} == {"gpt-17"}
    rc, text, _ = await run_turnout("dlq", "show", "--code", "invalid_request", env=env)
    assert "original (not JSON, 18 bytes, base64): AAEgbm90IGpzb24gYXQgYWxs" in text
    garbage = text.split()[0]  # partition:offset of the garbage's dead letter

    calls = await served_calls(backend, health)
    fixed = await turnout_json(
        "dlq", "replay", "--code", "unknown_model", "--to-route", "default", env=env
    )
    assert fixed["_rc"] == 0, fixed["_stderr"]
    assert (fixed["published"], fixed["answered_ok"], fixed["failed"]) == (3, 3, {})
    got = await collect_replies({reply_topic: {r.id for r in wrong}}, 10)
    assert all([x.status for x in rs] == ["error", "ok"] for rs in got[reply_topic].values())

    again = await turnout_json(
        "dlq", "replay", "--code", "unknown_model", "--to-route", "default", env=env
    )
    assert (again["answered_ok"], again["skipped_as_done"]) == (0, 3)

    still_bad = await turnout_json("dlq", "replay", "--offsets", garbage, env=env)
    assert still_bad["failed"] == {"dead_lettered:invalid_request": 1}
    assert still_bad["_rc"] == 1
    assert await served_calls(backend, health) == calls + 3
