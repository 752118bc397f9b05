"""Dead letters copy their original while it fits in one Kafka message, else reference it."""

import hashlib

import pytest

from schemas.types import DeadLetter
from turnout.core.admission import Record
from turnout.core.deadletter import PREFIX_BYTES, dead_letter_for

LIMIT = 900_000


def rec(value, key=b"client-1"):
    return Record("turnout.requests", 2, 41, 1_700_000_000_000, key, value)


@pytest.mark.parametrize("size", [800 * 1024, 999 * 1024, 1_500_000, 5_000_000])
def test_large_originals_are_referenced_and_the_letter_stays_small(size):
    """800 KB, 999 KB, 1.5 MB, 5 MB: the letter is a few KB and names where the original is."""
    value = bytes(i % 251 for i in range(size))
    dl = dead_letter_for(rec(value), code="invalid_request", reason="r", now_ms=1, max_bytes=LIMIT)
    wire = dl.to_wire()
    assert len(wire) < 4 * PREFIX_BYTES
    back = DeadLetter.from_wire(wire)
    assert back.value is None and back.key == b"client-1"
    assert back.original.value_bytes == size
    assert back.original.value_sha256 == hashlib.sha256(value).hexdigest()
    assert back.original.value_prefix == value[:PREFIX_BYTES]
    assert (back.source.topic, back.source.partition, back.source.offset) == (
        "turnout.requests",
        2,
        41,
    )


def test_the_largest_copied_letter_fits_the_limit():
    """Just below the threshold the original is copied and the encoded letter fits."""
    value = b"\xff" * 600_000
    dl = dead_letter_for(rec(value), code="c", reason="r" * 5000, now_ms=1, max_bytes=LIMIT)
    assert dl.value == value and len(dl.to_wire()) <= LIMIT


def test_a_huge_key_is_referenced_too():
    """A key too large to copy is replaced by its size and hash."""
    key = b"k" * 5000
    dl = dead_letter_for(
        rec(b"x" * 2_000_000, key=key), code="c", reason="r", now_ms=1, max_bytes=LIMIT
    )
    assert dl.key is None and dl.original.key_bytes == 5000
    assert dl.original.key_sha256 == hashlib.sha256(key).hexdigest()


def test_long_reasons_are_bounded():
    """A parser message quoting a deep path does not bloat the letter."""
    dl = dead_letter_for(rec(b"x"), code="c", reason="$.a" * 10_000, now_ms=1, max_bytes=LIMIT)
    assert len(dl.reason) <= 2003


def test_dlq_show_uses_the_fetched_original_only_if_its_hash_matches():
    """A referenced original is shown when fetched and verified, else its prefix and why."""
    from turnout.ops.dlq import Entry, as_json

    value = b'{"id": "r", "pad": "' + b"x" * 2_000_000 + b'"}'
    dl = dead_letter_for(
        rec(value), code="request_too_large", reason="r", now_ms=1, max_bytes=LIMIT
    )
    where = ("turnout.requests", 2, 41)
    shown = as_json(Entry(0, 5, dl), {where: value})
    assert shown["original_fetched"] and shown["original_json"]["id"] == "r"
    assert shown["original_bytes"] == len(value)
    gone = as_json(Entry(0, 5, dl), {where: None})
    assert not gone["original_fetched"] and "retention" in gone["original_missing"]
    assert gone["original_prefix_only"] and gone["original_base64"].endswith("...")
    other = as_json(Entry(0, 5, dl), {where: b"something else"})
    assert "SHA-256 differs" in other["original_missing"]
