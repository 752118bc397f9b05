"""The router path on a real broker with real mock-backend processes."""

import asyncio

from tests.integration.harness import BOOTSTRAP, chat_request, collect_replies, config_for, unique
from turnout.client import RequestPublisher, ensure_topics

REPLY_PREFIX = "turnout.replies."


async def test_a_thousand_requests_from_ten_clients_are_all_answered(spawn, names):
    """1,000 requests from 10 clients each get one ok reply, on their own topic, with their body."""
    backend = spawn.backend()
    config = config_for(
        ("mock-openai", "openai", backend.url), ("mock-ollama", "ollama", backend.url)
    )
    clients = [unique("c") for _ in range(10)]
    await ensure_topics(BOOTSTRAP, [names.request_topic], 4)
    await ensure_topics(BOOTSTRAP, [REPLY_PREFIX + c for c in clients], 2)
    spawn.worker(config, app_id=names.app_id, request_topic=names.request_topic)

    expected: dict[str, dict[str, str]] = {REPLY_PREFIX + c: {} for c in clients}
    pub = RequestPublisher(BOOTSTRAP, names.request_topic)
    await pub.start()
    try:
        sends = []
        for i in range(100):
            for c in clients:
                rid = f"{c}-{i}"
                expected[REPLY_PREFIX + c][rid] = f"echo: hello {rid}"
                sends.append(pub.send(chat_request(rid, c, f"hello {rid}")))
        await asyncio.gather(*sends)
    finally:
        await pub.stop()

    got = await collect_replies({t: set(ids) for t, ids in expected.items()}, timeout_s=120)
    backends_used = set()
    for topic, want in expected.items():
        replies = got[topic]
        assert set(replies) == set(want), f"{topic}: missing {len(set(want) - set(replies))}"
        for rid, rs in replies.items():
            assert {r.id for r in rs} == {rid}
            reply = rs[0]
            assert reply.status == "ok", reply.error
            assert reply.body["choices"][0]["message"]["content"] == want[rid]
            assert reply.route == "default"
            assert reply.attempts == 1
            backends_used.add(reply.backend)
    assert backends_used == {"mock-openai", "mock-ollama"}
