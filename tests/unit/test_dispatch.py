"""The dispatcher with a scripted backend and a recording publisher: no Kafka, real asyncio."""

import asyncio
import time

import orjson
import pytest
from faust.types import TP

from schemas.types import Reply, Request
from turnout import config as cfg
from turnout.core.admission import Record
from turnout.errors import BackendStatusError, BackendUnavailable
from turnout.settings import Settings
from turnout.testing.fake import ScriptedBackendClient
from turnout.worker.dispatch import Dispatcher
from turnout.worker.publisher import PublishFailed
from turnout.worker.state import MemoryTable

CONFIG = cfg.loads(
    """
backends:
  - {id: a, protocol: openai, base_url: "http://a", models: [echo], max_concurrency: 1}
  - {id: b, protocol: openai, base_url: "http://b", models: [echo], max_concurrency: 8}
routes:
  default: {targets: [{backend: a, model: echo}, {backend: b, model: echo}], policy: first}
  only-a: {targets: [{backend: a, model: echo}]}
""",
    env={},
)
TP0 = TP("turnout.requests", 0)


class RecordingPublisher:
    def __init__(self):
        self.replies: list[tuple[str, Reply]] = []
        self.dead_letters = []

    async def reply(self, topic, reply):
        self.replies.append((topic, reply))

    async def dead_letter(self, record):
        self.dead_letters.append(record)


def record(offset, model="default", priority=5, rid=None):
    req = Request(
        id=rid or f"r{offset}",
        client_id="c",
        kind="chat",
        model=model,
        priority=priority,
        body={"messages": [{"role": "user", "content": f"m{offset}"}]},
    )
    now = int(time.time() * 1000)
    return Record(
        topic="turnout.requests",
        partition=0,
        offset=offset,
        timestamp_ms=now,
        key=b"c",
        value=req.to_wire(),
    )


def own(d, anchor=0):
    """``d`` owns TP0, read from offset ``anchor`` (its committed offset)."""
    d.assigned({TP0})
    d.anchor({TP0: anchor})
    return d


def make(client, anchor=0, **settings):
    pub = RecordingPublisher()
    d = Dispatcher(settings=Settings(**settings), config=CONFIG, client=client, publisher=pub)
    own(d, anchor)
    return d, pub


def refetching(client):
    """A dispatcher whose read-again requests are recorded, in the order asked."""
    asked: list[tuple[TP, int]] = []
    d = Dispatcher(
        settings=Settings(),
        config=CONFIG,
        client=client,
        publisher=RecordingPublisher(),
        refetch=lambda tp, offset: asked.append((tp, offset)),
    )
    return d, asked


async def drain(d):
    """Wait until every submitted request has finished."""
    await d.stop(grace_s=30)


async def test_a_retryable_failure_moves_to_the_next_target():
    """A 5xx from the first target is retried on the other one."""
    client = ScriptedBackendClient({"a": [BackendStatusError("boom", backend="a", status=503)]})
    d, pub = make(client)
    await d.submit(TP0, record(0), lambda: None)
    await drain(d)
    ((_, reply),) = pub.replies
    assert reply.status == "ok" and reply.backend == "b" and reply.attempts == 2


async def test_a_client_error_is_not_retried():
    """A 400 from the backend is the request's fault: one attempt, a non-retryable error."""
    client = ScriptedBackendClient({"a": [BackendStatusError("bad", backend="a", status=400)]})
    d, pub = make(client)
    await d.submit(TP0, record(0), lambda: None)
    await drain(d)
    ((_, reply),) = pub.replies
    assert reply.status == "error" and reply.attempts == 1
    assert reply.error.code == "backend_status" and reply.error.retryable is False


async def test_refused_connections_do_not_use_up_attempts():
    """A backend refusing connections is retried within the deadline without counting."""
    down = [BackendUnavailable("refused", backend="a")] * 3
    client = ScriptedBackendClient({"a": down})
    d, pub = make(client)
    await d.submit(TP0, record(0, model="only-a"), lambda: None)
    await drain(d)
    ((_, reply),) = pub.replies
    assert reply.status == "ok" and reply.attempts == 4


async def test_the_offset_is_committable_only_after_the_reply_is_published():
    """A slow request holds back the commit point; finishing it releases everything after it."""
    client = ScriptedBackendClient(delay_s={"a": 0.3, "b": 0.0})
    d, pub = make(client, anchor=10)
    acked = []
    await d.submit(TP0, record(10), lambda: acked.append(10))  # goes to a: slow
    await d.submit(TP0, record(11), lambda: acked.append(11))  # a full: b, fast
    await asyncio.sleep(0.1)
    assert acked == [11] and d.committable(TP0) == 10
    await drain(d)
    assert d.committable(TP0) == 12 and len(pub.replies) == 2


