"""No record stalls its partition: every failure in a record's path ends in a reply or a
dead letter, dead letters too large for Kafka reference their original, and a commit
point that stops moving anyway is reported."""

import asyncio
import hashlib
import time

import orjson
from faust.types import TP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.types import Reply, Request
from turnout import config as cfg
from turnout.core.admission import Record
from turnout.core.stall import Stalled
from turnout.settings import Settings
from turnout.testing.fake import ScriptedBackendClient
from turnout.worker.dispatch import Dispatcher
from turnout.worker.publisher import PublishFailed

CONFIG = cfg.loads(
    """
backends:
  - {id: a, protocol: openai, base_url: "http://a", models: [echo]}
routes:
  default: {targets: [{backend: a, model: echo}]}
""",
    env={},
)
TOPIC = "turnout.requests"
TP0 = TP(TOPIC, 0)
PRODUCER_LIMIT = 1_000_000


class Broker:
    """Records what is published; refuses what a real producer would (over 1,000,000 bytes)."""

    def __init__(self, refuse_replies=0, refuse_letters=False):
        self.replies: list[tuple[str, Reply]] = []
        self.dead_letters = []
        self.refuse_replies = refuse_replies
        self.refuse_letters = refuse_letters

    async def reply(self, topic, reply):
        if self.refuse_replies > 0:
            self.refuse_replies -= 1
            raise PublishFailed(f"TopicAuthorizationFailedError publishing to {topic}")
        self.replies.append((topic, reply))

    async def dead_letter(self, letter):
        if self.refuse_letters:
            raise PublishFailed("TopicAuthorizationFailedError publishing to turnout.dead-letter")
        if len(letter.to_wire()) > PRODUCER_LIMIT:
            raise PublishFailed("MessageSizeTooLargeError publishing to turnout.dead-letter")
        self.dead_letters.append(letter)


def raw_record(offset, value, key=b"c"):
    return Record(
        topic=TOPIC,
        partition=0,
        offset=offset,
        timestamp_ms=int(time.time() * 1000),
        key=key,
        value=value,
    )


def request(offset, rid=None, **over):
    req = Request(
        id=rid or f"r{offset}",
        client_id="c",
        kind="chat",
        model="default",
        body={"messages": [{"role": "user", "content": f"m{offset}"}]},
        **over,
    )
    return raw_record(offset, req.to_wire())


def own(d):
    """``d`` owns TP0, read from offset 0: it serves only partitions it tracks."""
    d.assigned({TP0})
    d.anchor({TP0: 0})
    return d


def make(client=None, broker=None, **settings):
    broker = broker or Broker()
    d = Dispatcher(
        settings=Settings(**settings),
        config=CONFIG,
        client=client or ScriptedBackendClient(),
        publisher=broker,
    )
    return own(d), broker


async def submit_all(d, records):
    acked = []
    for rec in records:
        await d.submit(TP0, rec, lambda o=rec.offset: acked.append(o))
    return acked


async def test_an_800_kb_record_of_invalid_bytes_is_dead_lettered_by_reference():
    """Its base64 copy would exceed the producer's limit: the dead letter references it."""
    d, broker = make()
    value = bytes(range(256)) * 3200  # 819,200 bytes, not JSON
    acked = await submit_all(d, [raw_record(0, value), request(1)])
    await d.stop(grace_s=10)
    (dl,) = broker.dead_letters
    assert dl.code == "invalid_request" and dl.value is None
    assert dl.original.value_bytes == len(value)
    assert dl.original.value_sha256 == hashlib.sha256(value).hexdigest()
    assert dl.original.value_prefix == value[:1024]
    assert (dl.source.topic, dl.source.partition, dl.source.offset) == (TOPIC, 0, 0)
    assert sorted(acked) == [0, 1] and d.committable(TP0) == 2


async def test_a_small_bad_record_is_still_copied_whole():
    """Below the limit the dead letter holds the original byte for byte, as before."""
    d, broker = make()
    await submit_all(d, [raw_record(0, b"\x00 not json")])
    await d.stop(grace_s=10)
    (dl,) = broker.dead_letters
    assert dl.value == b"\x00 not json" and dl.original is None


