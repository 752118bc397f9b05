"""Bad input is dead-lettered with a reason, answered where possible, and harms nothing else."""

import orjson
from aiokafka import AIOKafkaConsumer

from schemas.types import DeadLetter
from tests.integration.harness import BOOTSTRAP, chat_request, collect_replies, config_for, unique
from turnout.client import RequestPublisher, ensure_topics


async def read_all(topic: str, n: int, timeout_s: float) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[bytes] = []
    try:
        import time

        end = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < end:
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(r.value for r in recs)
    finally:
        await consumer.stop()
    return out


async def test_each_kind_of_bad_input_is_dead_lettered_and_answered(spawn, names):
    """Each malformed request is dead-lettered with its reason; good ones still pass."""
    backend = spawn.backend()
    client = unique("c")
    reply_topic = f"turnout.replies.{client}"
    dlq = unique("it.dlq")
    await ensure_topics(BOOTSTRAP, [names.request_topic], 2)
    await ensure_topics(BOOTSTRAP, [reply_topic, dlq], 1)
    spawn.worker(
        config_for(("b", "openai", backend.url)),
        app_id=names.app_id,
        request_topic=names.request_topic,
        extra_env={"TURNOUT_DEAD_LETTER_TOPIC": dlq, "TURNOUT_MAX_REQUEST_BYTES": "4096"},
    )

    def req(rid, **over):
        base = orjson.loads(chat_request(rid, client, "hi").to_wire())
        base.update(over)
        return orjson.dumps(base)

    key = client.encode()
    bad = {
        "not-json": (b"{this is not json", key, "invalid_request", "not valid JSON"),
        "wrong-type": (
            req("wrong-type", priority="urgent"),
            key,
            "invalid_request",
            "Expected `int`, got `str` - at `$.priority`",
        ),
        "missing": (
            orjson.dumps({"id": "missing", "client_id": client}),
            key,
            "invalid_request",
            "missing required field",
        ),
        "too-large": (
            req("too-large", metadata={"pad": "x" * 5000}),
            key,
            "request_too_large",
            "limit is 4096",
        ),
        "unknown-model": (
            req("unknown-model", model="gpt-17"),
            key,
            "unknown_model",
            "no route or backend serves model 'gpt-17'",
        ),
        "wrong-key": (req("wrong-key"), b"other", "invalid_request", "keyed by client_id"),
    }
    pub = RequestPublisher(BOOTSTRAP, names.request_topic)
    await pub.start()
    try:
        good_ids = []
        for i, (value, k, _, _) in enumerate(bad.values()):
            await pub.send_raw(value, k)
            rid = f"good-{i}"
            good_ids.append(rid)
            await pub.send(chat_request(rid, client, f"between {i}"))
    finally:
        await pub.stop()

    answered = set(bad) - {"not-json"}  # no id can be read from non-JSON: nobody to tell
    replies = (await collect_replies({reply_topic: answered | set(good_ids)}, 60))[reply_topic]
    for rid in good_ids:
        assert replies[rid][0].status == "ok"
    for rid in answered:
        reply = replies[rid][0]
        assert reply.status == "error"
        assert reply.error.code == bad[rid][2]
        assert bad[rid][3] in reply.error.message
        assert reply.error.retryable is False

    letters = [DeadLetter.from_wire(v) for v in await read_all(dlq, len(bad), 30)]
    by_value = {dl.value: dl for dl in letters}
    assert len(letters) == len(bad)
    for value, k, code, phrase in bad.values():
        dl = by_value[value]
        assert dl.code == code
        assert phrase in dl.reason
        assert dl.key == k
        assert dl.source.topic == names.request_topic
