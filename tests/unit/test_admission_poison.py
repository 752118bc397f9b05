"""No record stalls admission: any bytes become work or an addressed (or unaddressed) rejection.

Bad reply targets are refused: a rejection names a reply topic only when it is
valid for the request, never one turnout would have to invent.
"""

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.types import salvage_reply_address
from turnout import config as cfg
from turnout.core.admission import (
    Admitted,
    Record,
    Rejected,
    admit,
    nesting_depth,
    valid_reply_topic,
)
from turnout.settings import Settings

CONFIG = cfg.loads(
    """
backends:
  - {id: local, protocol: openai, base_url: "http://127.0.0.1:1", models: [echo]}
routes:
  fast: {targets: [{backend: local, model: echo}]}
clients:
  c1: {requests_per_s: 5, burst: 5}
default_route: fast
""",
    env={},
)
SETTINGS = Settings(default_timeout_ms=10_000)
NOW = 1_700_000_000_000


def good(**over):
    req = {
        "id": "r1",
        "client_id": "c1",
        "kind": "chat",
        "model": "fast",
        "body": {"messages": [{"role": "user", "content": "hi"}]},
    }
    req.update(over)
    return req


def run(value, key=b"c1"):
    if not isinstance(value, bytes):
        value = orjson.dumps(value)
    rec = Record(
        topic="turnout.requests", partition=0, offset=5, timestamp_ms=NOW, key=key, value=value
    )
    return admit(rec, config=CONFIG, settings=SETTINGS, now_ms=NOW)


def nested(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


@pytest.mark.parametrize(
    "reply_to",
    [
        "turnout.replies.",
        "turnout.replies.a b",
        "turnout.replies.ä",
        "turnout.replies." + "x" * 300,
    ],
)
def test_an_invalid_reply_topic_is_dead_lettered_without_a_reply(reply_to):
    """An empty, illegal or too long reply suffix is refused and answered nowhere."""
    out = run(good(reply_to=reply_to))
    assert isinstance(out, Rejected) and out.dead_letter
    assert out.error.code in ("invalid_reply_topic", "invalid_request")
    assert out.reply_to is None


def test_an_empty_reply_suffix_is_named_in_the_reason():
    """reply_to 'turnout.replies.' gets invalid_reply_topic saying a suffix is needed."""
    out = run(good(reply_to="turnout.replies."))
    assert isinstance(out, Rejected) and out.error.code == "invalid_reply_topic"
    assert "at least one of" in out.error.message


def test_a_client_id_outside_the_schema_gets_no_reply():
    """A 129-character client id (max 128) is dead-lettered; no topic is made up for it."""
    cid = "c" * 129
    out = run(good(client_id=cid), key=cid.encode())
    assert isinstance(out, Rejected) and out.dead_letter and out.error.code == "invalid_request"
    assert out.reply_to is None and out.client_id is None and out.request_id == "r1"


def test_a_valid_explicit_reply_topic_is_kept_for_other_errors():
    """A request wrong elsewhere still hears why on its own valid reply topic."""
    out = run(good(reply_to="turnout.replies.mine", kind="bogus"))
    assert isinstance(out, Rejected) and out.reply_to == "turnout.replies.mine"


@pytest.mark.parametrize("where", ["top", "body"])
def test_json_nested_ten_thousand_deep_is_dead_lettered(where):
    """10,000 levels of nesting is invalid_request, at top level or inside the body."""
    if where == "top":
        value = nested(10_000)
    else:
        head = orjson.dumps(good())[:-2]  # drop the closing "}}" of body and request
        value = head + b',"x":' + nested(10_000) + b"}}"
    out = run(value)
    assert isinstance(out, Rejected) and out.dead_letter and out.error.code == "invalid_request"
    assert "nested" in out.error.message
    if where == "body":  # the sender can still be told, on its valid reply topic
        assert out.request_id == "r1" and out.reply_to == "turnout.replies.c1"
    else:
        assert out.reply_to is None


def test_a_body_nested_past_the_limit_is_refused_before_any_encoder_sees_it():
    """300 levels (orjson refuses past 255 when the backend call is encoded) is rejected."""
    head = orjson.dumps(good())[:-2]
    out = run(head + b',"x":' + b"[" * 300 + b"]" * 300 + b"}}")
    assert isinstance(out, Rejected) and "nested more than" in out.error.message


def test_a_body_within_the_depth_limit_is_admitted():
    """Ordinary nesting (tool schemas a dozen levels deep) passes."""
    deep: object = {"type": "string"}
    for _ in range(12):
        deep = {"properties": {"p": deep}}
    out = run(good(body={"messages": [{"role": "user", "content": "x"}], "tools": [deep]}))
    assert isinstance(out, Admitted)


def test_nesting_depth_stops_counting_past_the_limit():
    """The depth walk gives up one past the limit instead of walking everything."""
    deep: object = 1
    for _ in range(5000):
        deep = [deep]
    assert nesting_depth(deep, 10) == 11


def test_valid_reply_topic_needs_prefix_and_a_legal_suffix():
    """The prefix alone, another prefix, illegal characters and > 249 characters fail."""
    s = Settings()
    assert valid_reply_topic("turnout.replies.c-1_x.y", s)
    for bad in (
        "turnout.replies.",
        "other.c1",
        "turnout.replies.a/b",
        "turnout.replies." + "a" * 234,
    ):
        assert not valid_reply_topic(bad, s), bad


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=300) | JSON,
        "client_id": st.sampled_from(["c1", "", "c" * 129, "a b"]) | st.text(max_size=10) | JSON,
        "kind": st.sampled_from(["chat", "completion", "embeddings", "x"]) | JSON,
        "model": st.sampled_from(["fast", "echo", "nope", ""]) | JSON,
        "body": st.dictionaries(st.sampled_from(["messages", "prompt", "input", "x"]), JSON) | JSON,
        "reply_to": st.sampled_from(["turnout.replies.", "turnout.replies.c1", "x"]) | JSON,
        "timeout_ms": st.integers() | JSON,
        "deadline": st.integers(min_value=-(2**70), max_value=2**70),
        "priority": st.integers() | JSON,
        "metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=5)) | JSON,
        "stream": JSON,
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.binary(max_size=3000), key=st.none() | st.binary(max_size=200))
def test_admission_never_raises_on_arbitrary_bytes(value, key):
    """Any bytes under any key become Admitted or Rejected; nothing raises."""
    out = run(value, key=key)
    assert isinstance(out, (Admitted, Rejected))
    if isinstance(out, Rejected) and out.reply_to is not None:
        assert valid_reply_topic(out.reply_to, SETTINGS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=FIELDS, key=st.sampled_from([b"c1", b"", None, b"c" * 129]))
