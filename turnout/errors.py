"""Every error turnout reports, in one hierarchy.

Each class carries a wire ``code`` and a ``retryable`` flag, so callers decide
what to do with ``exc.retryable`` and never by parsing a message. Library
exceptions (aiohttp, aiokafka, msgspec) are translated into these where they
enter turnout.

    TurnoutError                      code            retryable
    ├── RequestError                  (the client's request is wrong; never retryable as is)
    │   ├── InvalidRequest            invalid_request       no
    │   ├── RequestTooLarge           request_too_large     no
    │   ├── InvalidReplyTopic         invalid_reply_topic   no
    │   └── UnknownModel              unknown_model         no
    ├── RouteNotAllowed               route_not_allowed     no   (the client's config forbids it)
    ├── InternalError                 internal_error        no   (turnout failed; dead-lettered)
    ├── ReplyUnpublishable            reply_unpublishable   no   (the broker refuses the reply)
    ├── DeadlineExceeded              deadline_exceeded     yes
    ├── RateLimited                   rate_limited          yes (after retry_after_ms)
    ├── NoBackendAvailable            no_backend_available  yes (after retry_after_ms)
    └── BackendError                  (a backend call failed)
        ├── BackendUnavailable        backend_unavailable   yes  connection refused/reset
        ├── BackendTimeout            backend_timeout       yes
        ├── BackendStatusError        backend_status        5xx/429 yes, other 4xx no
        └── BackendProtocolError      backend_protocol      yes  response not understood

A message must tell a person what was expected, what arrived, and how to fix it.
Messages never contain secrets, prompts or responses.
"""

from __future__ import annotations

from typing import Self


class TurnoutError(Exception):
    """Base of every turnout error."""

    code: str = "internal_error"
    retryable: bool = False

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
    retryable = False


class InvalidRequest(RequestError):
    code = "invalid_request"


class RequestTooLarge(RequestError):
    code = "request_too_large"


class InvalidReplyTopic(RequestError):
    code = "invalid_reply_topic"


class UnknownModel(RequestError):
    code = "unknown_model"


class RouteNotAllowed(TurnoutError):
    """The request is well formed, but this client may not use the route it maps to."""

    code = "route_not_allowed"
    retryable = False


class InternalError(TurnoutError):
    """turnout itself failed on this record (a bug, not bad input): it is dead-lettered.

    The record is not left unfinished, which would hold its partition's commits
    forever; an operator replays it from the dead-letter topic after a fix.
    """

    code = "internal_error"
    retryable = False


class ReplyUnpublishable(TurnoutError):
    """Neither the reply nor an error reply in its place could be published: dead-lettered."""

    code = "reply_unpublishable"
    retryable = False


class DeadlineExceeded(TurnoutError):
    code = "deadline_exceeded"
    retryable = True


class RateLimited(TurnoutError):
    code = "rate_limited"
    retryable = True


class NoBackendAvailable(TurnoutError):
    code = "no_backend_available"
    retryable = True


class BackendError(TurnoutError):
    """A call to a backend failed. ``backend`` names it (never its URL or key)."""

    code = "backend_error"
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