async def test_waiting_requests_are_released_highest_priority_first():
    """When capacity frees up, the most urgent waiting request takes it first."""
    client = ScriptedBackendClient(delay_s={"a": 0.05})
    d, pub = make(client)
    await d.submit(TP0, record(0, model="only-a"), lambda: None)  # holds a's only slot
    await asyncio.sleep(0.01)
    for offset, prio in [(1, 1), (2, 1), (3, 9), (4, 5)]:
        await d.submit(TP0, record(offset, model="only-a", priority=prio), lambda: None)
    await drain(d)
    order = [reply.id for _, reply in pub.replies]
    assert order == ["r0", "r3", "r4", "r1", "r2"]


async def test_a_worker_gets_its_share_of_each_backend_cap():
    """With half the partitions, a worker may use half of each backend's concurrency."""
    client = ScriptedBackendClient(delay_s=0.2)
    d, pub = make(client)
    d.share_capacity({0, 1, 2, 3}, 8)
    for i in range(6):
        await d.submit(TP0, record(i, model="default"), lambda: None)
    await asyncio.sleep(0.05)
    in_flight_b = sum(1 for c in client.calls if c.backend_id == "b")
    assert in_flight_b == 4  # b's cap of 8, halved; a's cap of 1 is partition 0's, ours
    await drain(d)
    assert len(pub.replies) == 6


async def test_a_worker_without_a_unit_of_a_cap_does_not_call_that_backend():
    """Owning none of the partitions that hold a's one unit, a worker waits instead of calling a."""
    client = ScriptedBackendClient(delay_s=0.05)
    d, pub = make(client, default_timeout_ms=300)
    d.share_capacity({4, 5, 6, 7}, 8)
    await d.submit(TP0, record(0, model="only-a"), lambda: None)
    await drain(d)
    assert [c.backend_id for c in client.calls] == []
    assert [r.error.code for _, r in pub.replies] == ["deadline_exceeded"]
    d.share_capacity({0, 4, 5, 6, 7}, 8)  # a rebalance gives it partition 0
    await d.submit(TP0, record(1, model="only-a"), lambda: None)
    await drain(d)
    assert [c.backend_id for c in client.calls] == ["a"]
    assert [r.status for _, r in pub.replies] == ["error", "ok"]


async def test_bad_input_is_dead_lettered_and_answered():
    """A malformed record goes to the dead letters with its reason and gets an error reply."""
    d, pub = make(ScriptedBackendClient())
    raw = orjson.dumps({"id": "x", "client_id": "c", "kind": "chat"})
    bad = Record(
        topic="t", partition=0, offset=0, timestamp_ms=int(time.time() * 1000), key=b"c", value=raw
    )
    await d.submit(TP0, bad, lambda: None)
    await drain(d)
    (dl,) = pub.dead_letters
    assert dl.code == "invalid_request" and "missing required field" in dl.reason
    ((topic, reply),) = pub.replies
    assert topic == "turnout.replies.c" and reply.error.code == "invalid_request"


@pytest.mark.parametrize("slots", [1, 3])
async def test_submit_waits_for_a_free_slot(slots):
    """With every in-flight slot taken, submit waits: that wait is the backpressure."""
    d, _ = make(ScriptedBackendClient(delay_s=0.2), max_in_flight=slots)
    for i in range(slots):
        await d.submit(TP0, record(i), lambda: None)
    blocked = asyncio.create_task(d.submit(TP0, record(slots), lambda: None))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    await drain(d)
    await blocked


class RecordingChunks(RecordingPublisher):
    def __init__(self):
        super().__init__()
        self.chunks = []

    async def chunk(self, topic, chunk):
        self.chunks.append(chunk)


class BreaksMidStream(ScriptedBackendClient):
    """Sends two chunks, then fails."""

    async def stream(self, backend, *, kind, model, body, timeout_s, **limits):
        yield {"choices": [{"index": 0, "delta": {"content": "half "}}]}
        yield {"choices": [{"index": 0, "delta": {"content": "an answer"}}]}
        raise BackendUnavailable("connection reset", backend=backend.id)