def test_admission_never_raises_on_near_valid_requests(obj, key):
    """JSON objects with every field possibly wrong never raise; replies go to valid topics."""
    try:
        value = orjson.dumps(obj)
    except TypeError:  # an integer orjson cannot encode: not a request anyone can send
        return
    out = run(value, key=key)
    assert isinstance(out, (Admitted, Rejected))
    if out.__class__ is Rejected and out.reply_to is not None:
        assert valid_reply_topic(out.reply_to, SETTINGS)
    if isinstance(out, Admitted):
        assert valid_reply_topic(out.reply_to, SETTINGS)


@settings(max_examples=300, deadline=None)
@given(prefix=st.binary(max_size=50), depth=st.integers(0, 3000), tail=st.binary(max_size=50))
def test_salvage_never_raises(prefix, depth, tail):
    """Reading a reply address out of broken, deeply nested bytes never raises."""
    salvage_reply_address(prefix + b"[" * depth + tail)
    salvage_reply_address(b'{"id":"x",' + b'"a":{' * depth + tail)


def test_a_reply_to_beyond_the_scanned_part_is_not_replaced_by_a_default():
    """When the scan of a too-deep request stops early, nobody is answered rather than
    the client's default topic instead of the reply_to it may name further on."""
    head = orjson.dumps(good())[:-2]
    value = head + b',"x":' + nested(30_000) + b'},"reply_to":"turnout.replies.mine"}'
    out = run(value)
    assert isinstance(out, Rejected) and out.request_id == "r1" and out.reply_to is None
