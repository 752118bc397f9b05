"""structlog set-up: the production chain from structlog's performance guide.

contextvars, level filter, ISO UTC timestamps, orjson JSON rendered straight to
bytes; a console renderer on a TTY. The dispatcher serves each request in its own
task and calls ``bind_request`` there first, so every line logged while serving it
(``request_failed``, a backend's failure...) carries its ``request_id`` and
``client_id`` without passing them down; an explicit key-value wins over the bound one.
Event names are constant snake_case; data goes in key-values. Prompts and
responses are never passed to a logger unless TURNOUT_LOG_CONTENT is on.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure(level: str = "info", fmt: str = "auto") -> None:
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if console:
        processors.append(structlog.dev.ConsoleRenderer())
        factory: structlog.types.WrappedLogger = structlog.PrintLoggerFactory(sys.stderr)
    else:
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    structlog.configure(
        cache_logger_on_first_use=True,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        processors=processors,
        logger_factory=factory,
    )
    # faust, aiokafka and aiohttp log through the standard library: warnings only.
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def get(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]


def bind_request(*, request_id: str | None, client_id: str | None) -> None:
    """Name the request on every line the current task logs from now on.

    Call it only at the start of a task that serves one request: the binding lives
    in the task's context (asyncio copies it per task), so it never leaks to another.
    """
    structlog.contextvars.bind_contextvars(request_id=request_id, client_id=client_id)