def stream_record(offset, model="default"):
    req = Request(id=f"s{offset}", client_id="c", kind="chat", model=model, stream=True,
                  body={"messages": [{"role": "user", "content": "tell me"}]})
    return Record(topic="t", partition=0, offset=offset, timestamp_ms=int(time.time() * 1000),
                  key=b"c", value=req.to_wire())


def streaming(client):
    pub = RecordingChunks()
    return own(Dispatcher(settings=Settings(), config=CONFIG, client=client, publisher=pub)), pub


async def test_a_streamed_answer_is_relayed_in_order_then_replied_whole():
    """Chunks go out in sequence before one final reply holding the whole answer."""
    d, pub = streaming(ScriptedBackendClient())
    await d.submit(TP0, stream_record(0), lambda: None)
    await drain(d)
    assert [c.seq for c in pub.chunks] == list(range(len(pub.chunks))) and pub.chunks
    text = "".join(c.delta["choices"][0]["delta"].get("content") or "" for c in pub.chunks)
    (_, reply), = pub.replies
    assert reply.status == "ok"
    assert reply.body["choices"][0]["message"]["content"] == text == "echo: tell me"


async def test_a_stream_failing_before_its_first_chunk_moves_to_another_backend():
    """Nothing reached the client yet, so another backend serves the whole stream."""
    client = ScriptedBackendClient({"a": [BackendStatusError("boom", backend="a", status=502)]})
    d, pub = streaming(client)
    await d.submit(TP0, stream_record(0), lambda: None)
    await drain(d)
    (_, reply), = pub.replies
    assert reply.status == "ok" and reply.backend == "b"
    assert {c.attempt for c in pub.chunks} == {2}


async def test_a_stream_breaking_midway_ends_with_an_explicit_error():
    """After chunks were sent, a failure is reported as such and not retried elsewhere."""
    d, pub = streaming(BreaksMidStream())
    await d.submit(TP0, stream_record(0), lambda: None)
    await drain(d)
    assert len(pub.chunks) == 2
    (_, reply), = pub.replies
    assert reply.status == "error" and reply.attempts == 1
    assert "broke after 2 chunk(s)" in reply.error.message and reply.error.retryable


class RefusesBigReplies(RecordingPublisher):
    async def reply(self, topic, reply):
        if reply.status == "ok":
            raise PublishFailed("MessageSizeTooLargeError publishing to " + topic)
        await super().reply(topic, reply)


async def test_a_reply_the_broker_refuses_becomes_an_error_reply():
    """A reply Kafka can never take is replaced by an error reply, so the request finishes."""
    pub = RefusesBigReplies()
    d = own(Dispatcher(settings=Settings(), config=CONFIG, client=ScriptedBackendClient(),
                   publisher=pub))
    acked = []
    await d.submit(TP0, record(0), lambda: acked.append(0))
    await drain(d)
    (_, reply), = pub.replies
    assert reply.error.code == "reply_unpublishable" and acked == [0]
    assert d.committable(TP0) == 1


async def test_a_record_delivered_twice_is_served_once():
    """faust may deliver an offset again after a seek: the repeat is acked and ignored."""
    d, pub = make(ScriptedBackendClient(delay_s=0.05))
    acks = []
    await d.submit(TP0, record(0), lambda: acks.append("first"))
    await d.submit(TP0, record(0), lambda: acks.append("again"))  # while in flight
    await drain(d)
    await d.submit(TP0, record(0), lambda: acks.append("late"))  # after it finished
    assert len(pub.replies) == 1 and d.redelivered == 2
    assert sorted(acks) == ["again", "first", "late"] and d.committable(TP0) == 1


FALLBACK = cfg.loads(
    """
backends:
  - {id: big, protocol: openai, base_url: "http://big", models: [large]}
  - {id: small, protocol: openai, base_url: "http://small", models: [tiny]}
routes:
  smart: {targets: [{backend: big, model: large}], fallbacks: [cheap]}
  cheap: {targets: [{backend: small, model: tiny}]}
""",
    env={},
)


async def test_with_no_healthy_target_a_fallback_route_serves_marked_degraded():
    """An unhealthy primary sends the request to the route's fallback, marked degraded."""
    pub = RecordingPublisher()
    d = own(Dispatcher(settings=Settings(), config=FALLBACK, client=ScriptedBackendClient(),
                   publisher=pub))
    for _ in range(5):  # enough failures to mark "big" unhealthy
        d.chooser.health.observe("big", False, 1.0, int(time.time() * 1000))
    await d.submit(TP0, record(0, model="smart"), lambda: None)
    await drain(d)
    (_, reply), = pub.replies
    assert reply.status == "ok" and reply.degraded and reply.backend == "small"


