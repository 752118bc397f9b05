"""The dispatcher against health: hung calls re-dispatched, what cannot finish not sent,
failures the backend did not cause kept out of its health, and honest retry advice.
A scripted backend and a recording publisher: no Kafka, real asyncio."""

import asyncio
import time

from faust.types import TP

from schemas.types import Request
from turnout import config as cfg
from turnout.core.admission import Record
from turnout.health import HangDetected, State
from turnout.settings import Settings
from turnout.testing.fake import ScriptedBackendClient
from turnout.worker.dispatch import Dispatcher

TP0 = TP("turnout.requests", 0)
CONFIG = cfg.loads(
    """
backends:
  - {id: a, protocol: openai, base_url: "http://a", models: [echo], max_concurrency: 8}
  - {id: b, protocol: openai, base_url: "http://b", models: [echo], max_concurrency: 8}
routes:
  default: {targets: [{backend: a, model: echo}, {backend: b, model: echo}], policy: first}
  only-a: {targets: [{backend: a, model: echo}]}
""",
    env={},
)


class RecordingPublisher:
    def __init__(self):
        self.replies = []

    async def reply(self, topic, reply):
        self.replies.append((topic, reply))

    async def dead_letter(self, record):
        raise AssertionError("nothing here is dead-lettered")


def record(offset, model="default", timeout_ms=None, priority=5):
    req = Request(
        id=f"r{offset}",
        client_id="c",
        kind="chat",
        model=model,
        priority=priority,
        timeout_ms=timeout_ms,
        body={"messages": [{"role": "user", "content": f"m{offset}"}]},
    )
    return Record(
        topic="turnout.requests",
        partition=0,
        offset=offset,
        timestamp_ms=int(time.time() * 1000),
        key=b"c",
        value=req.to_wire(),
    )


def own(d):
    """``d`` owns TP0, read from offset 0: it serves only partitions it tracks."""
    d.assigned({TP0})
    d.anchor({TP0: 0})
    return d


def make(client):
    pub = RecordingPublisher()
    return own(Dispatcher(settings=Settings(), config=CONFIG, client=client, publisher=pub)), pub


def now_ms():
    return int(time.time() * 1000)


def teach(d, backend, latencies_ms):
    """Give a backend a latency history, as served traffic would."""
    for i, latency in enumerate(latencies_ms):
        d.chooser.observe(backend, None, latency)
        d.chooser.health.observe(backend, True, latency, now_ms() + i)


async def test_calls_stuck_on_a_hung_backend_are_re_dispatched_once_each():
    """A hang takes the backend out and its stuck calls finish on the other: one ok reply each."""
    client = ScriptedBackendClient(delay_s={"a": 60.0})
    d, pub = make(client)
    for i in range(3):
        await d.submit(TP0, record(i), lambda: None)
    await asyncio.sleep(0.05)
    assert d.chooser.health.machines["a"].oldest_call_ms() is not None
    assert d.chooser.health.tick(now_ms() + 3_100)  # the bound passes with nothing completing
    assert d.chooser.health.state("a") is State.UNHEALTHY
    d.wake()  # what the health feed does on a change
    await d.stop(grace_s=5)
    replies = [r for _, r in pub.replies]
    assert sorted(r.id for r in replies) == ["r0", "r1", "r2"]
    assert {(r.status, r.backend, r.attempts) for r in replies} == {("ok", "b", 2)}
    assert d.chooser.redispatched == 3
    assert d.chooser.health.machines["a"].calls == {}
    assert d.metrics.redispatched_total.labels("a")._value.get() == 3


async def test_a_cancelled_request_that_was_not_abandoned_stays_cancelled():
    """A partition moving away cancels its requests; not mistaken for an abandonment."""
    client = ScriptedBackendClient(delay_s={"a": 60.0})
    d, pub = make(client)
    await d.submit(TP0, record(0), lambda: None)
    await asyncio.sleep(0.05)
    assert d.assigned(set()) == 1  # TP0 moved to another worker
    await d.stop(grace_s=1)
    assert pub.replies == []
    assert d.chooser.redispatched == 0


async def test_a_request_that_cannot_finish_in_time_is_not_sent():
    """Less time left than the backend's p50: deadline_exceeded at once, health untouched."""
    client = ScriptedBackendClient()
    d, pub = make(client)
    teach(d, "a", [500.0] * 10)
    await d.submit(TP0, record(0, model="only-a", timeout_ms=200), lambda: None)
    await d.stop(grace_s=5)
    ((_, reply),) = pub.replies
    assert reply.status == "error" and reply.error.code == "deadline_exceeded"
    assert "less than the recent median latency" in reply.error.message
    assert "a p50 500 ms" in reply.error.message
    assert client.calls == []
    assert reply.timings.total_ms < 150
    assert d.chooser.health.machines["a"].window.failures == 0


async def test_a_faster_target_still_serves_what_a_slow_one_could_not_finish():
    """Only the too-slow target is passed over when another fits the time left."""
    client = ScriptedBackendClient()
    d, pub = make(client)
    teach(d, "a", [500.0] * 10)
    await d.submit(TP0, record(0, timeout_ms=300), lambda: None)
    await d.stop(grace_s=5)
    ((_, reply),) = pub.replies
    assert (reply.status, reply.backend) == ("ok", "b")


