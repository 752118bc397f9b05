"""Admission turns a record into work or a precise, addressed rejection."""

import orjson
import pytest

from turnout import config as cfg
from turnout.core.admission import Admitted, Record, Rejected, admit, charge
from turnout.settings import Settings

CONFIG = cfg.loads(
    """
backends:
  - {id: local, protocol: openai, base_url: "http://127.0.0.1:1", models: [echo]}
routes:
  fast: {targets: [{backend: local, model: echo}]}
default_route: fast
""",
    env={},
)
SETTINGS = Settings(max_request_bytes=2000, default_timeout_ms=10_000)
NOW = 1_700_000_000_000


def record(value, key=b"c1", ts=NOW):
    if not isinstance(value, bytes):
        value = orjson.dumps(value)
    return Record(
        topic="turnout.requests", partition=0, offset=5, timestamp_ms=ts, key=key, value=value
    )


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


def run(rec):
    return admit(rec, config=CONFIG, settings=SETTINGS, now_ms=NOW)


def test_a_good_request_is_admitted_with_defaults():
    """A valid request gets its route, default reply topic and default deadline."""
    out = run(record(good()))
    assert isinstance(out, Admitted)
    assert out.route_name == "fast"
    assert out.reply_to == "turnout.replies.c1"
    assert out.deadline_ms == NOW + 10_000


def test_a_backend_model_resolves_to_an_implicit_route():
    """A model some backend serves works without a route alias."""
    out = run(record(good(model="echo")))
    assert isinstance(out, Admitted)
    assert out.route_name == "model:echo"


def test_the_earlier_of_timeout_and_deadline_wins():
    """With both timeout_ms and deadline, the earlier bound applies."""
    out = run(record(good(timeout_ms=5000, deadline=NOW + 3000)))
    assert isinstance(out, Admitted)
    assert out.deadline_ms == NOW + 3000


@pytest.mark.parametrize(
    ("value", "key", "code", "phrase", "reply_to"),
    [
        (b"{not json", b"c1", "invalid_request", "not valid JSON", None),
        (b"[1,2]", b"c1", "invalid_request", "Expected `object`", None),
        (
            {"id": "r1", "client_id": "c1"},
            b"c1",
            "invalid_request",
            "missing required field",
            "turnout.replies.c1",
        ),
        (
            good(priority="high"),
            b"c1",
            "invalid_request",
            "Expected `int`, got `str`",
            "turnout.replies.c1",
        ),
        (
            good(model="gpt-9"),
            b"c1",
            "unknown_model",
            "known models: fast, echo",
            "turnout.replies.c1",
        ),
        (
            good(body={"messages": []}),
            b"c1",
            "invalid_request",
            "non-empty 'messages'",
            "turnout.replies.c1",
        ),
        (
            good(kind="embeddings", body={}),
            b"c1",
            "invalid_request",
            "'input'",
            "turnout.replies.c1",
        ),
        (good(), b"someone-else", "invalid_request", "keyed by client_id", "turnout.replies.c1"),
        (good(reply_to="turnout.requests"), b"c1", "invalid_reply_topic", "must be", None),
        (
            good(body={"messages": [{"content": "x" * 3000}]}),
            b"c1",
            "request_too_large",
            "limit is 2000",
            "turnout.replies.c1",
        ),
    ],
)
def test_bad_input_is_rejected_with_a_clear_reason(value, key, code, phrase, reply_to):
    """Each kind of bad input is rejected with its code, a readable reason and a reply topic."""
    out = run(record(value, key=key))
    assert isinstance(out, Rejected)
    assert out.error.code == code
    assert phrase in out.error.message
    assert out.error.retryable is False
    assert out.dead_letter
    assert out.reply_to == reply_to


def test_a_late_request_gets_a_retryable_error_and_no_dead_letter():
    """A request read after its deadline is answered deadline_exceeded, not dead-lettered."""
    out = run(record(good(timeout_ms=1000), ts=NOW - 5000))
    assert isinstance(out, Rejected)
    assert out.error.code == "deadline_exceeded"
    assert out.error.retryable
    assert not out.dead_letter
    assert "4000 ms" in out.error.message


