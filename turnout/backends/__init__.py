"""Calling backends: protocol adapters (pure), the aiohttp client, and a scripted fake.

The router talks to every backend through one small interface, ``BackendClient``:
hand it an OpenAI-style request body and get back an OpenAI-style response body,
or a ``turnout.errors.BackendError`` subclass. Protocol translation lives in
``openai.py``, ``ollama.py`` and ``anthropic.py`` as pure functions (no I/O), so it
is tested with plain tables of cases; ``adapters.py`` holds one ``Adapter`` per
protocol in a registry, which the I/O in ``http.py`` and ``streaming.py`` looks up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from schemas.types import Kind
from turnout.config import Backend


class BackendClient(Protocol):
    async def call(
        self,
        backend: Backend,
        *,
        kind: Kind,
        model: str,
        body: Mapping[str, Any],
        timeout_s: float,
        first_byte_s: float | None = None,
    ) -> dict[str, Any]:
        """Call ``backend`` and return the response body in OpenAI's shape for ``kind``.

        ``model`` replaces ``body["model"]``. Raises ``BackendUnavailable``,
        ``BackendTimeout`` (after ``timeout_s``, or no response by ``first_byte_s``),
        ``BackendStatusError`` or
        ``BackendProtocolError``; never another exception type.
        """
        ...

    def stream(
        self,
        backend: Backend,
        *,
        kind: Kind,
        model: str,
        body: Mapping[str, Any],
        timeout_s: float,
        first_byte_s: float | None = None,
        stall_s: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Call ``backend`` with streaming; yield OpenAI chunk objects in order.

        Raises the same errors as ``call``, before or between chunks; ``BackendTimeout``
        when the first chunk is later than ``first_byte_s`` or two are ``stall_s`` apart.
        """
        ...

    async def close(self) -> None: ...
