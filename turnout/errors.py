"""Every error turnout reports, in one hierarchy: the one error table.

Each class carries its wire ``code``, a ``retryable`` flag, a ``dead_letter`` flag
(the record goes to the dead-letter topic as well as, where possible, an error
reply) and the ``http_status`` the gateway answers with. Callers decide with
``exc.retryable`` and never by parsing a message; the gateway finds the class of a
reply's code with ``for_code`` and answers ``http_status(code, retryable)``.
Library exceptions (aiohttp, aiokafka, msgspec) are translated into these where
they enter turnout. ``tests/unit/test_errors.py`` keeps this table, the classes
and README's error table equal.

    TurnoutError                    code                  retry    dead-letter  HTTP
    ├── RequestError                (the client's request is wrong; never retryable as is)
    │   ├── InvalidRequest          invalid_request       no       yes          400
    │   ├── RequestTooLarge         request_too_large     no       yes          413
    │   ├── InvalidReplyTopic       invalid_reply_topic   no       yes          400
    │   └── UnknownModel            unknown_model         no       yes          404
    ├── RouteNotAllowed             route_not_allowed     no       no           403
    ├── InternalError               internal_error        no       yes          502
    ├── ReplyUnpublishable          reply_unpublishable   no       yes          502
    ├── DeadlineExceeded            deadline_exceeded     yes      no           504
    ├── RateLimited                 rate_limited          yes      no           429
    ├── NoBackendAvailable          no_backend_available  yes      no           503
    ├── BackendError                (a backend call failed)
    │   ├── BackendUnavailable      backend_unavailable   yes      no           502
    │   ├── BackendTimeout          backend_timeout       yes      no           502
    │   ├── BackendStatusError      backend_status        yes      no           502  5xx, 429
    │   │                                                 no       no           400  other 4xx
    │   └── BackendProtocolError    backend_protocol      yes      no           502
    ├── LocalHealthError            health_state          no       no           500
    ├── InvalidHealthRecord         invalid_health_record no       no           500
    ├── InvalidRegionState          invalid_region_state  no       no           500
    ├── WebhookRefused              webhook_refused       no       no           400
    └── StartupError                (the process cannot start: it says why and exits)
        ├── ConfigError             invalid_config
        ├── SecurityConfigError     invalid_security_config
        ├── KafkaStartupError       kafka_unusable
        ├── DataDirInUse            data_dir_in_use
        └── ReplayError             replay_refused

InternalError and ReplyUnpublishable answer 502 at the gateway: the worker behind
it failed. The first block (down to ``BackendError``) is what a reply's
``error.code`` can carry (``REPLY_ERRORS``). The classes below it live beside the
code that raises them, as subclasses of the bases here; a test imports every module
and fails on an exception class that is neither in this tree nor listed below.

Kept outside the tree on purpose (``OUTSIDE``), because none of them is ever
reported as itself: each is a signal between two functions, turned into one of the
errors above or into an HTTP answer where it is caught.

- ``PublishFailed`` (publisher): the broker refused a record for good;
  the dispatcher turns it into ``ReplyUnpublishable`` or ``InternalError``.
- ``StatusWriteFailed`` (gateway): a status write failed for good;
  the gateway answers ``/readyz`` with 503 and the reason.
- ``EdgeError`` (gateway): an HTTP answer in the making, with the
  status and code of the client's API dialect (``reply_error`` builds one from a
  reply's code with ``http_status`` below).
- ``StreamRestarted`` (gateway): another serve's chunks arrived;
  the gateway ends the stream with a ``stream_restarted`` error event.
- ``WireError`` (schemas): bytes that are not a valid message; the wire contract
  imports nothing of turnout, so admission, the gateway and replay translate it into
  ``InvalidRequest``.
- ``Spill`` (core.spillover): the chooser's word to the dispatcher that another
  region should serve; the dispatcher forwards the request.
- ``NoRegionReachable`` and ``_MarkedDown`` (region_client): the client library's
  own signals; the first reaches the library's caller (``turnout send --regions``
  prints it and exits 1), the second never leaves the library.

A message must tell a person what was expected, what arrived, and how to fix it.
Messages never contain secrets, prompts or responses.
"""

from __future__ import annotations

from typing import Self


