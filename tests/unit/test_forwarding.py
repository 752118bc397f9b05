"""Spillover through the dispatcher and the forwarding relay: no Kafka, real asyncio."""

import asyncio
import time

import pytest
from faust.types import TP

from schemas.types import Reply, Request
from turnout import config as cfg
from turnout.config import ConfigError
from turnout.core.admission import Record, admit
from turnout.core.region_state import BackendSummary, RegionState, view
from turnout.settings import Settings
from turnout.testing.fake import ScriptedBackendClient
from turnout.worker.dispatch import Dispatcher
from turnout.worker.forwarding import Forwarding
from turnout.worker.state import MemoryTable, done_key

CONFIG = cfg.loads(
    """
backends:
  - {id: a, protocol: openai, base_url: "http://a", models: [echo], max_concurrency: 2}
routes:
  chat:
    targets: [{backend: a, model: echo}, {region: eu}, {region: ap, model: big}]
  home-only: {targets: [{backend: a, model: echo}]}
""",
    env={},
)
TP0 = TP("turnout.requests", 0)


def test_region_targets_are_read_into_the_routes_regions_in_order():
    """``{region: X}`` among targets becomes a region target; backends stay targets."""
    route = CONFIG.routes["chat"]
    assert [t.backend for t in route.targets] == ["a"]
    assert [(r.region, r.model) for r in route.regions] == [("eu", None), ("ap", "big")]


def test_a_route_of_regions_only_is_valid():
    """A model only other regions serve: a route with region targets and no backend."""
    c = cfg.loads(
        "backends: [{id: a, protocol: openai, base_url: 'http://a', models: [x]}]\n"
        "routes: {far: {targets: [{region: eu}]}}\n",
        env={},
    )
    assert c.routes["far"].targets == [] and c.routes["far"].regions[0].region == "eu"


@pytest.mark.parametrize(
    ("targets", "problem"),
    [
        ("[{region: EU}]", "region 'EU' is not a region name"),
        ("[{region: eu}, {region: eu}]", "region 'eu' is named twice"),
        ("[{region: eu, backend: a}]", "backend: unknown field"),
        ("[{region: eu, weight: 3}]", "weight: unknown field"),
    ],
)
def test_bad_region_targets_are_reported_with_where_and_how(targets, problem):
    """Invalid names, repeats and stray fields are config errors, named by route."""
    with pytest.raises(ConfigError) as err:
        cfg.loads(
            "backends: [{id: a, protocol: openai, base_url: 'http://a', models: [x]}]\n"
            f"routes: {{r: {{targets: {targets}}}}}\n",
            env={},
        )
    assert problem in str(err.value) and "routes" in str(err.value)


def test_admission_accepts_a_forwarded_requests_reply_topic():
    """A serving region admits a request that replies to turnout.forward-replies.<home>."""
    req = Request(id="r", client_id="c", kind="chat", model="chat",
                  body={"messages": [{"role": "user", "content": "x"}]},
                  reply_to="turnout.forward-replies.us")
    rec = Record(topic="t", partition=0, offset=0, timestamp_ms=int(time.time() * 1000),
                 key=b"c", value=req.to_wire())
    out = admit(rec, config=CONFIG, settings=Settings(), now_ms=int(time.time() * 1000))
    assert out.reply_to == "turnout.forward-replies.us"


class Sync:
    """The region-sync view a Forwarding reads: fixed states, fresh."""

    def __init__(self, **spare):
        now = int(time.time() * 1000)
        self.latest = {
            name: RegionState(
                region=name,
                published_at_ms=now,
                backends=(BackendSummary(id="x", tier="local", state="healthy", capacity=n),),
            )
            for name, n in spare.items()
        }

    def view(self):
        return view(self.latest, now_ms=int(time.time() * 1000), stale_after_ms=15_000)


class Publisher:
    """Records forwards and replies; optionally answers each forward as region ``eu``."""

    def __init__(self):
        self.replies = []
        self.forwards = []
        self.forwarding = None
        self.answer = True

    async def publish(self, topic, key, value, headers, **_):
        self.forwards.append((topic, Request.from_wire(value)))
        if self.answer:
            req = Request.from_wire(value)
            reply = Reply(id=req.id, status="ok", client_id=req.client_id, body={"from": topic},
                          backend="eu-b", attempts=1)
            loop = asyncio.get_running_loop()
            loop.call_later(0.01, self.forwarding.receive_reply, reply, "eu")

    async def reply(self, topic, reply):
        self.replies.append((topic, reply))

    async def dead_letter(self, record):
        raise AssertionError("nothing here is dead-lettered")