async def test_a_timeout_the_deadline_imposed_does_not_count_against_the_backend():
    """Cut by the request's short deadline, below the backend's p99: not the backend's fault."""
    client = ScriptedBackendClient(delay_s={"a": 2.0})
    d, pub = make(client)
    teach(d, "a", [50.0] * 8 + [2000.0] * 2)  # p50 50 ms, p99 2 s
    await d.submit(TP0, record(0, model="only-a", timeout_ms=300), lambda: None)
    await d.stop(grace_s=5)
    ((_, reply),) = pub.replies
    assert reply.status == "error" and reply.error.code == "deadline_exceeded"
    assert len(client.calls) == 1
    assert d.chooser.health.machines["a"].window.failures == 0


async def test_a_timeout_the_backend_had_time_for_counts_against_it():
    """A timeout with the backend's own limit (not the deadline) is its failure."""
    slow = cfg.loads(
        """
backends:
  - {id: a, protocol: openai, base_url: "http://a", models: [echo], timeout_ms: 100}
routes:
  only-a: {targets: [{backend: a, model: echo}], max_attempts: 1}
""",
        env={},
    )
    pub = RecordingPublisher()
    client = ScriptedBackendClient(delay_s={"a": 1.0})
    d = own(Dispatcher(settings=Settings(), config=slow, client=client, publisher=pub))
    await d.submit(TP0, record(0, model="only-a", timeout_ms=30_000), lambda: None)
    await d.stop(grace_s=5)
    ((_, reply),) = pub.replies
    assert reply.error.code == "backend_timeout"
    assert d.chooser.health.machines["a"].window.failures == 1


async def test_retry_after_reflects_the_backlog_ahead_at_the_measured_drain_rate():
    """Waiting requests that time out are told when the backlog ahead will have cleared."""
    one = cfg.loads(
        """
backends:
  - {id: a, protocol: openai, base_url: "http://a", models: [echo], max_concurrency: 1}
routes:
  only-a: {targets: [{backend: a, model: echo}]}
""",
        env={},
    )
    pub = RecordingPublisher()
    client = ScriptedBackendClient(delay_s={"a": 0.05})  # drains 20 a second
    d = own(Dispatcher(settings=Settings(), config=one, client=client, publisher=pub))
    for i in range(10):  # measure the drain rate
        await d.submit(TP0, record(i, model="only-a"), lambda: None)
    await asyncio.sleep(0.8)
    for i in range(10, 30):  # 20 with time to be served: about 1 s of backlog
        await d.submit(TP0, record(i, model="only-a", timeout_ms=5_000, priority=9), lambda: None)
    await d.submit(TP0, record(99, model="only-a", timeout_ms=100, priority=1), lambda: None)
    await d.stop(grace_s=10)
    late = next(r for _, r in pub.replies if r.id == "r99")
    assert late.error.code == "deadline_exceeded"
    # about 19 waiting ahead plus 1 in flight, at 20 a second: about 1 s, within 2x
    assert 500 <= late.error.retry_after_ms <= 2_000, late.error.retry_after_ms


async def test_a_down_backend_is_reported_down_not_too_slow():
    """When the only target is unhealthy, the error says so, whatever its p50."""
    client = ScriptedBackendClient()
    d, pub = make(client)
    teach(d, "a", [500.0] * 10)
    d.chooser.health.machines["a"].handle(HangDetected("hung: test"), now_ms())
    await d.submit(TP0, record(0, model="only-a", timeout_ms=200), lambda: None)
    await d.stop(grace_s=5)
    ((_, reply),) = pub.replies
    assert reply.error.code == "deadline_exceeded"
    assert "a: unhealthy (hung: test)" in reply.error.message
    assert reply.error.retry_after_ms >= 1000  # probation's wait, not "right away"


async def test_a_newcomer_does_not_take_a_slot_ahead_of_a_woken_waiter():
    """A request arriving as a slot frees joins the queue behind more urgent waiters."""
    from turnout.core.admission import admit

    one = cfg.loads(
        """
backends:
  - {id: a, protocol: openai, base_url: "http://a", models: [echo], max_concurrency: 1}
routes:
  only-a: {targets: [{backend: a, model: echo}]}
""",
        env={},
    )
    d = Dispatcher(settings=Settings(), config=one, client=ScriptedBackendClient(), publisher=None)
    jobs = [
        admit(
            record(i, model="only-a", priority=p), config=one, settings=Settings(), now_ms=now_ms()
        )
        for i, p in enumerate([9, 1])
    ]

    async def take(job):
        """What the dispatcher does: choose, then start the call at once."""
        decision, _ = await d.chooser.choose(job, frozenset())
        d.chooser.started(decision.backend)

    token = d.chooser.started("a")  # the only slot is busy
    urgent = asyncio.create_task(take(jobs[0]))
    await asyncio.sleep(0.01)
    assert not urgent.done()  # it waits for the slot
    newcomer = asyncio.create_task(take(jobs[1]))  # scheduled before the waiter wakes
    d.chooser.finished("a", token)
    await asyncio.sleep(0.01)
    assert urgent.done() and not newcomer.done()
    newcomer.cancel()


async def test_a_first_byte_or_stall_timeout_is_the_backends_failure():
    """The backend's own first-byte or stall limit ran out: it counts, deadline or not."""
    from turnout.errors import BackendTimeout

    for limit in ("first_byte", "stall"):
        client = ScriptedBackendClient(
            {"a": [BackendTimeout("no bytes", backend="a", limit=limit)] * 2}
        )
        d, _ = make(client)
        await d.submit(TP0, record(0, model="only-a", timeout_ms=5_000), lambda: None)
        await d.stop(grace_s=5)
        assert d.chooser.health.machines["a"].window.failures == 2, limit