CAPPED = cfg.loads(
    """
backends:
  - {id: a, protocol: openai, base_url: "http://a", models: [echo], rate: {requests_per_s: 5}}
  - {id: b, protocol: openai, base_url: "http://b", models: [echo]}
routes:
  default: {targets: [{backend: a, model: echo}, {backend: b, model: echo}], policy: first}
""",
    env={},
)


async def test_a_backend_rate_cap_moves_the_excess_to_other_targets():
    """With 5 req/s (burst 5) on the preferred backend, the next requests go elsewhere."""
    pub = RecordingPublisher()
    d = own(Dispatcher(settings=Settings(), config=CAPPED, client=ScriptedBackendClient(),
                   publisher=pub))
    for i in range(8):
        await d.submit(TP0, record(i), lambda: None)
    await drain(d)
    backends = sorted(reply.backend for _, reply in pub.replies)
    assert backends == ["a"] * 5 + ["b"] * 3


async def test_a_workers_share_of_a_backend_rate_cap_follows_its_partitions():
    """Owning half the partitions, a worker may use half of a backend's rate."""
    pub = RecordingPublisher()
    d = own(Dispatcher(settings=Settings(), config=CAPPED, client=ScriptedBackendClient(),
                   publisher=pub))
    d.share_capacity({1}, 2)
    for i in range(8):
        await d.submit(TP0, record(i), lambda: None)
    await drain(d)
    assert sum(1 for _, r in pub.replies if r.backend == "a") == 2  # burst of 2.5, whole calls


BUDGET_CONFIG = """
backends:
  - {id: a, protocol: openai, base_url: "http://a", models: [echo]}
  - {id: b, protocol: openai, base_url: "http://b", models: [echo]}
routes:
  default:
    targets: [{backend: a, model: echo}, {backend: b, model: echo}]
    policy: first
    max_attempts: 3
    retry_budget: 0
"""


def blind_dispatcher(client):
    """A dispatcher whose health never judges (so only the budget can stop retries)."""
    from turnout.health.book import HealthBook
    from turnout.health.stats import HealthPolicy

    blind = HealthBook(["a", "b"], now_ms=0, policy=HealthPolicy(min_samples=10_000))
    pub = RecordingPublisher()
    d = own(Dispatcher(
        settings=Settings(), config=cfg.loads(BUDGET_CONFIG, env={}), client=client,
        publisher=pub, health=blind,
    ))
    return d, pub


async def test_a_route_retries_an_overloaded_fleet_only_within_its_retry_budget():
    """Every backend failing: with a zero ratio only the reserve of 10 retries is spent."""
    failing = ScriptedBackendClient(
        {
            "a": lambda call: BackendStatusError("overloaded", backend="a", status=503),
            "b": lambda call: BackendStatusError("overloaded", backend="b", status=503),
        }
    )
    d, pub = blind_dispatcher(failing)
    for i in range(15):
        await d.submit(TP0, record(i), lambda: None)
        await drain(d)
    statuses = [reply.status for _, reply in pub.replies]
    assert statuses == ["error"] * 15
    assert len(failing.calls) == 15 + 10  # first attempts, then the reserve: no storm
    assert "retry budget" in pub.replies[-1][1].error.message


async def test_a_spent_budget_does_not_starve_a_healthy_idle_target():
    """With the budget spent on a failing backend, retries still go to an idle healthy one."""
    failing = ScriptedBackendClient(
        {"a": lambda call: BackendStatusError("overloaded", backend="a", status=503)}
    )
    d, pub = blind_dispatcher(failing)
    for i in range(15):
        await d.submit(TP0, record(i), lambda: None)
        await drain(d)
    assert [reply.status for _, reply in pub.replies] == ["ok"] * 15
    assert [reply.backend for _, reply in pub.replies] == ["b"] * 15


class RefusingTable(MemoryTable):
    """A done table whose writes fail, as a faust table does outside an agent's context."""

    async def put(self, partition, key, value):
        raise TypeError("Cannot modify table key from outside of stream iteration")


