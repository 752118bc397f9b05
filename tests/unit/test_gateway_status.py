"""The gateway's pure state: the status store, chunk ordering, settings and API keys."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.types import Reply, ReplyChunk
from turnout.gateway import ANONYMOUS, GatewaySettings, load_keys
from turnout.gateway.kafka import StatusRecord, StatusStore
from turnout.gateway.openai_api import ChunkSequencer, StreamRestarted
from turnout.settings import Settings


def rec(status: str = "queued", updated_ms: int = 0, **kw: object) -> StatusRecord:
    return StatusRecord(status=status, client_id="c", updated_ms=updated_ms, **kw)  # type: ignore[arg-type]


def test_a_status_never_goes_backwards() -> None:
    """A late queued cannot hide done; done can be updated by another final record."""
    store = StatusStore(10, 1000)
    assert store.put("r", rec("done"))
    assert not store.put("r", rec("queued"))
    assert store.get("r", 0).status == "done"  # type: ignore[union-attr]
    assert store.put("r", rec("done", webhook="delivered"))
    assert store.get("r", 0).webhook == "delivered"  # type: ignore[union-attr]


def test_the_least_recently_used_entry_goes_first() -> None:
    """Past max_entries, the entry touched longest ago is dropped."""
    store = StatusStore(2, 1000)
    store.put("a", rec())
    store.put("b", rec())
    store.get("a", 0)
    store.put("c", rec())
    assert store.get("b", 0) is None
    assert store.get("a", 0) is not None and store.get("c", 0) is not None
    assert repr(store) == "<StatusStore entries=2 max=2>"


def test_entries_expire_after_the_ttl() -> None:
    """An entry older than the TTL is gone on read and on sweep."""
    store = StatusStore(10, 100)
    store.put("old", rec(updated_ms=0))
    store.put("new", rec(updated_ms=150))
    assert store.get("old", 101) is None
    store.put("old2", rec(updated_ms=10))
    assert store.sweep(200) == 1
    assert len(store) == 1


def test_status_records_round_trip() -> None:
    """to_wire and from_wire are inverse; defaults are omitted."""
    r = rec("done", 5, kind="chat", reply={"id": "x"}, webhook_url="http://h/", webhook="pending")
    assert StatusRecord.from_wire(r.to_wire()) == r
    assert b"webhook" not in rec().to_wire()


def chunk(seq: int, attempt: int = 1, gen: str | None = "A") -> ReplyChunk:
    return ReplyChunk(
        id="r", seq=seq, attempt=attempt, generation=gen, delta={"n": f"{gen}{attempt}.{seq}"}
    )


def final(gen: str | None = "A") -> Reply:
    return Reply(id="r", status="ok", body={"answer": gen}, generation=gen)


def names(deltas: list[dict[str, object]] | None) -> list[object]:
    assert deltas is not None
    return [d["n"] for d in deltas]


def test_chunks_come_out_in_seq_order() -> None:
    """A gap waits for the missing chunk; a repeat is dropped."""
    s = ChunkSequencer()
    assert names(s.feed(chunk(1))) == []
    assert names(s.feed(chunk(0))) == ["A1.0", "A1.1"]
    assert names(s.feed(chunk(1))) == []
    assert names(s.feed(chunk(3))) == []
    assert names(s.finish(final())) == ["A1.3"]
    assert s.emitted == 3


def test_a_later_attempt_replaces_one_that_reached_nobody() -> None:
    """Chunks of attempt 2 restart the sequence; attempt 1 is then ignored."""
    s = ChunkSequencer()
    s.feed(chunk(1, attempt=1))  # waiting for seq 0: nothing emitted
    assert names(s.feed(chunk(0, attempt=2))) == ["A2.0"]
    assert names(s.feed(chunk(0, attempt=1))) == []
    assert s.attempt == 2


def test_a_later_attempt_after_emission_is_a_restart() -> None:
    """What reached the client cannot be taken back: StreamRestarted."""
    s = ChunkSequencer()
    s.feed(chunk(0))
    with pytest.raises(StreamRestarted):
        s.feed(chunk(0, attempt=2))


def test_a_second_serve_after_emission_is_a_restart_not_a_splice() -> None:
    """Serve B restarts at attempt 1, seq 0: after A's chunks were sent, that is an error."""
    s = ChunkSequencer()
    assert names(s.feed(chunk(0, gen="A"))) == ["A1.0"]
    assert names(s.feed(chunk(1, gen="A"))) == ["A1.1"]
    with pytest.raises(StreamRestarted, match="generation B"):
        s.feed(chunk(2, gen="B"))  # the old sequencer emitted this: a splice


def test_a_second_serve_replaces_one_that_reached_nobody() -> None:
    """Nothing sent yet: serve B's chunks start over cleanly and serve A's are ignored."""
    s = ChunkSequencer()
    assert names(s.feed(chunk(1, gen="A"))) == []  # seq 0 of A never came
    assert names(s.feed(chunk(0, gen="B"))) == ["B1.0"]
    assert names(s.feed(chunk(0, gen="A"))) == []
    assert names(s.feed(chunk(1, gen="A"))) == []
    assert names(s.feed(chunk(1, gen="B"))) == ["B1.1"]
    assert names(s.finish(final("B"))) == []
    assert s.generation == "B"


