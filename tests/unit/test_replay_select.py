"""Choosing what a replay publishes: filters, the original bytes and key, and the headers."""

import orjson
import pytest

from schemas.types import DeadLetter, ErrorInfo, Reply, Request, Source
from turnout.ops.replay_core import (
    FORCE_HEADER,
    REPLAY_HEADER,
    Candidate,
    Filters,
    SourceRecord,
    error_code_verdict,
    replay_headers,
    select,
)

PREFIX = "turnout.replies."


def request_bytes(req_id="r1", client="c1", model="default", **extra) -> bytes:
    return Request(
        id=req_id,
        client_id=client,
        kind="chat",
        model=model,
        body={"messages": [{"role": "user", "content": "hi"}]},
        **extra,
    ).to_wire()


def record(value: bytes, key: bytes | None = b"c1", headers=(), offset=7) -> SourceRecord:
    return SourceRecord("t.requests", 2, offset, 1000, key, value, tuple(headers))


def choose(rec, filters: Filters | None = None, **kw) -> Candidate | str:
    filters = filters or Filters()
    kw.setdefault("dead_letters", False)
    kw.setdefault("to_route", None)
    return select(rec, filters, reply_prefix=PREFIX, **kw)


def test_a_request_is_replayed_byte_for_byte_with_its_key():
    """Without --to-route the value and key are exactly the original ones."""
    raw = request_bytes()
    got = choose(record(raw))
    assert isinstance(got, Candidate)
    assert (got.key, got.value) == (b"c1", raw)
    assert (got.request_id, got.client_id, got.reply_topic) == ("r1", "c1", PREFIX + "c1")
    assert got.source == "t.requests:2:7"


def test_reply_to_is_where_its_outcome_is_watched():
    """A request with reply_to is followed on that topic."""
    got = choose(record(request_bytes(reply_to="turnout.replies.other")))
    assert got.reply_topic == "turnout.replies.other"


def test_to_route_rewrites_only_the_model():
    """The id, client and everything else stay; only model changes."""
    got = choose(record(request_bytes(metadata={"team": "x"})), to_route="cloud")
    decoded = Request.from_wire(got.value)
    assert decoded.model == "cloud" and decoded.id == "r1" and decoded.metadata == {"team": "x"}


@pytest.mark.parametrize(
    ("filters", "reason"),
    [
        (Filters(clients=frozenset({"c2"})), "another client"),
        (Filters(routes=frozenset({"embed"})), "another route"),
        (Filters(positions=frozenset({(2, 8)})), "not among the chosen offsets"),
    ],
)
def test_filters_say_why_a_record_is_left_out(filters, reason):
    assert choose(record(request_bytes()), filters) == reason


def test_filters_that_match_keep_the_record():
    f = Filters(clients=frozenset({"c1"}), routes=frozenset({"default"}))
    assert isinstance(choose(record(request_bytes()), f), Candidate)


def test_earlier_replays_are_left_out_unless_asked():
    """A replay never replays its own output: records with a replay header are skipped."""
    rec = record(request_bytes(), headers=[(REPLAY_HEADER, b"t:0:1")])
    assert "earlier replay" in choose(rec)
    got = choose(rec, Filters(include_replays=True))
    assert isinstance(got, Candidate) and got.headers == ()


def test_invalid_requests_are_left_to_the_dead_letter_tools():
    assert "dead-letter" in choose(record(b"not json"))


def dead_letter(value: bytes, code="unknown_model", key=b"c1") -> bytes:
    return DeadLetter(
        code=code,
        reason="r",
        source=Source(topic="t.requests", partition=1, offset=3),
        key=key,
        value=value,
        request_id="r1",
        client_id="c1",
        dead_lettered_at_ms=5,
    ).to_wire()


def test_a_dead_letter_replays_its_original_bytes_and_key():
    """From the dead-letter topic, what is published is the original record."""
    raw = request_bytes()
    got = choose(record(dead_letter(raw, key=b"orig")), dead_letters=True)
    assert (got.key, got.value, got.request_id) == (b"orig", raw, "r1")


def test_a_dead_letter_that_is_not_json_is_still_replayed():
    """Garbage stays garbage byte for byte (a fix may be in the worker), just not followed by id."""
    got = choose(record(dead_letter(b"\x00\xff")), dead_letters=True)
    assert got.value == b"\x00\xff" and got.request_id is None


def test_dead_letters_filter_by_code():
    rec = record(dead_letter(request_bytes(), code="invalid_request"))
    f = Filters(dead_letter_codes=frozenset({"unknown_model"}))
    assert choose(rec, f, dead_letters=True) == "another dead-letter code"


def test_replay_headers_name_the_source_and_force():
    """turnout-replay names topic:partition:offset; --force adds turnout-replay-force: 1."""
    assert replay_headers((("trace", b"x"),), "t:1:2", force=False) == [
        ("trace", b"x"),
        (REPLAY_HEADER, b"t:1:2"),
    ]
    forced = replay_headers(((REPLAY_HEADER, b"old"),), "t:1:2", force=True)
    assert forced == [(REPLAY_HEADER, b"t:1:2"), (FORCE_HEADER, b"1")]


def test_header_names_match_what_the_worker_reads():
    """The worker's agent honours exactly these names."""
    from agents import router

    assert (router.REPLAY, router.REPLAY_FORCE) == (REPLAY_HEADER, FORCE_HEADER)


def candidate(req_id="r1") -> Candidate:
    return choose(record(request_bytes(req_id)))


def reply(status, code=None, req_id="r1") -> Reply:
    err = ErrorInfo(code=code, message="m", retryable=True) if code else None
    return Reply(id=req_id, status=status, error=err)


@pytest.mark.parametrize(
    ("final", "verdict"),
    [
        (reply("error", "backend_unavailable"), None),
        (reply("error", "unknown_model"), "another error code"),
        (reply("ok"), "done"),
        (None, "no final reply found"),
    ],
)
def test_the_error_code_filter_reads_the_final_reply(final, verdict):
    """Kept when the final reply has the code; a final ok means done; no reply is left out."""
    finals = {} if final is None else {(PREFIX + "c1", "r1"): final}
    assert error_code_verdict(candidate(), finals, frozenset({"backend_unavailable"})) == verdict


def test_replayed_requests_keep_their_id_even_when_rewritten():
    """Ids are the dedupe key: no path through select changes one."""
    got = choose(record(request_bytes("keep-me")), to_route="x")
    assert orjson.loads(got.value)["id"] == "keep-me"
