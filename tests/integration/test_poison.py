"""No poison stalls anything, on the real broker: every record, whatever its size or content,
ends in the dead-letter topic or in a reply, and the partition's commits reach its end.

Poison: 800 KB and 999 KB records (their base64 copies would exceed the producer's
1,000,000-byte limit), gzip-compressed records of 1.5 MB and 5 MB (the broker takes
them), JSON nested 10,000 deep at top level and inside ``body``, an empty reply
suffix, and a 129-character client id. Good requests sit between them in the same
partition. Prints sent / answered / dead-lettered / lost / duplicated.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from schemas.types import DeadLetter
from tests.integration.harness import (
    BOOTSTRAP,
    chat_request,
    collect_replies,
    committed_offsets,
    config_for,
    events,
    run_turnout,
    unique,
)
from turnout.client import ensure_topics


def request_bytes(rid: str, client: str, **over: object) -> bytes:
    base = orjson.loads(chat_request(rid, client, "hi").to_wire())
    base.update(over)
    return orjson.dumps(base)


def sized(size: int, rid: str, client: str, **over: object) -> bytes:
    """A request of exactly ``size`` bytes, padded in its metadata."""
    bare = len(request_bytes(rid, client, metadata={"pad": ""}, **over))
    return request_bytes(rid, client, metadata={"pad": "z" * (size - bare)}, **over)


def get_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=3) as r:
        return r.read().decode()


def nested(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


async def read_dead_letters(topic: str, n: int, timeout_s: float) -> list[DeadLetter]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[DeadLetter] = []
    try:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(DeadLetter.from_wire(r.value) for r in recs)
            if len(out) >= n:
                await asyncio.sleep(2)  # anything beyond n would be a duplicate: catch it
                for recs in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(DeadLetter.from_wire(r.value) for r in recs)
                break
    finally:
        await consumer.stop()
    return out


async def end_offsets(topic: str) -> dict[int, int]:
    from turnout.ops.status import Offsets

    async with Offsets(BOOTSTRAP) as offsets:
        return await offsets.ends(topic, await offsets.partitions(topic))


async def topic_names() -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_no_poison_record_stalls_its_partition(spawn, names):
    """Every poison record is dead-lettered with a reason; good ones are answered; lag is 0."""
    backend = spawn.backend()
    client = unique("c")
    reply_topic = f"turnout.replies.{client}"
    long_client = (unique("x") + "-" + "y" * 200)[:129]
    dlq = unique("it.dlq")
    await ensure_topics(BOOTSTRAP, [names.request_topic], 2)
    await ensure_topics(BOOTSTRAP, [reply_topic, dlq], 1)
    worker = spawn.worker(
        config_for(("b", "openai", backend.url)),
        app_id=names.app_id,
        request_topic=names.request_topic,
        partitions=2,
        extra_env={"TURNOUT_DEAD_LETTER_TOPIC": dlq, "TURNOUT_COMMIT_STALL_S": "5"},
    )
    key = client.encode()
    # name -> (value, key, gzip?, code, id of the error reply expected, or None)
    poison = {
        "800kb": (b"\xff\xfe poison " * (800 * 1024 // 10), key, False, "invalid_request", None),
        "999kb": (
            request_bytes("p-999kb", client, kind="bogus", metadata={"pad": "z" * 999 * 1024})[
                : 999 * 1024
            ],
            key,
            False,
            "invalid_request",
            "p-999kb",  # cut at 999 KB: not JSON, but its id and client are still read
        ),
        "999kb-json": (
            sized(999 * 1024, "p-999kb-json", client, kind="bogus"),
            key,
            False,
            "invalid_request",
            "p-999kb-json",
        ),
        "gzip-1.5mb": (
            request_bytes("p-gzip-1.5mb", client, metadata={"pad": "q" * 1_500_000}),
            key,
            True,
            "request_too_large",
            "p-gzip-1.5mb",
        ),
        "gzip-5mb": (b"A" * 5_000_000, key, True, "request_too_large", None),
        "deep-top": (nested(10_000), key, False, "invalid_request", None),
        "deep-body": (
            request_bytes("p-deep-body", client)[:-2] + b',"x":' + nested(10_000) + b"}}",
            key,
            False,
            "invalid_request",
            "p-deep-body",
        ),
        "empty-suffix": (
            request_bytes("p-empty-suffix", client, reply_to="turnout.replies."),
            key,
            False,
            "invalid_reply_topic",
            None,
        ),
        "long-client": (
            request_bytes("p-long-client", long_client),
            long_client.encode(),
            False,
            "invalid_request",
            None,
        ),
    }
    assert len(poison["999kb"][0]) == 999 * 1024
    assert len(poison["999kb-json"][0]) == 999 * 1024
    plain = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, max_request_size=16 * 1024 * 1024)
    gzip = AIOKafkaProducer(
        bootstrap_servers=BOOTSTRAP, max_request_size=16 * 1024 * 1024, compression_type="gzip"
    )
    await plain.start()
    await gzip.start()
    good: list[str] = []
    sources: dict[tuple[int, int], str] = {}
    try:
        for i, (name, (value, k, zipped, _, _)) in enumerate(poison.items()):
            meta = await (gzip if zipped else plain).send_and_wait(
                names.request_topic, value, key=k
            )
            sources[(meta.partition, meta.offset)] = name
            rid = f"good-{i}"
            good.append(rid)
            await plain.send_and_wait(
                names.request_topic, chat_request(rid, client, f"after {name}").to_wire(), key=key
            )
    finally:
        await plain.stop()
        await gzip.stop()
    sent = len(poison) + len(good)

    answered_ids = set(good) | {reply for *_, reply in poison.values() if reply}
    got = (await collect_replies({reply_topic: answered_ids}, 120))[reply_topic]
    letters = await read_dead_letters(dlq, len(poison), 120)
    by_source = {}
    for dl in letters:
        by_source.setdefault((dl.source.partition, dl.source.offset), []).append(dl)

    lost = [rid for rid in answered_ids if rid not in got] + [
        name for pos, name in sources.items() if pos not in by_source
    ]
    duplicated = [rid for rid, rs in got.items() if len(rs) > 1] + [
        sources.get(pos, pos) for pos, dls in by_source.items() if len(dls) > 1
    ]
    ok = sum(1 for rid in good if rid in got and got[rid][0].status == "ok")
    print(
        f"\npoison drill: sent {sent} (poison {len(poison)}, good {len(good)}), "
        f"answered {len(got)} (ok {ok}), dead-lettered {len(by_source)}, "
        f"lost {len(lost)} {lost}, duplicated {len(duplicated)} {duplicated}"
    )
    assert not lost and not duplicated
    assert set(got) == answered_ids, set(got) ^ answered_ids  # no reply to anyone else
    assert ok == len(good)

    for pos, name in sources.items():
        value, _, _, code, reply = poison[name]
        (dl,) = by_source[pos]
        assert dl.code == code, (name, dl.code, dl.reason)
        assert dl.reason
        assert dl.source.topic == names.request_topic
        if dl.value is not None:
            assert dl.value == value
        else:  # referenced: size and hash identify the original
            assert dl.original.value_bytes == len(value)
            assert dl.original.value_sha256 == hashlib.sha256(value).hexdigest()
        if reply:
            assert got[reply][0].error.code == code
            assert dl.request_id == reply
    for name in ("800kb", "999kb", "999kb-json", "gzip-1.5mb", "gzip-5mb"):
        (pos,) = [p for p, n in sources.items() if n == name]
        assert by_source[pos][0].original is not None, name

    # no reply on a topic turnout would have had to invent
    topics = await topic_names()
    assert f"turnout.replies.{long_client}" not in topics
    if "turnout.replies." in topics:  # made by something else: none of ours may be on it
        stray = await collect_replies({"turnout.replies.": {"p-empty-suffix"}}, 3)
        assert not stray["turnout.replies."]

    # the partitions' committed offsets reach their ends: lag 0
    ends = await end_offsets(names.request_topic)
    assert sum(ends.values()) == sent
    committed: dict[int, int] = {}
    for _ in range(120):
        committed = await committed_offsets(names.app_id, names.request_topic)
        if all(committed.get(p, 0) >= end for p, end in ends.items() if end > 0):
            break
        await asyncio.sleep(0.5)
    lag = {p: end - committed.get(p, 0) for p, end in ends.items()}
    print(f"poison drill: end offsets {ends}, committed {committed}, lag {lag}")
    assert all(v == 0 for v in lag.values()), lag

    # turnout dlq show fetches a referenced original from the source topic
    rc, out, err = await run_turnout("dlq", "show", "--limit", "0", "--json", env=worker.env)
    assert rc == 0, err
    shown = [orjson.loads(line) for line in out.splitlines()]
    referenced = [s for s in shown if s.get("original_stored") == "reference"]
    assert len(referenced) == 5 and all(s["original_fetched"] for s in referenced), referenced
    gz = [s for s in referenced if s["request_id"] == "p-gzip-1.5mb"]
    assert gz and gz[0]["original_json"]["id"] == "p-gzip-1.5mb"

    for bad in ("request_failed_internally", "commit_stalled", "dead_letter_unpublishable"):
        assert not events(worker, bad), bad


async def test_a_dead_letter_the_broker_refuses_holds_the_partition_and_is_reported(spawn, names):
    """With an unusable dead-letter topic nothing is dropped: commits stop at the poison
    record, later requests are answered, and commit_stalled names partition, offset, cause."""
    from tests.integration.harness import free_port

    backend = spawn.backend()
    client = unique("c")
    reply_topic = f"turnout.replies.{client}"
    port = free_port()
    await ensure_topics(BOOTSTRAP, [names.request_topic], 1)
    await ensure_topics(BOOTSTRAP, [reply_topic], 1)
    worker = spawn.worker(
        config_for(("b", "openai", backend.url)),
        app_id=names.app_id,
        request_topic=names.request_topic,
        partitions=1,
        extra_env={
            # an illegal topic name: every dead letter is refused, as by a missing ACL
            "TURNOUT_DEAD_LETTER_TOPIC": "it.dlq/not allowed",
            "TURNOUT_COMMIT_STALL_S": "3",
            "TURNOUT_WEB_PORT": str(port),
        },
    )
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
    await producer.start()
    try:
        poison = await producer.send_and_wait(names.request_topic, b"\x00garbage", key=b"k")
        good = [f"g{i}" for i in range(3)]
        for rid in good:
            await producer.send_and_wait(
                names.request_topic, chat_request(rid, client, "hi").to_wire(), key=client.encode()
            )
    finally:
        await producer.stop()
    got = (await collect_replies({reply_topic: set(good)}, 90))[reply_topic]
    assert all(got[rid][0].status == "ok" for rid in good)

    stalled: list[dict] = []
    for _ in range(120):
        stalled = events(worker, "commit_stalled")
        if stalled:
            break
        await asyncio.sleep(0.5)
    print(f"\nstall drill: sent 4, answered {len(got)}, stalled {stalled}")
    (line,) = stalled
    assert (line["partition"], line["offset"], line["cause"]) == (
        0,
        poison.offset,
        "dead_letter_unpublishable",
    )
    assert line["done_behind"] == 3
    assert events(worker, "dead_letter_unpublishable")
    metrics = get_text(f"http://127.0.0.1:{port}/metrics")
    assert 'turnout_commit_stalled_seconds{cause="dead_letter_unpublishable"' in metrics
    committed = await committed_offsets(names.app_id, names.request_topic)
    assert committed.get(0, 0) <= poison.offset  # the poison record stays in Kafka