def record(offset, model="chat", rid=None, stream=False, reply_to=None, timeout_ms=5000):
    req = Request(id=rid or f"r{offset}", client_id="c", kind="chat", model=model, stream=stream,
                  body={"messages": [{"role": "user", "content": "hi"}]}, reply_to=reply_to,
                  timeout_ms=timeout_ms)
    return Record(topic="turnout.requests", partition=0, offset=offset,
                  timestamp_ms=int(time.time() * 1000), key=b"c", value=req.to_wire())


def make(client=None, config=CONFIG, **spare):
    pub = Publisher()
    done = MemoryTable()
    d = Dispatcher(settings=Settings(), config=config, client=client or ScriptedBackendClient(),
                   publisher=pub, done=done)
    fw = Forwarding(region="us", sync=Sync(**spare), publisher=pub, bootstrap="",
                    request_topic="turnout.requests", group="g")
    pub.forwarding = fw
    d.forwarding = fw
    d.assigned({TP0})
    d.anchor({TP0: 0})
    return d, pub, fw, done


def down(d, backend="a"):
    for _ in range(5):
        d.chooser.health.observe(backend, False, 1.0, int(time.time() * 1000))


async def test_with_every_local_target_down_the_request_is_served_by_a_region_with_room():
    """Local target unhealthy: forwarded to eu (fresh, room), one final reply, degraded."""
    d, pub, _, done = make(eu=4, ap=4)
    down(d)
    acked = []
    await d.submit(TP0, record(0), lambda: acked.append(0))
    await d.stop(grace_s=10)
    ((topic, fwd),) = pub.forwards
    assert topic == "turnout.forward.eu" and fwd.id == "r0"
    assert fwd.reply_to == "turnout.forward-replies.us" and fwd.deadline is not None
    ((to, reply),) = pub.replies
    assert to == "turnout.replies.c" and reply.status == "ok"
    assert reply.degraded and reply.served_region == "eu" and reply.body == {"from": topic}
    assert acked == [0] and d.committable(TP0) == 1
    assert done.get(done_key("c", "r0")) is not None


async def test_a_region_without_fresh_room_is_passed_over_for_the_next():
    """eu has no capacity: ap, with the model the route names for it."""
    d, pub, _, _ = make(eu=0, ap=2)
    down(d)
    await d.submit(TP0, record(0), lambda: None)
    await d.stop(grace_s=10)
    ((topic, fwd),) = pub.forwards
    assert topic == "turnout.forward.ap" and fwd.model == "big"


async def test_the_offset_is_not_finished_before_the_remote_answer_is_published():
    """While the forward waits for its answer, the request's offset holds the commit point."""
    d, pub, fw, _ = make(eu=4)
    pub.answer = False
    down(d)
    await d.submit(TP0, record(0, timeout_ms=60_000), lambda: None)
    for _ in range(100):
        if pub.forwards:
            break
        await asyncio.sleep(0.01)
    assert pub.forwards and d.committable(TP0) == 0 and not pub.replies
    fw.receive_reply(Reply(id="r0", status="ok", client_id="c", body={}, attempts=1), "eu")
    await d.stop(grace_s=10)
    assert d.committable(TP0) == 1 and len(pub.replies) == 1


async def test_healthy_local_targets_serve_locally():
    """Spillover is for when the local targets cannot serve: nothing is forwarded otherwise."""
    d, pub, _, _ = make(eu=4)
    await d.submit(TP0, record(0), lambda: None)
    await d.stop(grace_s=10)
    assert not pub.forwards and pub.replies[0][1].served_region is None


async def test_with_no_region_trusted_the_request_waits_locally_and_fails_honestly():
    """No fresh region with room: no forward; the deadline error of a local route."""
    d, pub, _, _ = make()
    down(d)
    await d.submit(TP0, record(0, timeout_ms=1500), lambda: None)
    await d.stop(grace_s=10)
    assert not pub.forwards
    ((_, reply),) = pub.replies
    assert reply.status == "error" and reply.error.code == "deadline_exceeded"


@pytest.mark.parametrize(
    "kw",
    [
        {"model": "home-only"},
        {"stream": True},
        {"reply_to": "turnout.forward-replies.ap"},  # forwarded here already: one hop
    ],
)
async def test_routes_without_regions_streams_and_forwarded_requests_are_never_forwarded(kw):
    """Only a route naming regions spills, never a stream, never a second hop."""
    d, pub, _, _ = make(eu=4)
    down(d)
    await d.submit(TP0, record(0, timeout_ms=1200, **kw), lambda: None)
    await d.stop(grace_s=10)
    assert not pub.forwards and len(pub.replies) == 1


