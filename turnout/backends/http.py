"""The real ``BackendClient``: one shared aiohttp session, protocol adapters for the shapes.

All I/O is here; what to send and how to read the answer is decided by the pure
adapters in ``openai.py`` and ``ollama.py``. aiohttp and OS exceptions are
translated into turnout's ``BackendError`` subclasses at this edge, with
messages that name the backend id and never its URL or key.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from schemas.types import Kind
from turnout import tracing
from turnout.backends import anthropic, ollama, openai
from turnout.backends.failures import translate
from turnout.backends.http_call import HttpAnswer, HttpCall, join_url
from turnout.backends.streaming import stream_call
from turnout.config import Backend, Secret

_NO_TIMEOUT = aiohttp.ClientTimeout(total=None)


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
        )

    async def call(
        self,
        backend: Backend,
        *,
        kind: Kind,
        model: str,
        body: Mapping[str, Any],
        timeout_s: float,
    ) -> dict[str, Any]:
        """Call ``backend``; see ``turnout.backends.BackendClient.call``."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self._exchange(backend, kind, model, body)
        except Exception as exc:
            raise translate(exc, backend.id, timeout_s, streaming=False) from None

    async def close(self) -> None:
        await self._session.close()

    async def _exchange(
        self, backend: Backend, kind: Kind, model: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        if backend.protocol == "openai":
            answer = await self._post(backend, openai.build(kind, model, body))
            return openai.parse(kind, backend.id, answer.status, answer.payload, answer.headers)
        if backend.protocol == "anthropic":
            call = anthropic.build(kind, model, body, backend_id=backend.id)
            answer = await self._post(backend, call)
            return anthropic.parse(kind, backend.id, answer.status, answer.payload, answer.headers)
        if kind == "embeddings" and backend.embed_endpoint == "embeddings":
            calls = ollama.build_legacy_embeddings(model, body)
            answers = [await self._post(backend, call) for call in calls]
            return ollama.parse_legacy_embeddings(backend.id, model, answers)
        answer = await self._post(backend, ollama.build(kind, model, body, backend_id=backend.id))
        return ollama.parse(kind, backend.id, answer.status, answer.payload, answer.headers)

    async def _post(self, backend: Backend, call: HttpCall) -> HttpAnswer:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._keys.get(backend.id)
        if backend.protocol == "anthropic":
            headers.update(anthropic.headers(None if key is None else key.reveal()))
        elif key is not None:
            headers["Authorization"] = f"Bearer {key.reveal()}"
        tracing.inject(headers)
        async with self._session.post(
            join_url(backend.base_url, call.path),
            data=orjson.dumps(call.json),
            headers=headers,
            # ``call`` bounds the whole exchange with asyncio.timeout; a second
            # aiohttp timer per call would only cost a timer handle.
            timeout=_NO_TIMEOUT,
        ) as response:
            payload = await response.read()
            return HttpAnswer(response.status, payload, response.headers)
