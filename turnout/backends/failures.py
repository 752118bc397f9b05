"""Where aiohttp and socket failures enter turnout: one translation, used by every client.

Messages name the backend id and the OS reason, never the URL, the key or a body.
"""

from __future__ import annotations

import os

import aiohttp

from turnout.errors import BackendError, BackendProtocolError, BackendTimeout, BackendUnavailable


def translate(
    exc: BaseException, backend_id: str, timeout_s: float, *, streaming: bool
) -> BackendError:
    """An aiohttp or socket failure as turnout's error, without the URL, key or body.

    Where library exceptions enter turnout: callers raise ``translate(exc, ...)``.
    """
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):  # before OSError
        what = "finish streaming" if streaming else "answer"
        return BackendTimeout(
            f"backend {backend_id!r} did not {what} within {timeout_s:g} s; "
            "it may be overloaded, or the timeout too short for this request",
            backend=backend_id,
        )
    if isinstance(exc, (aiohttp.ClientConnectionError, OSError)):
        what = "could not be reached or dropped the stream" if streaming else "could not be reached"
        return BackendUnavailable(
            f"backend {backend_id!r} {what} ({cause(exc)}); "
            "check that it is running and that its base_url is right",
            backend=backend_id,
        )
    what = "stream could not be read" if streaming else "call failed unexpectedly"
    return BackendProtocolError(
        f"backend {backend_id!r} {what} ({type(exc).__name__}); the answer could not be read",
        backend=backend_id,
    )


def cause(exc: BaseException) -> str:
    """The exception's type and OS reason (e.g. "Connection refused"), never its text or URL."""
    errno = getattr(getattr(exc, "os_error", exc), "errno", None)
    # os.strerror, not the exception's text: that may carry the host and port.
    return f"{type(exc).__name__}: {os.strerror(errno)}" if errno else type(exc).__name__