async def test_a_copy_the_broker_refuses_is_sent_again_by_reference():
    """A dead-letter topic with a smaller max.message.bytes still gets a dead letter."""

    class SmallTopic(Broker):
        async def dead_letter(self, letter):
            if letter.value is not None and len(letter.value) > 1000:
                raise PublishFailed("RecordTooLargeError publishing to turnout.dead-letter")
            await super().dead_letter(letter)

    d, broker = make(broker=SmallTopic())
    await submit_all(d, [raw_record(0, b"x" * 5000)])
    await d.stop(grace_s=10)
    (dl,) = broker.dead_letters
    assert dl.value is None and dl.original.value_bytes == 5000
    assert d.committable(TP0) == 1


async def test_a_bug_while_serving_ends_in_a_dead_letter_and_an_error_reply():
    """A non-transient exception in the record's path is dead-lettered, never left unfinished."""
    d, broker = make(ScriptedBackendClient({"a": [RuntimeError("a bug")]}))
    acked = await submit_all(d, [request(0), request(1)])
    await d.stop(grace_s=10)
    (dl,) = broker.dead_letters
    assert dl.code == "internal_error" and "RuntimeError" in dl.reason
    assert dl.request_id == "r0" and dl.value is not None
    replies = {r.id: r for _, r in broker.replies}
    assert replies["r0"].error.code == "internal_error" and replies["r1"].status == "ok"
    assert sorted(acked) == [0, 1] and d.committable(TP0) == 2


async def test_a_bug_in_admission_ends_in_a_dead_letter(monkeypatch):
    """Admission itself failing does not pin the offset: the record is dead-lettered."""
    import turnout.worker.dispatch as dispatch

    def broken(*args, **kwargs):
        raise KeyError("bug")

    monkeypatch.setattr(dispatch, "admit", broken)
    d, broker = make()
    acked = await submit_all(d, [request(0)])
    await d.stop(grace_s=10)
    (dl,) = broker.dead_letters
    assert dl.code == "internal_error" and "admitting" in dl.reason
    ((topic, reply),) = broker.replies
    assert topic == "turnout.replies.c" and reply.error.code == "internal_error"
    assert acked == [0] and d.committable(TP0) == 1


async def test_a_reply_nobody_can_publish_is_dead_lettered():
    """The reply and its error reply both refused for good: the record goes to the DLQ."""
    d, broker = make(broker=Broker(refuse_replies=2))
    acked = await submit_all(d, [request(0)])
    await d.stop(grace_s=10)
    (dl,) = broker.dead_letters
    assert dl.code == "reply_unpublishable" and dl.request_id == "r0"
    assert broker.replies == [] and acked == [0] and d.committable(TP0) == 1


async def test_an_error_reply_refused_after_the_dead_letter_finishes_the_record():
    """Bad input already in the DLQ ends there even if its error reply cannot be sent."""
    d, broker = make(broker=Broker(refuse_replies=2))
    bad = orjson.dumps({"id": "x", "client_id": "c", "kind": "chat"})
    acked = await submit_all(d, [raw_record(0, bad)])
    await d.stop(grace_s=10)
    assert [dl.code for dl in broker.dead_letters] == ["invalid_request"]
    assert acked == [0]


async def test_an_unpublishable_dead_letter_stalls_loudly_and_is_reported():
    """If even the dead letter is refused, the partition holds and commit_stalled names why."""
    d, broker = make(broker=Broker(refuse_letters=True), commit_stall_s=5)
    await submit_all(d, [raw_record(0, b"garbage"), request(1), request(2)])
    for _ in range(100):
        if len(broker.replies) == 2:
            break
        await asyncio.sleep(0.02)
    assert d.committable(TP0) == 0
    now = int(time.time() * 1000)
    assert d.check_commits(now) == []
    assert d.check_commits(now + 4_000) == []
    (ev,) = d.check_commits(now + 5_000)
    assert isinstance(ev, Stalled)
    assert (ev.partition, ev.offset, ev.cause, ev.done_behind) == (
        0,
        0,
        "dead_letter_unpublishable",
        2,
    )
    text, _ = d.metrics.render()
    assert (
        b'turnout_commit_stalled_seconds{cause="dead_letter_unpublishable",offset="0",'
        b'partition="0",topic="turnout.requests"} 5.0' in text
    )
    broker.refuse_letters = False  # the operator fixes the topic: the retry gets through
    for _ in range(300):
        if d.committable(TP0) == 3:
            break
        await asyncio.sleep(0.02)
    assert d.committable(TP0) == 3
    (resumed,) = d.check_commits(now + 6_000)
    assert resumed.offset == 3
    assert b"turnout_commit_stalled_seconds{" not in d.metrics.render()[0]
    await d.stop(grace_s=1)