def test_a_final_reply_of_another_serve_after_emission_is_a_restart() -> None:
    """Chunks of A reached the client; the final reply of B cannot finish them."""
    s = ChunkSequencer()
    s.feed(chunk(0, gen="A"))
    with pytest.raises(StreamRestarted, match="final reply of generation B"):
        s.finish(final("B"))


def test_a_final_reply_before_any_emission_is_sent_whole() -> None:
    """Nothing emitted: the reply's whole body goes out, whichever serve it is from."""
    s = ChunkSequencer()
    s.feed(chunk(1, gen="A"))  # pending behind a gap, never emitted
    assert s.finish(final("B")) is None
    assert ChunkSequencer().finish(final("A")) is None


def test_chunks_without_a_generation_still_sequence() -> None:
    """Chunks and replies from a worker that predates generations keep working."""
    s = ChunkSequencer()
    assert names(s.feed(chunk(0, gen=None))) == ["None1.0"]
    assert names(s.finish(final(None))) == []


SERVES = st.lists(st.tuples(st.sampled_from("ABC"), st.integers(0, 4)), min_size=1, max_size=30)


@given(SERVES, st.sampled_from("ABC"))
def test_what_reaches_the_client_is_one_serve_in_order(events, last) -> None:
    """Whatever the interleaving of serves, the client gets one serve's chunks, in order."""
    s = ChunkSequencer()
    streamed: list[object] = []
    try:
        for gen, seq in events:
            streamed += names(s.feed(chunk(seq, gen=gen)))
        rest = s.finish(final(last))
    except StreamRestarted:  # the stream ends with an error event: nothing more is mixed in
        rest = []
        finished = False
    else:
        finished = True
    if rest is None:  # the reply's whole body goes out instead
        assert streamed == []
        return
    assert len({str(n)[0] for n in streamed}) <= 1
    seqs = [int(str(n).split(".")[1]) for n in streamed]
    assert seqs == list(range(len(seqs)))  # no gap skipped while streaming
    tail = names(rest)
    if finished:
        assert {str(n)[0] for n in streamed + tail} == {last}
        more = [int(str(n).split(".")[1]) for n in tail]
        assert more == sorted(set(more)) and (not more or more[0] > len(seqs))


def test_settings_name_the_topics_and_group() -> None:
    """The gateway id names its reply topic, status topic and consumer group."""
    gw = GatewaySettings.from_env({"TURNOUT_GATEWAY_ID": "eu1", "TURNOUT_WEBHOOK_ALLOW": "a, b"})
    assert gw.reply_topic(Settings()) == "turnout.replies.gateway-eu1"
    assert gw.status_topic == "turnout.gateway-status.eu1"
    assert gw.consumer_group == "turnout-gateway-eu1"
    assert gw.allow_prefixes == ("a", "b")


def test_the_reply_topic_follows_the_workers_reply_prefix() -> None:
    """With TURNOUT_REPLY_PREFIX set, the gateway's reply topic is under it (else the
    workers would reject every gateway request's reply_to)."""
    gw = GatewaySettings.from_env({"TURNOUT_GATEWAY_ID": "eu1"})
    base = Settings.from_env({"TURNOUT_REPLY_PREFIX": "acme.answers."})
    assert gw.reply_topic(base) == "acme.answers.gateway-eu1"


@pytest.mark.parametrize(
    "env",
    [
        {"TURNOUT_GATEWAY_ID": "a b"},
        {"TURNOUT_GATEWAY_TIMEOUT_S": "0"},
        {"TURNOUT_GATEWAY_TIMEOUT_S": "soon"},
        {"TURNOUT_WEBHOOK_ATTEMPTS": "0"},
    ],
)
def test_bad_settings_are_refused(env: dict[str, str]) -> None:
    """Each invalid setting is a ValueError naming the variable."""
    with pytest.raises(ValueError, match="TURNOUT_"):
        GatewaySettings.from_env(env)


def test_no_keys_means_auth_is_off() -> None:
    """Unset: every caller is anonymous."""
    keys = load_keys("")
    assert not keys.enabled and keys.client_for(None) == ANONYMOUS


def test_inline_keys_map_to_clients() -> None:
    """key=client pairs; an unknown key maps to nothing."""
    keys = load_keys("k1=billing, k2=search")
    assert keys.client_for("k1") == "billing" and keys.client_for("k2") == "search"
    assert keys.client_for("k3") is None and keys.client_for(None) is None
    assert "k1" not in repr(keys)


def test_a_yaml_file_of_keys_expands_env_references(tmp_path: pathlib.Path) -> None:
    """{keys: {${ENV}: client}}: the key is read from the environment."""
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  ${BILLING_KEY}: billing\n  literal-key: ops\n")
    keys = load_keys(str(path), env={"BILLING_KEY": "sk-123"})
    assert keys.client_for("sk-123") == "billing" and keys.client_for("literal-key") == "ops"


@pytest.mark.parametrize(
    ("value", "env", "problem"),
    [
        ("k1", {}, "cannot read"),
        ("k1=bad client", {}, "client id"),
        ("=c", {}, "key is empty"),
        ("${NOPE}=c", {}, "not set"),
        ("k=a,k=b", {}, "two clients"),
    ],
)
def test_bad_keys_are_refused(value: str, env: dict[str, str], problem: str) -> None:
    """Each problem is named; no key value appears in the message."""
    with pytest.raises(ValueError, match=problem) as info:
        load_keys(value, env=env)
    assert "k1=" not in str(info.value)
