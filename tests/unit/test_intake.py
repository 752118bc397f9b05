"""The intake forwarder's vetting and the ACL plan: who may speak for which client."""

import orjson
import pytest

from turnout.kafka.acls import client_acls, plan, service_acls
from turnout.settings import Settings
from turnout.worker.intake import Forward, Reject, client_of, vet

S = Settings()


def req(**fields) -> bytes:
    return orjson.dumps({"id": "r1", "kind": "chat", "model": "m", "body": {}, **fields})


@pytest.mark.parametrize(
    ("topic", "value", "verdict"),
    [
        ("turnout.intake.a", req(client_id="a"), Forward("a")),
        ("turnout.intake.a", req(client_id="a", reply_to="turnout.replies.a"), Forward("a")),
        ("turnout.intake.a", req(client_id="b"), "client_id_mismatch"),
        ("turnout.intake.a", req(), "client_id_mismatch"),  # no client_id claims nobody
        ("turnout.intake.a", req(client_id="a", reply_to="turnout.replies.b"),
         "reply_to_not_allowed"),
        ("turnout.intake.a", req(client_id="a", reply_to="turnout.replies.a.x"),
         "reply_to_not_allowed"),  # no new topics either
        ("turnout.intake.a", b"not json", "invalid_request"),
        ("turnout.requests", req(client_id="a"), "not_an_intake_topic"),
    ],
)  # fmt: skip
def test_vet(topic, value, verdict):
    """Only a request naming the topic's own client, answered on its own topic, goes on."""
    got = vet(topic, value, S)
    if isinstance(verdict, Forward):
        assert got == verdict
    else:
        assert isinstance(got, Reject) and got.code == verdict


def test_rejection_names_the_client_of_the_topic_not_the_claimed_one():
    """A spoofed request is charged to the topic's owner, with a reason a person can read."""
    got = vet("turnout.intake.alice", req(client_id="bob"), S)
    assert isinstance(got, Reject)
    assert (got.client_id, got.request_id) == ("alice", "r1")
    assert "must have client_id 'alice', not 'bob'" in got.reason


def test_client_of():
    """The client is the rest of the topic name after the prefix; empty is nobody."""
    assert client_of("turnout.intake.a.b") == "a.b"
    assert client_of("turnout.intake.") is None


def test_a_client_may_write_only_its_intake_and_read_only_its_replies():
    """No client ACL mentions another client's topics, the request topic or health."""
    for acl in client_acls("alice", S):
        assert acl.principal == "User:alice"
        assert acl.pattern == "literal" or acl.resource == "group"
        assert "bob" not in acl.name
        if acl.operation == "Write":
            assert acl.name == "turnout.intake.alice"
        if acl.resource == "topic":
            assert acl.name in ("turnout.intake.alice", "turnout.replies.alice")


def test_the_service_covers_its_app_topics_and_groups():
    """turnout's principal has prefixed access to turnout.* and its app id's topics and groups."""
    acls = service_acls("turnout", Settings(app_id="router"))
    topics = {a.name for a in acls if a.resource == "topic"}
    groups = {a.name for a in acls if a.resource == "group"}
    assert topics == {"turnout.", "router"}
    assert groups == {"turnout", "router"}
    assert {a.operation for a in acls if a.resource == "topic"} == {
        "Read", "Write", "Describe", "Create", "DescribeConfigs"
    }  # fmt: skip


def test_plan_is_service_then_clients():
    """plan() lists the service's ACLs and each client's."""
    acls = plan("turnout", ["a", "b"], S)
    assert {a.principal for a in acls} == {"User:turnout", "User:a", "User:b"}