RULED = cfg.loads(
    """
backends:
  - {id: local, protocol: openai, base_url: "http://l", models: [echo], tier: local}
  - {id: cloud, protocol: openai, base_url: "http://c", models: [echo], tier: cloud}
routes:
  fast: {targets: [{backend: local, model: echo}, {backend: cloud, model: echo}]}
  long: {targets: [{backend: cloud, model: echo}]}
rules:
  - {name: pii, match: {tags: {pii: "true"}}, route: fast, tiers: [local]}
  - {name: big, match: {min_prompt_tokens: 100}, route: long}
clients:
  c1: {requests_per_s: 1, burst: 2, max_wait_ms: 0, allowed_routes: [fast, long]}
  c2: {allowed_routes: [long]}
""",
    env={},
)


def run_ruled(value, key=b"c1"):
    return admit(record(value, key=key), config=RULED, settings=SETTINGS, now_ms=NOW)


def test_a_rule_restricts_tiers():
    """A request tagged pii keeps its route but may only use local backends."""
    out = run_ruled(good(metadata={"pii": "true"}))
    assert isinstance(out, Admitted) and out.tiers == frozenset({"local"})


def test_a_rule_reroutes_long_prompts():
    """A prompt over the rule's token estimate goes to the rule's route."""
    body = {"messages": [{"role": "user", "content": "word " * 200}]}
    out = run_ruled(good(body=body))
    assert isinstance(out, Admitted) and out.route_name == "long" and out.prompt_tokens >= 100


def test_a_client_may_not_use_a_route_it_is_not_allowed():
    """A client limited to some routes gets route_not_allowed, not a dead letter."""
    out = run_ruled(good(client_id="c2"), key=b"c2")
    assert isinstance(out, Rejected) and out.error.code == "route_not_allowed"
    assert not out.dead_letter and "allowed routes are: long" in out.error.message


def test_charge_refuses_past_the_burst_with_an_honest_retry():
    """The third request in the same millisecond at 1 req/s with burst 2 waits about 1 s."""
    state = None
    verdicts = []
    for _ in range(3):
        job = run_ruled(good())
        out = charge(job, config=RULED, state=state, now_ms=NOW)
        verdicts.append(out)
        if not isinstance(out, Rejected):
            state = out.state
    assert [type(v).__name__ for v in verdicts] == ["Charged", "Charged", "Rejected"]
    err = verdicts[2].error
    assert err.code == "rate_limited" and err.retryable and 900 <= err.retry_after_ms <= 1000


PRIORITIES = cfg.loads(
    """
backends:
  - {id: local, protocol: openai, base_url: "http://l", models: [echo]}
routes:
  fast: {targets: [{backend: local, model: echo}]}
  urgent: {targets: [{backend: local, model: echo}]}
rules:
  - {name: urgent, match: {min_priority: 8}, route: urgent}
clients:
  batch: {default_priority: 1}
  pager: {default_priority: 9}
default_client: {default_priority: 3}
default_route: fast
""",
    env={},
)


def run_prioritised(value, key):
    return admit(record(value, key=key), config=PRIORITIES, settings=SETTINGS, now_ms=NOW)


@pytest.mark.parametrize(
    ("client", "sent", "priority"),
    [
        ("batch", {}, 1),  # unset: the client's default_priority
        ("batch", {"priority": 7}, 7),  # the request's own wins
        ("batch", {"priority": 5}, 5),  # even when it is the old wire default
        ("someone", {}, 3),  # an unlisted client: default_client's
    ],
)
def test_a_request_without_a_priority_gets_its_clients_default_priority(client, sent, priority):
    """``default_priority`` applies exactly when the request sets no priority."""
    out = run_prioritised(good(client_id=client, **sent), key=client.encode())
    assert isinstance(out, Admitted) and out.priority == priority


def test_with_no_client_config_an_unset_priority_is_5():
    """No clients configured: a request without a priority is priority 5."""
    out = run(record(good()))
    assert isinstance(out, Admitted) and out.priority == 5


def test_rules_match_the_resolved_priority():
    """A rule on priority sees the client's default when the request set none."""
    out = run_prioritised(good(client_id="pager"), key=b"pager")
    assert isinstance(out, Admitted) and out.route_name == "urgent"
    out = run_prioritised(good(client_id="batch"), key=b"batch")
    assert isinstance(out, Admitted) and out.route_name == "fast"