async def test_only_requests_answered_ok_are_recorded_done():
    client = ScriptedBackendClient({"a": [BackendStatusError("bad", backend="a", status=400)]})
    done = MemoryTable()
    pub = RecordingPublisher()
    d = own(Dispatcher(settings=Settings(), config=CONFIG, client=client, publisher=pub, done=done))
    await d.submit(TP0, record(0, model="only-a", rid="fails"), lambda: None)
    await d.submit(TP0, record(1, rid="works"), lambda: None)
    await drain(d)
    assert {r.id: r.status for _, r in pub.replies} == {"fails": "error", "works": "ok"}
    assert list(done) == [b"c\x00works"]
    assert orjson.loads(done[b"c\x00works"])["backend"] in {"a", "b"}


async def test_a_failed_done_write_still_finishes_the_offset():
    """Dedupe of one request may be lost; the partition must never stop committing."""
    d = own(Dispatcher(
        settings=Settings(),
        config=CONFIG,
        client=ScriptedBackendClient(),
        publisher=RecordingPublisher(),
        done=RefusingTable(),
    ), anchor=7)
    acked = []
    await d.submit(TP0, record(7), lambda: acked.append(7))
    await drain(d)
    assert acked == [7] and d.committable(TP0) == 8


LIMITED = cfg.loads(
    """
backends:
  - {id: a, protocol: openai, base_url: "http://a", models: [echo]}
routes:
  default: {targets: [{backend: a, model: echo}]}
clients:
  noisy: {requests_per_s: 1, burst: 1}
""",
    env={},
)


def client_record(offset, client):
    req = Request(
        id=f"{client}-{offset}",
        client_id=client,
        kind="chat",
        model="default",
        timeout_ms=60_000,
        body={"messages": [{"role": "user", "content": "hi"}]},
    )
    now = int(time.time() * 1000)
    return Record(topic="turnout.requests", partition=0, offset=offset, timestamp_ms=now,
                  key=client.encode(), value=req.to_wire())  # fmt: skip


async def test_rate_limit_waits_hold_no_in_flight_slot():
    """A client far over its limit waits for its turn without taking the slots others need."""
    pub = RecordingPublisher()
    d = own(Dispatcher(settings=Settings(max_in_flight=2), config=LIMITED,
                       client=ScriptedBackendClient(), publisher=pub))  # fmt: skip
    for i in range(6):  # 1 taken at once, 5 reservations of 1..5 s
        await asyncio.wait_for(d.submit(TP0, client_record(i, "noisy"), lambda: None), 1)
    # Same partition, another client: its submit does not wait behind the reservations.
    await asyncio.wait_for(d.submit(TP0, client_record(6, "quiet"), lambda: None), 1)
    await asyncio.sleep(0.2)
    answered = {reply.id for _, reply in pub.replies}
    assert {"noisy-0", "quiet-6"} <= answered and "noisy-1" not in answered
    for task in [t for ts in d._tasks.values() for t in ts]:
        task.cancel()


TWO_ROUTES = cfg.loads(
    """
backends:
  - {id: a, protocol: openai, base_url: "http://a", models: [echo], max_concurrency: 1}
  - {id: b, protocol: openai, base_url: "http://b", models: [echo], max_concurrency: 8}
routes:
  default: {targets: [{backend: a, model: echo}]}
  only-a: {targets: [{backend: a, model: echo}]}
  only-b: {targets: [{backend: b, model: echo}]}
""",
    env={},
)


async def test_requests_waiting_for_a_full_backend_hold_no_in_flight_slot():
    """A saturated backend's queue does not keep requests for an idle one out."""
    client = ScriptedBackendClient(delay_s={"a": 0.5, "b": 0.0})
    pub = RecordingPublisher()
    d = own(Dispatcher(settings=Settings(max_in_flight=2), config=TWO_ROUTES, client=client,
                       publisher=pub))  # fmt: skip
    for i in range(4):  # a serves one at a time; three wait for it
        await asyncio.wait_for(d.submit(TP0, record(i, model="only-a"), lambda: None), 1)
    await asyncio.wait_for(d.submit(TP0, record(4, model="only-b"), lambda: None), 1)
    await asyncio.sleep(0.2)
    assert [r.id for _, r in pub.replies] == ["r4"]
    await drain(d)
    assert len(pub.replies) == 5 and d._pool.parked == 0