async def test_a_slow_request_within_its_deadline_is_not_a_stall():
    """The head of a partition still working before its deadline is busy, not stalled."""

    class FirstCallSlow(ScriptedBackendClient):
        async def call(self, backend, **kwargs):
            if not self.calls:
                self.calls.append(None)
                await asyncio.sleep(0.5)
            return await super().call(backend, **kwargs)

    d, _ = make(FirstCallSlow(), commit_stall_s=1)
    await submit_all(d, [request(0, timeout_ms=60_000), request(1), request(2)])
    await asyncio.sleep(0.1)
    now = int(time.time() * 1000)
    d.check_commits(now)
    (head,) = d.commit_heads()
    assert (head.offset, head.cause, head.done_behind) == (0, "serving", 2)
    assert d.check_commits(now + 30_000) == []  # 30 s in, deadline at 60 s: busy
    (ev,) = d.check_commits(now + 61_000)  # past its deadline and still not finished
    assert isinstance(ev, Stalled) and ev.cause == "serving"
    await d.stop(grace_s=10)


RECORDS = st.lists(
    st.one_of(
        st.binary(max_size=2000),
        st.builds(
            lambda rid, cid, reply_to, kind, depth: orjson.dumps(
                {
                    "id": rid,
                    "client_id": cid,
                    "kind": kind,
                    "model": "default",
                    "body": {"messages": [{"role": "user", "content": "x"}]}
                    | ({"deep": orjson.loads(b"[" * depth + b"]" * depth)} if depth else {}),
                    **({"reply_to": reply_to} if reply_to is not None else {}),
                }
            ),
            st.uuids().map(str),
            st.sampled_from(["c", "", "c" * 129, "a b"]),
            st.sampled_from(
                [None, "turnout.replies.", "turnout.replies.c", "x", "turnout.replies.a b"]
            ),
            st.sampled_from(["chat", "embeddings", "nope"]),
            st.sampled_from([0, 70, 200]),
        ),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=RECORDS)
def test_every_record_ends_in_a_reply_or_a_dead_letter_and_commits(values):
    """Whatever the records, each offset finishes with a reply or a dead letter, in order."""

    async def run():
        d, broker = make()
        acked = await submit_all(d, [raw_record(i, v) for i, v in enumerate(values)])
        await d.stop(grace_s=10)
        return d, broker, acked

    d, broker, acked = asyncio.run(run())
    assert sorted(acked) == list(range(len(values)))
    assert d.committable(TP0) == len(values)
    lettered = [dl.source.offset for dl in broker.dead_letters]
    assert len(lettered) == len(set(lettered))  # one dead letter per record at most
    replied = {r.id for _, r in broker.replies}
    for offset, value in enumerate(values):
        if offset in lettered:
            continue
        # not dead-lettered: then it was a valid request, and it was answered
        assert orjson.loads(value)["id"] in replied, value[:200]
    for topic, _ in broker.replies:
        assert topic == "turnout.replies.c"  # the only valid reply topic in these records


async def test_a_bug_after_the_final_reply_is_dead_lettered_without_a_second_reply():
    """The client keeps its one (ok) reply; the dead letter says the reply was out."""
    d, broker = make()

    def broken(*args, **kwargs):
        raise ValueError("metrics bug")

    d.metrics.request_completed = broken
    acked = await submit_all(d, [request(0)])
    await d.stop(grace_s=10)
    assert [r.status for _, r in broker.replies] == ["ok"]
    (dl,) = broker.dead_letters
    assert dl.code == "internal_error" and "after its final reply was published" in dl.reason
    assert acked == [0] and d.committable(TP0) == 1
