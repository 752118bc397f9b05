"""The dead letter of a record: its original copied, or referenced when too large. Pure.

A dead letter carries the original key and value in base64, which makes it about
4/3 the size of the record. A request record may be up to the broker's limit (and
a gzip-compressed one far larger once decompressed: the broker checks the
compressed batch), so copying cannot always work: an 800 KB record of invalid
bytes made a 1.07 MB dead letter that the producer refused (its limit is
1,000,000 bytes), and the record's partition never committed again. A dead letter
that would exceed ``TURNOUT_DEAD_LETTER_MAX_BYTES`` references its original
instead: ``source`` says where it is, ``original`` gives its size, SHA-256 and
first ``PREFIX_BYTES`` bytes, and ``turnout dlq show`` fetches it from the source
topic while that topic's retention keeps it.

    >>> from turnout.core.admission import Record
    >>> rec = Record("t", 0, 7, 1, b"k", b"x" * 3000)
    >>> small = dead_letter_for(rec, code="c", reason="r", now_ms=2, max_bytes=10_000)
    >>> small.value == rec.value, small.original
    (True, None)
    >>> big = dead_letter_for(rec, code="c", reason="r", now_ms=2, max_bytes=4096)
    >>> big.value, big.original.value_bytes, len(big.original.value_prefix), big.key
    (None, 3000, 1024, b'k')
"""

from __future__ import annotations

import hashlib

from schemas.types import DeadLetter, Original, Source
from turnout.core.admission import Record

PREFIX_BYTES = 1024
"""How much of a referenced original its dead letter still carries."""
MAX_KEY_COPY = 1024
"""A referenced original's key is copied up to this size, else referenced too."""
MAX_REASON_CHARS = 2000
"""Reasons quote parser messages, which can be long (a JSON path 1,000 levels deep)."""
_OVERHEAD = 2048
"""Field names, source, ids, headers and the record batch, generously."""


def dead_letter_for(
    record: Record,
    *,
    code: str,
    reason: str,
    now_ms: int,
    max_bytes: int,
    request_id: str | None = None,
    client_id: str | None = None,
    by_reference: bool = False,
) -> DeadLetter:
    """The dead letter of ``record``: a copy if it fits in ``max_bytes``, else a reference.

    ``by_reference`` forces the reference form (the broker refused the copy).
    """
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS] + "..."
    source = Source(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp_ms,
    )
    common = {
        "code": code,
        "reason": reason,
        "source": source,
        "request_id": request_id,
        "client_id": client_id,
        "dead_lettered_at_ms": now_ms,
    }
    key_len = 0 if record.key is None else len(record.key)
    size = _b64(len(record.value)) + _b64(key_len) + len(reason.encode()) * 2 + _OVERHEAD
    if not by_reference and size <= max_bytes:
        return DeadLetter(key=record.key, value=record.value, **common)  # type: ignore[arg-type]
    key_copied = record.key is not None and key_len <= MAX_KEY_COPY
    original = Original(
        value_bytes=len(record.value),
        value_sha256=hashlib.sha256(record.value).hexdigest(),
        value_prefix=record.value[:PREFIX_BYTES],
        key_bytes=key_len,
        key_sha256=(
            None if record.key is None or key_copied else hashlib.sha256(record.key).hexdigest()
        ),
    )
    return DeadLetter(
        key=record.key if key_copied else None,
        value=None,
        original=original,
        **common,  # type: ignore[arg-type]
    )


def _b64(n: int) -> int:
    return 4 * ((n + 2) // 3)