class TurnoutError(Exception):
    """Base of every turnout error."""

    code: str = "internal_error"
    retryable: bool = False
    dead_letter: bool = False
    """The record is dead-lettered (besides any error reply): an operator must look."""
    http_status: int = 500
    """What the gateway answers a caller whose request failed with this error."""

    def __init__(self, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_ms = retry_after_ms

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    def with_message(self, message: str) -> Self:
        """The same error (class, flags, backend, status) with a new message."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.args = (message,)
        clone.message = message
        return clone


class RequestError(TurnoutError):
    """The request itself is wrong; sending it again unchanged cannot help."""

    code = "invalid_request"
    dead_letter = True
    http_status = 400
    retryable = False


class InvalidRequest(RequestError):
    code = "invalid_request"


class RequestTooLarge(RequestError):
    code = "request_too_large"
    http_status = 413


class InvalidReplyTopic(RequestError):
    code = "invalid_reply_topic"


class UnknownModel(RequestError):
    code = "unknown_model"
    http_status = 404


class RouteNotAllowed(TurnoutError):
    """The request is well formed, but this client may not use the route it maps to."""

    code = "route_not_allowed"
    http_status = 403
    retryable = False


class InternalError(TurnoutError):
    """turnout itself failed on this record (a bug, not bad input): it is dead-lettered.

    The record is not left unfinished, which would hold its partition's commits
    forever; an operator replays it from the dead-letter topic after a fix.
    """

    code = "internal_error"
    dead_letter = True
    http_status = 502  # as the gateway always answered: the worker behind it failed
    retryable = False


class ReplyUnpublishable(TurnoutError):
    """Neither the reply nor an error reply in its place could be published: dead-lettered."""

    code = "reply_unpublishable"
    dead_letter = True
    http_status = 502
    retryable = False


class DeadlineExceeded(TurnoutError):
    code = "deadline_exceeded"
    http_status = 504
    retryable = True


class RateLimited(TurnoutError):
    code = "rate_limited"
    http_status = 429
    retryable = True


class NoBackendAvailable(TurnoutError):
    code = "no_backend_available"
    http_status = 503
    retryable = True


class BackendError(TurnoutError):
    """A call to a backend failed. ``backend`` names it (never its URL or key)."""

    code = "backend_error"
    http_status = 502
    retryable = True

    def __init__(self, message: str, *, backend: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message, retry_after_ms=retry_after_ms)
        self.backend = backend


class BackendUnavailable(BackendError):
    code = "backend_unavailable"


class BackendTimeout(BackendError):
    code = "backend_timeout"
    limit: str = "total"
    """Which limit ran out: ``total``, ``first_byte`` or ``stall`` (the last two are
    the backend's own limits; only a total the deadline set can be the router's doing)."""

    def __init__(
        self,
        message: str,
        *,
        backend: str,
        retry_after_ms: int | None = None,
        limit: str = "total",
    ) -> None:
        super().__init__(message, backend=backend, retry_after_ms=retry_after_ms)
        self.limit = limit


class BackendProtocolError(BackendError):
    code = "backend_protocol"


class BackendStatusError(BackendError):
    """The backend answered with an HTTP error status."""

    code = "backend_status"

    def __init__(
        self,
        message: str,
        *,
        backend: str,
        status: int,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message, backend=backend, retry_after_ms=retry_after_ms)
        self.status = status
        # 5xx and 429 may succeed elsewhere or later; other 4xx are the request's fault.
        self.retryable = status >= 500 or status == 429
        self.http_status = status_of(type(self), retryable=self.retryable)


class StartupError(TurnoutError):
    """The process cannot start as configured: it says why on one line and exits.

    Never on the wire; ``code`` names the kind for logs and tests.
    """

    code = "startup_error"


def _classes(base: type[TurnoutError] = TurnoutError) -> list[type[TurnoutError]]:
    out: list[type[TurnoutError]] = [base]
    for sub in base.__subclasses__():
        out.extend(_classes(sub))
    return out


def for_code(code: str) -> type[TurnoutError] | None:
    """The class whose errors carry ``code`` (the most derived one), or None.

    >>> for_code("route_not_allowed").__name__
    'RouteNotAllowed'
    >>> for_code("invalid_request").__name__
    'InvalidRequest'
    >>> for_code("no_such_code") is None
    True
    """
    found = [c for c in _classes() if c.__dict__.get("code", None) == code]
    return found[-1] if found else None


def status_of(cls: type[TurnoutError], *, retryable: bool) -> int:
    """The HTTP status for an error of class ``cls`` whose ``retryable`` flag is given."""
    if issubclass(cls, BackendStatusError) and not retryable:
        return 400  # the backend refused the request itself (a 4xx): the caller's fault
    return cls.http_status


def http_status(code: str, retryable: bool, *, default: int = 502) -> int:
    """The gateway's HTTP status for a reply's error ``code`` (``default`` if unknown).

    >>> http_status("route_not_allowed", False)
    403
    >>> http_status("backend_status", True), http_status("backend_status", False)
    (502, 400)
    >>> http_status("from_a_newer_worker", True)
    502
    """
    cls = for_code(code)
    return default if cls is None else status_of(cls, retryable=retryable)


REPLY_ERRORS: tuple[type[TurnoutError], ...] = (
    InvalidRequest,
    RequestTooLarge,
    InvalidReplyTopic,
    UnknownModel,
    RouteNotAllowed,
    InternalError,
    ReplyUnpublishable,
    DeadlineExceeded,
    RateLimited,
    NoBackendAvailable,
    BackendUnavailable,
    BackendTimeout,
    BackendStatusError,
    BackendProtocolError,
)
"""The errors a reply's ``error.code`` can carry (README's error table lists each)."""

OUTSIDE = frozenset(
    {
        "PublishFailed",
        "StatusWriteFailed",
        "EdgeError",
        "StreamRestarted",
        "WireError",
        "Spill",
        "NoRegionReachable",
        "_MarkedDown",
    }
)
"""Exception classes kept outside the tree on purpose (the docstring says why)."""
