"""One HTTP exchange with a backend, as plain values, and the checks every protocol shares.

The protocol adapters (``openai.py``, ``ollama.py``) turn a request body into an
``HttpCall`` and an ``HttpAnswer`` back into a response body; ``http.py`` does
the sending. Messages built here name the backend id, the status and what was
expected versus what arrived; never a URL, a key, a prompt or a response text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from turnout.errors import BackendProtocolError, BackendStatusError


@dataclass(frozen=True, slots=True)
class HttpCall:
    """A ``POST`` of ``json`` to ``path`` (relative to the backend's base URL)."""

    path: str
    json: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """What a backend answered: the status, the raw body and the headers."""

    status: int
    payload: bytes
    headers: Mapping[str, str]


_HINTS = {
    400: "the backend rejected the request as is; fix the request before sending it again",
    401: "the backend refused the credentials; check the API key configured for it",
    403: "the backend refused the credentials; check the API key configured for it",
    404: "the backend does not serve this model or path; check models and base_url",
    408: "the backend gave up waiting; it may succeed later",
    413: "the request is too large for the backend",
    422: "the backend rejected the request as is; fix the request before sending it again",
    429: "the backend is rate limiting; retry later or elsewhere",
}
_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def join_url(base_url: str, path: str) -> str:
    """``base_url`` with ``path`` appended to its path, keeping any query string.

    A trailing slash or a ``/v1`` already in the base is tolerated.
    """
    parts = urlsplit(base_url)
    base = parts.path.rstrip("/")
    if base.endswith("/v1") and path.startswith("/v1/"):
        base = base[: -len("/v1")]
    return urlunsplit(parts._replace(path=base + path))


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name``, matched case-insensitively."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def retry_after_ms(headers: Mapping[str, str]) -> int | None:
    """Milliseconds from ``retry-after-ms`` or ``Retry-After`` (delta-seconds); else None."""
    for name, scale in (("retry-after-ms", 1.0), ("retry-after", 1000.0)):
        raw = header(headers, name)
        if raw is None:
            continue
        try:
            value = float(raw.strip())
        except ValueError:
            continue  # an HTTP-date: it would need a clock, so it is ignored
        if value >= 0:
            return round(value * scale)
    return None


def check_status(backend_id: str, answer: HttpAnswer) -> None:
    """Raise ``BackendStatusError`` unless ``answer`` is a 2xx."""
    status = answer.status
    if 200 <= status < 300:
        return
    detail = _error_code(answer.payload)
    what = f"backend {backend_id!r} answered {status}" + (f" ({detail})" if detail else "")
    hint = _HINTS.get(status)
    if hint is None:
        hint = "it may succeed later or on another backend" if status >= 500 else "see its logs"
    raise BackendStatusError(
        f"{what}; {hint}",
        backend=backend_id,
        status=status,
        retry_after_ms=retry_after_ms(answer.headers),
    )


def decode_object(backend_id: str, answer: HttpAnswer) -> dict[str, Any]:
    """The body of a 2xx ``answer`` as a JSON object, or ``BackendProtocolError``."""
    check_status(backend_id, answer)
    try:
        obj = orjson.loads(answer.payload)
    except orjson.JSONDecodeError:
        raise BackendProtocolError(
            f"backend {backend_id!r} answered {answer.status} but the body is not JSON "
            f"(expected a JSON object, got {len(answer.payload)} bytes that do not parse)",
            backend=backend_id,
        ) from None
    if not isinstance(obj, dict):
        raise BackendProtocolError(
            f"backend {backend_id!r} answered {answer.status} but the body is "
            f"{describe(obj)}, not a JSON object",
            backend=backend_id,
        )
    return obj


def shape_error(backend_id: str, status: int, expected: str, got: object) -> BackendProtocolError:
    """The error for a JSON body that lacks ``expected`` (a path such as ``choices[0].text``)."""
    return BackendProtocolError(
        f"backend {backend_id!r} answered {status} but the body has no {expected} "
        f"(got {describe(got)})",
        backend=backend_id,
    )


def describe(value: object) -> str:
    """The shape of a JSON value without its content: its type, and an object's keys."""
    if isinstance(value, dict):
        keys = [k[:32] for k in list(value)[:8]]
        more = ", ..." if len(value) > 8 else ""
        return f"an object with keys [{', '.join(keys)}{more}]" if keys else "an empty object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def _error_code(payload: bytes) -> str | None:
    """The machine-readable type/code from an error body; never its free-text message."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    error = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(error, dict):
        return None
    parts = [str(error[k]) for k in ("type", "code") if isinstance(error.get(k), str | int)]
    parts = [p for p in parts if _CODE.match(p)]
    return "/".join(dict.fromkeys(parts)) or None