async def test_parking_is_bounded_then_waiting_requests_keep_their_slot():
    """Past TURNOUT_MAX_WAITING parked requests, a waiting request keeps its slot (backpressure)."""
    client = ScriptedBackendClient(delay_s={"a": 0.3})
    pub = RecordingPublisher()
    d = own(Dispatcher(settings=Settings(max_in_flight=2, max_waiting=1), config=TWO_ROUTES,
                       client=client, publisher=pub))  # fmt: skip
    for i in range(3):  # calling, parked, waiting with its slot: every slot is taken
        await asyncio.wait_for(d.submit(TP0, record(i, model="only-a"), lambda: None), 1)
    blocked = asyncio.create_task(d.submit(TP0, record(3, model="only-b"), lambda: None))
    await asyncio.sleep(0.1)
    assert not blocked.done()
    await drain(d)
    await blocked
    await drain(d)
    assert len(pub.replies) == 4 and d._pool.parked == 0


async def test_a_replaced_tracker_whose_records_were_cancelled_reads_the_partition_again():
    """Anchored at 0 before the committed offset (5) was known, the worker took record 5;
    the re-anchor at 5 cancels it. Nothing may come again on its own (the consumer had
    handed over every record), so each commit asks to read TP0 again from 5 until a
    record of it arrives. The rebalance-storm drill stalled partitions without this."""
    d, asked = refetching(ScriptedBackendClient(delay_s=5.0))
    own(d, anchor=0)
    await d.submit(TP0, record(5), lambda: None)  # offsets 0-4 look skipped: read again from 0
    assert asked == [(TP0, 0)]
    await asyncio.sleep(0.05)
    d.anchor({TP0: 5})  # the committed offset, known now: the tracker is replaced
    asked.clear()
    assert d.committable(TP0) == 5
    assert d.committable(TP0) == 5
    assert asked == [(TP0, 5), (TP0, 5)]  # every commit asks until record 5 comes again
    asked.clear()
    await d.submit(TP0, record(5), lambda: None)
    assert d.committable(TP0) == 5
    assert asked == []
    await d.stop(grace_s=0.1)


async def test_records_handed_over_before_the_anchor_are_read_again_from_it():
    """faust resumes a partition, then seeks it: record 50 reached the worker after the
    assignment and before the anchor (no tracker: dropped). Once anchored at 50, every
    commit asks to read it again until it comes; a drop below the anchor asks nothing.
    A request sent right after a worker restart waited in Kafka without this."""
    d, asked = refetching(ScriptedBackendClient())
    tp1 = TP(TP0.topic, 1)
    d.assigned({TP0, tp1})
    await d.submit(TP0, record(51), lambda: None)
    await d.submit(TP0, record(50), lambda: None)
    await d.submit(tp1, record(3), lambda: None)
    assert d.stale == 3 and asked == []
    d.anchor({TP0: 50, tp1: 7})  # tp1's record 3 is below its anchor: done elsewhere
    d.ask_rereads()  # faust commits no partition that acked nothing: the runtime asks
    assert asked == [(TP0, 50)]
    assert d.committable(TP0) == 50 and d.committable(tp1) == 7
    assert asked == [(TP0, 50), (TP0, 50)]
    asked.clear()
    await d.submit(TP0, record(50), lambda: None)
    await drain(d)
    d.ask_rereads()
    assert d.committable(TP0) == 51 and asked == []
    await d.stop(grace_s=0.1)


async def test_idle_lists_partitions_with_nothing_in_flight_while_slots_are_free():
    d, _ = make(ScriptedBackendClient(delay_s=5.0), max_in_flight=2)
    tp1 = TP(TP0.topic, 1)
    d.assigned({TP0, tp1})
    d.anchor({tp1: 3})
    assert d.idle() == {TP0: 0, tp1: 3}
    await d.submit(TP0, record(0), lambda: None)
    assert d.idle() == {tp1: 3}
    await d.submit(tp1, record(3), lambda: None)
    assert d.idle() is None  # every slot taken: records may be waiting for one
    await d.stop(grace_s=0)


async def test_a_drop_before_a_revoke_is_forgotten():
    """A partition dropped before it moved away asks nothing when it comes back later
    and is anchored past the dropped record."""
    d, asked = refetching(ScriptedBackendClient())
    d.assigned({TP0})
    await d.submit(TP0, record(5), lambda: None)
    d.assigned(set())
    d.assigned({TP0})
    d.anchor({TP0: 0})
    d.ask_rereads()
    assert d.committable(TP0) == 0 and asked == []
    await d.stop(grace_s=0.1)


async def test_a_re_anchor_that_cancels_nothing_asks_for_no_read_again():
    """A tracker replaced with nothing in flight: the consumer's own seek covers it."""
    d, asked = refetching(ScriptedBackendClient())
    own(d, anchor=0)
    d.anchor({TP0: 7})
    assert d.committable(TP0) == 7
    assert asked == []