async def test_a_retried_forward_answered_before_is_not_forwarded_again():
    """An ok answer kept from an earlier forward of the same id is used as it is."""
    d, pub, fw, _ = make(eu=4)
    down(d)
    fw.receive_reply(Reply(id="r0", status="ok", client_id="c", body={"old": 1}, attempts=1),
                     "eu")
    await d.submit(TP0, record(0), lambda: None)
    await d.stop(grace_s=10)
    assert not pub.forwards
    ((_, reply),) = pub.replies
    assert reply.body == {"old": 1} and reply.served_region == "eu"
    assert fw.counts["reused"] == 1


async def test_a_second_serve_of_an_answered_id_publishes_no_second_final_reply():
    """Two serves of one id (a repeat while the first was forwarded): one final reply."""
    d, pub, fw, _ = make(eu=4)
    down(d)
    await d.submit(TP0, record(0, rid="same"), lambda: None)
    await d.submit(TP0, record(1, rid="same"), lambda: None)
    await d.stop(grace_s=10)
    assert [r.id for _, r in pub.replies] == ["same"]
    assert fw.counts["duplicate_suppressed"] == 1 and d.committable(TP0) == 2


async def test_a_forward_with_no_answer_by_the_deadline_ends_in_one_error_reply():
    """The link is cut: the request still ends, with a retryable error naming the region."""
    import turnout.worker.forwarding as fwmod

    d, pub, _, _ = make(eu=4)
    pub.answer = False
    down(d)
    grace, fwmod.REPLY_GRACE_MS = fwmod.REPLY_GRACE_MS, 0
    try:
        await d.submit(TP0, record(0, timeout_ms=1500), lambda: None)
        await d.stop(grace_s=10)
    finally:
        fwmod.REPLY_GRACE_MS = grace
    ((_, reply),) = pub.replies
    assert reply.status == "error" and reply.error.code == "deadline_exceeded"
    assert reply.served_region == "eu" and d.committable(TP0) == 1


def test_unclaimed_replies_are_kept_for_a_while_then_forgotten():
    """A reply nobody waits for is kept KEEP_S, then dropped."""
    import turnout.worker.forwarding as fwmod

    fw = Forwarding(region="us", sync=Sync(), publisher=None, bootstrap="", request_topic="t",
                    group="g")
    fw.receive_reply(Reply(id="1", status="ok", client_id="c"), "eu", now=1000.0)
    assert ("c", "1") in fw._kept
    fw.receive_reply(Reply(id="2", status="ok", client_id="c"), "eu",
                     now=1000.0 + fwmod.KEEP_S + 1)
    assert list(fw._kept) == [("c", "2")]


async def test_a_forward_the_broker_refuses_for_good_ends_the_request_with_a_dead_letter():
    """A forward topic refusing the record: an error reply and a dead letter, no waiter left."""
    from turnout.worker.publisher import PublishFailed

    class Refusing(Publisher):
        def __init__(self):
            super().__init__()
            self.dead_letters = []

        async def publish(self, topic, key, value, headers, **_):
            raise PublishFailed(f"TopicAuthorizationFailedError publishing to {topic}")

        async def dead_letter(self, record):
            self.dead_letters.append(record)

    d, _, fw, _ = make(eu=4)
    pub = Refusing()
    d._publisher = fw._publisher = pub
    down(d)
    await d.submit(TP0, record(0), lambda: None)
    await d.stop(grace_s=10)
    ((_, reply),) = pub.replies
    assert reply.status == "error" and len(pub.dead_letters) == 1
    assert not fw._waiters and d.committable(TP0) == 1


async def test_a_route_of_regions_only_forwards_at_once():
    """No local target at all: forwarded to the first region with room, without waiting."""
    config = cfg.loads(
        "backends: [{id: a, protocol: openai, base_url: 'http://a', models: [echo]}]\n"
        "routes: {far: {targets: [{region: eu}]}}\n",
        env={},
    )
    d, pub, _, _ = make(config=config, eu=4)
    started = time.monotonic()
    await d.submit(TP0, record(0, model="far"), lambda: None)
    await d.stop(grace_s=10)
    ((topic, _),) = pub.forwards
    ((_, reply),) = pub.replies
    assert topic == "turnout.forward.eu" and reply.status == "ok" and reply.served_region == "eu"
    assert time.monotonic() - started < 1.0
