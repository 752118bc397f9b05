"""The real ``BackendClient``: one shared aiohttp session, protocol adapters for the shapes.

All I/O is here; what to send and how to read the answer is decided by the pure
adapter of the backend's protocol (``adapters.py``, a registry). aiohttp and OS exceptions are
translated into turnout's ``BackendError`` subclasses at this edge, with
messages that name the backend id and never its URL or key.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson
import yarl

from schemas.types import Kind
from turnout import tracing
from turnout.backends.adapters import adapter_for
from turnout.backends.failures import translate
from turnout.backends.http_call import HttpAnswer, HttpCall, join_url
from turnout.backends.streaming import stream_call
from turnout.config import Backend, Secret
from turnout.errors import BackendTimeout

_NO_TIMEOUT = aiohttp.ClientTimeout(total=None)


@functools.lru_cache(maxsize=4096)
def _url(base_url: str, path: str) -> yarl.URL:
    """A backend's endpoint, parsed once: aiohttp would parse the string on every call
    (about 5 of its 70 µs of CPU per call against a local server)."""
    return yarl.URL(join_url(base_url, path))


def new_session() -> aiohttp.ClientSession:
    """A session with no connection limit (thousands of calls in flight) and orjson encoding.

    Call it inside a running event loop; hand it to ``HttpBackendClient``, which closes it.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
    )


class HttpBackendClient:
    """Calls backends over HTTP with one shared session; ``keys`` maps backend id to API key."""

    def __init__(self, session: aiohttp.ClientSession, keys: Mapping[str, Secret]) -> None:
        self._session = session
        self._keys = keys

    def __repr__(self) -> str:
        return f"<HttpBackendClient keys_for={sorted(self._keys)} closed={self._session.closed}>"

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
        """Stream from ``backend``; see ``turnout.backends.BackendClient.stream``."""
        return stream_call(
            self._session,
            backend,
            self._keys,
            kind=kind,
            model=model,
            body=body,
            timeout_s=timeout_s,
            first_byte_s=first_byte_s,
            stall_s=stall_s,
        )

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
        """Call ``backend``; see ``turnout.backends.BackendClient.call``.

        ``first_byte_s``, when shorter than ``timeout_s``, bounds the wait for the
        response headers (of the first exchange); the body must still come by ``timeout_s``.
        """
        loop = asyncio.get_running_loop()
        first_by = None if first_byte_s is None else loop.time() + first_byte_s
        try:
            async with asyncio.timeout(timeout_s):
                return await self._exchange(backend, kind, model, body, first_by)
        except Exception as exc:
            raise translate(exc, backend.id, timeout_s, streaming=False) from None

    async def close(self) -> None:
        await self._session.close()

    async def _exchange(
        self,
        backend: Backend,
        kind: Kind,
        model: str,
        body: Mapping[str, Any],
        first_by: float | None = None,
    ) -> dict[str, Any]:
        adapter = adapter_for(backend.protocol)
        calls = adapter.plan(backend, kind, model, body)
        # ``first_by`` bounds the first exchange's headers (Ollama's legacy embeddings
        # make one call per input; the later ones have only the total timeout).
        answers = [
            await self._post(backend, call, first_by if i == 0 else None)
            for i, call in enumerate(calls)
        ]
        return adapter.read(backend, kind, model, answers)

    async def _post(
        self, backend: Backend, call: HttpCall, first_by: float | None = None
    ) -> HttpAnswer:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._keys.get(backend.id)
        headers.update(adapter_for(backend.protocol).auth(None if key is None else key.reveal()))
        tracing.inject(headers)
        posting = self._session.post(
            _url(backend.base_url, call.path),
            data=orjson.dumps(call.json),
            headers=headers,
            # ``call`` bounds the whole exchange with asyncio.timeout; a second
            # aiohttp timer per call would only cost a timer handle.
            timeout=_NO_TIMEOUT,
        )
        if first_by is None:
            response = await posting
        else:
            try:
                async with asyncio.timeout_at(first_by):
                    response = await posting
            except TimeoutError:
                raise BackendTimeout(
                    f"backend {backend.id!r} did not start answering in time "
                    "(first_byte_timeout_ms); it may be overloaded or wedged",
                    backend=backend.id,
                    limit="first_byte",
                ) from None
        async with response:
            payload = await response.read()
            return HttpAnswer(response.status, payload, response.headers)
