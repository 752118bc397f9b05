"""The wire contract: Python types and the JSON Schema files agree and round-trip."""

import pathlib

import orjson
import pytest

from schemas.generate import render
from schemas.types import WIRE_TYPES, DeadLetter, ErrorInfo, Reply, Request, Source, WireError
from turnout.errors import RateLimited

SCHEMA_DIR = pathlib.Path(__file__).parents[2] / "schemas"


@pytest.mark.parametrize("name", sorted(WIRE_TYPES))
def test_schema_files_match_the_types(name):
    """The JSON Schema file is what the types generate (python -m schemas.generate)."""
    assert (SCHEMA_DIR / f"{name}.schema.json").read_bytes() == render(name)


def test_request_round_trips():
    """A request decodes to the value it was encoded from."""
    req = Request(
        id="a",
        client_id="c",
        kind="embeddings",
        model="m",
        body={"input": "x"},
        metadata={"team": "x"},
    )
    assert Request.from_wire(req.to_wire()) == req


def test_request_values_are_frozen():
    """Wire values cannot be changed after decoding."""
    req = Request(id="a", client_id="c", kind="chat", model="m", body={})
    with pytest.raises(AttributeError):
        req.id = "b"  # type: ignore[misc]


def test_invalid_request_names_the_field():
    """A schema violation says which field and what was expected."""
    with pytest.raises(WireError, match=r"Expected `str`, got `int` - at `\$.client_id`"):
        Request.from_wire(b'{"id":"a","client_id":5,"kind":"chat","model":"m","body":{}}')


def test_error_reply_carries_the_error_flags():
    """An error reply carries code, message, retryable and retry_after_ms."""
    info = ErrorInfo.from_error(RateLimited("slow down", retry_after_ms=250))
    reply = Reply(id="a", status="error", error=info)
    wire = orjson.loads(reply.to_wire())
    assert wire["error"] == {
        "code": "rate_limited",
        "message": "slow down",
        "retryable": True,
        "retry_after_ms": 250,
    }
    assert Reply.from_wire(reply.to_wire()) == reply


def test_dead_letter_keeps_the_original_bytes():
    """A dead letter carries the original value byte for byte (base64 in JSON)."""
    dl = DeadLetter(
        code="invalid_request",
        reason="r",
        key=None,
        value=b"\xff\x00{",
        source=Source(topic="t", partition=1, offset=2),
        dead_lettered_at_ms=3,
    )
    assert DeadLetter.from_wire(dl.to_wire()).value == b"\xff\x00{"
